"""Mode decision, fallback, exit 3, and read-only commands never touching the daemon."""

from __future__ import annotations

import json
import socket

import pytest

from provisioning.cli.context import AppContext
from provisioning.cli.modes import decide_mode
from tests.conftest import REPO, run_cli
from tests.test_client import cold, daemon_processes, submit_id  # noqa: F401 - fixture

# -- decide_mode in-process (fast), config from real files ----------------------------


def _app(tmp_path, toml: str = "", mode: str | None = None) -> AppContext:
    cfg = tmp_path / "extra.toml"
    cfg.write_text(toml)
    return AppContext(config_file=str(cfg), mode=mode)


def test_defaults_follow_the_force_lists_then_auto(tmp_path):
    app = _app(tmp_path)
    assert decide_mode(app, "server.create", 1)[0] == "orchestrated"
    assert decide_mode(app, "batch.submit", 1)[0] == "orchestrated"
    assert decide_mode(app, "server.list", 1) == ("direct",
                                                  "matches execution.force_direct '*.list'")
    # auto: by task count
    assert decide_mode(app, "taskserv.create", 1)[0] == "direct"
    mode, why = decide_mode(app, "taskserv.create", 3)
    assert mode == "orchestrated" and "3 tasks" in why


def test_command_line_wins(tmp_path):
    assert decide_mode(_app(tmp_path, mode="direct"), "server.create", 5) == (
        "direct", "--direct on the command line")
    assert decide_mode(_app(tmp_path, mode="orchestrated"), "server.list", 1)[0] == "orchestrated"
    # --mode auto ignores the force lists and decides by task count
    assert decide_mode(_app(tmp_path, mode="auto"), "server.create", 1)[0] == "direct"


def test_force_direct_wins_when_both_lists_match(tmp_path):
    app = _app(tmp_path, '[execution]\nforce_orchestrated = ["server.*"]\n'
                         'force_direct = ["*.list"]\n')
    assert decide_mode(app, "server.list", 1)[0] == "direct"
    assert decide_mode(app, "server.delete", 1)[0] == "orchestrated"


def test_default_mode_applies_when_no_pattern_matches(tmp_path):
    app = _app(tmp_path, '[execution]\ndefault_mode = "orchestrated"\n'
                         'force_orchestrated = []\nforce_direct = []\n')
    mode, why = decide_mode(app, "taskserv.create", 1)
    assert mode == "orchestrated" and "default_mode" in why


def test_orchestrator_disabled_means_direct(tmp_path):
    app = _app(tmp_path, "[orchestrator]\nenabled = false\n")
    assert decide_mode(app, "server.create", 9)[0] == "direct"
    from provisioning.errors import UsageError

    with pytest.raises(UsageError):
        decide_mode(_app(tmp_path, "[orchestrator]\nenabled = false\n", mode="orchestrated"),
                    "server.create", 1)


# -- through the real CLI -------------------------------------------------------------


def test_env_shows_mode_and_why_per_command(cold):  # noqa: F811
    result = run_cli("env", "--json")
    assert result.returncode == 0, result.stderr
    commands = json.loads(result.stdout)["commands"]
    assert commands["server.list"] == {"mode": "direct",
                                       "why": "matches execution.force_direct '*.list'"}
    assert commands["workflow.submit"]["mode"] == "orchestrated"
    assert commands["taskserv.create"]["mode"] == "auto"
    forced = json.loads(run_cli("--direct", "env", "--json").stdout)["commands"]
    assert {row["mode"] for row in forced.values()} == {"direct"}
    text = run_cli("env").stdout
    assert "server.create" in text and "force_orchestrated" in text
    # env is read-only: it never starts (or needs) the daemon
    assert daemon_processes(cold.data_dir) == []
    assert not (cold.data_dir / "orchestrator.pid").exists()


def test_verbose_prints_the_decision(cold):  # noqa: F811
    wf = cold.workflow_file()
    result = run_cli("-v", "--direct", "workflow", "submit", str(wf))
    assert "mode: direct for workflow.submit (--direct on the command line)" in result.stderr


