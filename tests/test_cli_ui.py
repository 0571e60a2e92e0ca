"""`provisioning orchestrator ui [--open]`: a one-time sign-in URL for the dashboard."""

from __future__ import annotations

import json
import os
import stat
from urllib.parse import urlsplit

from tests.conftest import free_port, run_cli
from tests.daemon_fixture import start_daemon


def test_ui_prints_a_url_with_a_one_time_code_that_signs_in(tmp_path):
    d = start_daemon(tmp_path)
    try:
        done = run_cli("--endpoint", d.url, "orchestrator", "ui", "--json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["expires_in"] == 120 and info["opened"] is False
        url = urlsplit(info["url"])
        assert f"{url.scheme}://{url.netloc}" == d.url and url.path == "/ui/login"
        status, _ = d.request("GET", f"{url.path}?{url.query}", token=None)
        assert status == 303 and "Set-Cookie" in d.last_headers
        assert d.request("GET", f"{url.path}?{url.query}", token=None)[0] == 403  # used up
        assert d.token not in done.stdout + done.stderr

        done = run_cli("--endpoint", d.url, "orchestrator", "ui")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "Open the dashboard (the link works once, within 120 s):"
        assert lines[1].strip().startswith(f"{d.url}/ui/login?code=")
    finally:
        d.stop()


def test_ui_open_hands_the_url_to_the_browser(tmp_path):
    d = start_daemon(tmp_path)
    seen = tmp_path / "browser-got"
    browser = tmp_path / "fake-browser"  # $BROWSER, as webbrowser reads it
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    try:
        done = run_cli("--endpoint", d.url, "orchestrator", "ui", "--open", "--json",
                       env={"BROWSER": str(browser)})
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["opened"] is True and seen.read_text() == info["url"]
    finally:
        d.stop()


def test_ui_without_a_daemon_and_without_auto_start_is_exit_3(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = run_cli("--endpoint", endpoint, "orchestrator", "ui",
                   env={"PROVISIONING_ORCHESTRATOR_AUTO_START": "false"})
    assert done.returncode == 3
    assert "orchestrator not running" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "data" / "orchestrator.pid")
