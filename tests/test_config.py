"""Layered configuration: every layer, precedence, and precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.config import load_config, validate_file
from provisioning.errors import ConfigError
from tests.conftest import run_cli


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_match_the_seeds(isolated):
    cfg = load_config()
    assert cfg.orchestrator.endpoint == "http://localhost:9090"
    assert cfg.orchestrator.auto_start is True
    assert cfg.orchestrator.fallback_to_direct is True
    assert cfg.execution.default_mode == "auto"
    assert "server.create" in cfg.execution.force_orchestrated
    assert "*.list" in cfg.execution.force_direct
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9090)
    assert cfg.executor.max_concurrent_tasks == 10
    assert cfg.executor.task_timeout_seconds == 3600
    assert cfg.sources["executor.task_timeout_seconds"] == "default"


def test_each_layer_overrides_the_previous(isolated, tmp_path, monkeypatch):
    share = write(Path(isolated["PROVISIONING_SHARE_DIR"]) / "config" / "config.defaults.toml",
                  "[executor]\nmax_concurrent_tasks = 2\ntask_timeout_seconds = 100\n"
                  "checkpoint_interval_seconds = 7\nkill_grace_seconds = 9\n"
                  "shutdown_grace_seconds = 11\n")
    etc = write(Path(isolated["PROVISIONING_ETC_DIR"]) / "config.toml",
                "[executor]\nmax_concurrent_tasks = 3\ntask_timeout_seconds = 200\n"
                "checkpoint_interval_seconds = 8\nkill_grace_seconds = 10\n")
    user = write(Path(isolated["PROVISIONING_USER_CONFIG_DIR"]) / "config.toml",
                 "[executor]\nmax_concurrent_tasks = 4\ntask_timeout_seconds = 300\n"
                 "checkpoint_interval_seconds = 9\n")
    ws = write(Path.cwd() / "provisioning.toml",
               "[executor]\nmax_concurrent_tasks = 5\ntask_timeout_seconds = 400\n")
    explicit = write(tmp_path / "explicit.toml", "[executor]\nmax_concurrent_tasks = 6\n")
    monkeypatch.setenv("PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS", "7")
    # without env and --config: workspace wins for the keys it sets
    cfg = load_config(environ={k: v for k, v in isolated.items()})
    assert cfg.executor.max_concurrent_tasks == 5
    assert cfg.sources["executor.max_concurrent_tasks"] == str(ws)
    assert cfg.executor.task_timeout_seconds == 400
    assert cfg.executor.checkpoint_interval_seconds == 9
    assert cfg.sources["executor.checkpoint_interval_seconds"] == str(user)
    assert cfg.executor.kill_grace_seconds == 10
    assert cfg.sources["executor.kill_grace_seconds"] == str(etc)
    assert cfg.executor.shutdown_grace_seconds == 11
    assert cfg.sources["executor.shutdown_grace_seconds"] == str(share)
    # --config beats the workspace, env beats everything
    cfg = load_config(explicit, environ={k: v for k, v in isolated.items()})
    assert cfg.executor.max_concurrent_tasks == 6
    cfg = load_config(explicit)
    assert cfg.executor.max_concurrent_tasks == 7
    assert cfg.sources["executor.max_concurrent_tasks"] == (
        "env PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS")


@pytest.mark.parametrize("raw,expected", [("true", True), ("0", False), ("no", False)])
def test_env_booleans(raw, expected):
    cfg = load_config(environ={"PROVISIONING_ORCHESTRATOR_AUTO_START": raw})
    assert cfg.orchestrator.auto_start is expected


def test_env_lists_accept_commas_and_json():
    cfg = load_config(environ={"PROVISIONING_EXECUTION_FORCE_DIRECT": "a.*, b.list"})
    assert cfg.execution.force_direct == ["a.*", "b.list"]
    cfg = load_config(environ={"PROVISIONING_EXECUTION_FORCE_DIRECT": '["x"]'})
    assert cfg.execution.force_direct == ["x"]


@pytest.mark.parametrize("text,needle", [
    ("[executor]\nmax_concurent_tasks = 3\n",
     ":2: unknown key 'max_concurent_tasks' in [executor]"),
    ("[executor]\n\nmax_concurrent_tasks = \"ten\"\n",
     ":3: executor.max_concurrent_tasks must be an integer"),
    ("[orchestrator]\nauto_start = 1\n", ":2: orchestrator.auto_start must be a boolean"),
    ("[nope]\nx = 1\n", ":1: unknown section [nope]"),
    ("[execution]\ndefault_mode = \"sometimes\"\n", "must be one of auto, direct, orchestrated"),
    ("[executor\n", "invalid TOML"),
    ("[executor]\nmax_concurrent_tasks = 0\n", "must be at least 1"),
])
def test_bad_files_name_file_key_and_line(tmp_path, text, needle):
    bad = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value)
    assert needle in str(err.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="PROVISIONING_SERVER_PORT"):
        load_config(environ={"PROVISIONING_SERVER_PORT": "high"})
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_config(environ={"PROVISIONING_SERVER_COLOUR": "red"})


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_validate_file_alone(tmp_path):
    validate_file(write(tmp_path / "ok.toml", "[server]\nport = 9191\n"))
    with pytest.raises(ConfigError):
        validate_file(write(tmp_path / "bad.toml", "[server]\nprot = 9191\n"))


# --- through the real CLI ------------------------------------------------

def test_cli_config_show_json_reports_env_source():
    res = run_cli("config", "show", "--json",
                  env={"PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS": "3"})
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["config"]["executor"]["max_concurrent_tasks"] == 3
    assert data["sources"]["executor.max_concurrent_tasks"] == (
        "env PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS")


@pytest.mark.parametrize("text,key", [
    ("[executor]\nmax_concurent_tasks = 3\n", "max_concurent_tasks"),
    ("[executor]\nmax_concurrent_tasks = \"3\"\n", "max_concurrent_tasks"),
])
def test_cli_bad_config_exits_2_naming_file_and_key(tmp_path, text, key):
    bad = write(tmp_path / "bad.toml", text)
    for args in (["--config", str(bad), "config", "show"], ["config", "validate", str(bad)],
                 ["version", "--config", str(bad), "env"]):
        res = run_cli(*[a for a in args if a != "version"])
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert str(bad) in res.stderr and key in res.stderr
        assert "Traceback" not in res.stderr


def test_cli_config_path_lists_layers(isolated):
    write(Path.cwd() / "provisioning.toml", "[server]\nport = 9999\n")
    res = run_cli("config", "path", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    layers = [r["layer"] for r in rows]
    assert layers[-2:] == ["user", "workspace"] and layers[0] == "system"
    assert [r["exists"] for r in rows if r["layer"] == "workspace"] == [True]


def test_python_zygote_keys(tmp_path):
    cfg = load_config()
    assert cfg.executor.python_zygote is True and cfg.executor.python_zygote_preload == ["boto3"]
    f = write(tmp_path / "z.toml", '[executor]\npython_zygote = false\n'
                                   'python_zygote_preload = ["boto3", "my_sdk.client"]\n')
    cfg = load_config(f)
    assert cfg.executor.python_zygote is False
    assert cfg.executor.python_zygote_preload == ["boto3", "my_sdk.client"]
    bad = write(tmp_path / "bad.toml", '[executor]\npython_zygote_preload = ["os; rm"]\n')
    with pytest.raises(ConfigError, match=r"bad.toml: executor.python_zygote_preload must "
                                          r"list module names .* got 'os; rm'"):
        load_config(bad)
