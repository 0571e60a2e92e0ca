"""The CLI skeleton: exit codes, messages without tracebacks, env, help."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_env_json_shows_mode_data_dir_and_config_files(isolated):
    res = run_cli("env", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["data_dir"] == isolated["PROVISIONING_STORAGE_DATA_DIR"]
    assert info["mode"] == "auto"
    assert info["endpoint"] == "http://localhost:9090"
    assert any(f["layer"] == "workspace" for f in info["config_files"])


def test_mode_flags_show_in_env():
    res = run_cli("--direct", "env", "--json")
    assert json.loads(res.stdout)["mode"] == "direct"
    res = run_cli("env", "--mode", "orchestrated", "--json")
    assert json.loads(res.stdout)["mode"] == "orchestrated"


def test_conflicting_mode_flags_are_a_usage_error():
    res = run_cli("--direct", "--orchestrated", "env")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_unknown_command_and_option_exit_2():
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "frobnicate" in res.stderr
    res = run_cli("version", "--bogus")
    assert res.returncode == 2 and "--bogus" in res.stderr


def test_help_for_a_command():
    res = run_cli("help", "config")
    assert res.returncode == 0 and "show" in res.stdout and "validate" in res.stdout
    res = run_cli("help", "nosuch")
    assert res.returncode == 2 and "unknown command" in res.stderr


def test_errors_have_no_traceback_unless_verbose(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    quiet = run_cli("--config", str(bad), "env")
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = run_cli("-v", "--config", str(bad), "env")
    assert loud.returncode == 2 and "Traceback" in loud.stderr