def test_no_daemon_no_fallback_is_exit_3_with_hint(cold, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "false")
    result = run_cli("workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 3
    assert "provisioning orchestrator start" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert daemon_processes(cold.data_dir) == []


def test_no_daemon_with_fallback_runs_in_process_with_warning(cold, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "true")
    result = run_cli("workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "directly in this process" in warnings[0]
    assert "succeeded" in result.stdout.splitlines()[-1]
    assert daemon_processes(cold.data_dir) == []


def test_fallback_failure_is_exit_1(cold, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    wf = cold.workflow_file('[[tasks]]\nid = "boom"\nop = "shell.run"\n'
                            'params = { argv = ["false"] }\n')
    result = run_cli("workflow", "submit", str(wf))
    assert result.returncode == 1, result.stderr
    assert "failed" in result.stdout.splitlines()[-1]


def test_direct_submit_json_has_stable_keys(cold):  # noqa: F811
    result = run_cli("--direct", "--json", "workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"workflow_id", "status", "mode", "counts", "duration_s"}
    assert doc["status"] == "succeeded" and doc["mode"] == "direct"
    assert doc["counts"]["succeeded"] == 2


def test_invalid_workflow_is_exit_2_before_anything_starts(cold):  # noqa: F811
    wf = cold.workflow_file('[[tasks]]\nid = "a"\nop = "noop"\ndepends_on = ["ghost"]\n')
    result = run_cli("--orchestrated", "workflow", "submit", str(wf))
    assert result.returncode == 2
    assert "ghost" in result.stderr
    assert daemon_processes(cold.data_dir) == []


@pytest.fixture
def tripwire(cold):  # noqa: F811
    """A listening socket on the endpoint's port that accepts nothing: any
    connection attempt (a health probe, a request) lands in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", cold.port))
    sock.listen(16)
    sock.setblocking(False)

    def contacted() -> bool:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    yield contacted
    sock.close()


@pytest.mark.parametrize("argv", [("env",), ("env", "--json"), ("server", "list"),
                                  ("server", "list", "--json")])
def test_read_only_commands_never_contact_the_daemon(cold, tripwire, argv):  # noqa: F811
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr
    assert not tripwire(), f"{argv} connected to the orchestrator endpoint"
    assert daemon_processes(cold.data_dir) == []
    assert not (cold.data_dir / "orchestrator.pid").exists()


def test_tripwire_catches_a_contact(cold, tripwire, monkeypatch):  # noqa: F811
    # the detector itself works: an orchestrated command probes the endpoint
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "false")
    result = run_cli("--orchestrated", "workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 3
    assert tripwire()


def test_orchestrated_submit_auto_starts_and_monitor_exits_0(cold):  # noqa: F811
    result = run_cli("--orchestrated", "workflow", "submit", str(cold.workflow_file()))
    wid = submit_id(result)
    assert len(daemon_processes(cold.data_dir)) == 1
    monitor = run_cli("workflow", "monitor", wid)
    assert monitor.returncode == 0, monitor.stderr
    assert monitor.stdout.splitlines()[-1].startswith(f"Workflow {wid} succeeded")


def test_orchestrated_json_submit(cold):  # noqa: F811
    result = run_cli("--json", "workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"workflow_id", "status", "mode"}
    assert doc["status"] == "queued" and doc["mode"] == "orchestrated"


# -- acceptance with the business commands ------------------------------------------------

DEMO_INFRA = REPO / "examples" / "infra" / "demo"


@pytest.fixture
def demo_infra(cold):  # noqa: F811
    yield str(DEMO_INFRA)
    listed = run_cli("--json", "server", "list")
    for server in json.loads(listed.stdout or "[]"):
        run_cli("--direct", "server", "delete", server["hostname"], "--infra", str(DEMO_INFRA))


def test_server_create_orchestrated_cold_start_then_monitor(cold, demo_infra):  # noqa: F811
    result = run_cli("server", "create", "--infra", demo_infra, "--orchestrated")
    wid = submit_id(result)
    assert len(daemon_processes(cold.data_dir)) == 1
    monitor = run_cli("workflow", "monitor", wid)
    assert monitor.returncode == 0, monitor.stderr
    assert monitor.stdout.splitlines()[-1].startswith(f"Workflow {wid} succeeded")
    servers = json.loads(run_cli("--json", "server", "list").stdout)
    assert len(servers) >= 1 and all(s["status"] == "running" for s in servers)


def test_server_create_falls_back_in_process(cold, demo_infra, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    result = run_cli("server", "create", "--infra", demo_infra, "--orchestrated")
    assert result.returncode == 0, result.stderr
    assert "directly in this process" in result.stderr
    assert "succeeded" in result.stdout.splitlines()[-1]
    assert daemon_processes(cold.data_dir) == []

    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "false")
    refused = run_cli("server", "create", "--infra", demo_infra, "--orchestrated")
    assert refused.returncode == 3
    assert "provisioning orchestrator start" in refused.stderr


def test_a_daemon_of_another_data_dir_is_not_used(cold, tmp_path, monkeypatch):  # noqa: F811
    from tests.daemon_fixture import start_daemon

    (tmp_path / "other").mkdir()
    other = start_daemon(tmp_path / "other", server={"port": cold.port},
                         storage={"data_dir": str(tmp_path / "other-data")})
    try:
        # our data dir has no token for it: fall back, with the reason
        result = run_cli("workflow", "submit", str(cold.workflow_file()))
        assert result.returncode == 0, result.stderr
        assert "token" in result.stderr and "directly in this process" in result.stderr
        monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "false")
        refused = run_cli("workflow", "submit", str(cold.workflow_file()))
        assert refused.returncode == 3 and "token" in refused.stderr
        status, body = other.request("GET", "/workflows")
        assert status == 200 and not (body.get("workflows") if isinstance(body, dict) else body)
    finally:
        other.stop()
