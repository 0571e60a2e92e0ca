"""Start the real orchestrator daemon for a test, and talk to it.

    from tests.daemon_fixture import start_daemon

    def test_something(tmp_path):
        d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 2})
        status, body = d.request("POST", "/workflows", {"tasks": [{"id": "a", "op": "noop"}]})
        assert status == 202
        d.stop()          # --stop; asserts the process is gone

- `start_daemon(tmp_path, *, foreground=False, env=None, args=(), timeout=30, **sections)`
  (`env` is merged over os.environ; a None value unsets a variable)
  writes `tmp_path/orchestrator.toml` from `sections` (each a dict: server={...},
  executor={...}, storage={...}); `server.port` defaults to 0 (a free port, read back
  from the pidfile). The data dir is $PROVISIONING_STORAGE_DATA_DIR (set by the autouse
  `isolated` fixture) unless `storage={"data_dir": ...}` says otherwise.
  Default mode runs `provisioning-orchestrator --daemon` (returns once /health answers);
  `foreground=True` keeps a Popen (`d.proc`, output in `d.output_file`) and polls the
  pidfile and /health instead.
- `Daemon`: `.url`, `.token`, `.pid`, `.port`, `.instance_id`, `.data_dir`, `.config_file`,
  `.request(method, path, body=None, *, token=..., headers=None, raw=None)` ->
  (status, parsed JSON or text), `.health()`, `.wait_workflow(id, statuses)`,
  `.stop()` (`--stop`, then asserts the pid is gone), `.kill()` (SIGKILL, waits it gone),
  `.cli(*args)` (runs provisioning-orchestrator with this config).
Calling start_daemon again with the same tmp_path restarts on the same data dir.
Every Daemon started here is killed at interpreter exit if a test forgot it.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ORCHESTRATOR = str(BIN / "provisioning-orchestrator")

_started: list[int] = []


def _cleanup() -> None:
    for pid in _started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


atexit.register(_cleanup)


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of strings are TOML too


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Daemon:
    data_dir: Path
    config_file: Path
    env: dict[str, str]
    pid: int = 0
    port: int = 0
    instance_id: str = ""
    token: str = ""
    proc: subprocess.Popen | None = None
    start_output: str = ""
    output_file: Path | None = None  # foreground mode: the daemon's stdout+stderr
    _connections: dict[str, http.client.HTTPConnection] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ORCHESTRATOR, "--config", str(self.config_file), *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def _load_runtime(self) -> bool:
        try:
            info = json.loads((self.data_dir / "orchestrator.pid").read_text())
            self.token = (self.data_dir / "token").read_text().strip()
        except (OSError, ValueError):
            return False
        self.pid, self.port, self.instance_id = info["pid"], info["port"], info["instance_id"]
        return True

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = "",
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                timeout: float = 30) -> tuple[int, Any]:
        """One HTTP request; token="" means the daemon's token, None means none."""
        hdrs = {"Host": f"127.0.0.1:{self.port}"}
        tok = self.token if token == "" else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            if data is not None and "Content-Length" not in hdrs:
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            resp = conn.getresponse()
            payload = resp.read()
            self.last_headers = dict(resp.getheaders())
            ctype = resp.getheader("Content-Type", "")
            if ctype.startswith("application/json"):
                return resp.status, json.loads(payload)
            return resp.status, payload.decode(errors="replace")
        finally:
            conn.close()

    def health(self) -> dict[str, Any] | None:
        try:
            status, body = self.request("GET", "/health", token=None, timeout=5)
        except OSError:
            return None
        return body if status == 200 else None

    def wait_workflow(self, workflow_id: str, statuses=("succeeded", "failed", "cancelled"),
                      timeout: float = 30) -> dict[str, Any]:
        def done():
            status, body = self.request("GET", f"/workflows/{workflow_id}")
            return body if status == 200 and body["status"] in statuses else None

        return _poll(done, timeout, f"workflow {workflow_id} to reach {statuses}")

    def alive(self) -> bool:
        import psutil

        try:
            p = psutil.Process(self.pid)
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = self.cli("--stop", timeout=timeout)
        assert result.returncode == 0, result.stderr
        if self.proc is not None:
            self.proc.wait(timeout=timeout)
        _poll(lambda: not self.alive(), timeout, f"daemon pid {self.pid} to exit")
        return result

    def kill(self, timeout: float = 30) -> None:
        os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=timeout)
        _poll(lambda: not self.alive(), timeout, f"daemon pid {self.pid} to die")


def start_daemon(tmp_path: Path, *, foreground: bool = False, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), timeout: float = 30,
                 **sections: dict[str, Any]) -> Daemon:
    """Start the real daemon on a free port; see the module docstring."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset it
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("server", {}).setdefault("port", 0)
    data_dir = Path(sections.get("storage", {}).get("data_dir")
                    or full_env.get("PROVISIONING_STORAGE_DATA_DIR") or tmp_path / "data")
    sections.setdefault("storage", {})["data_dir"] = str(data_dir)
    full_env.pop("PROVISIONING_STORAGE_DATA_DIR", None)  # the config file says it
    config_file = write_config(tmp_path / "orchestrator.toml", sections)
    d = Daemon(data_dir=data_dir, config_file=config_file, env=full_env)
    # a previous daemon on this data dir may have left its pidfile (kill -9)
    old = data_dir / "orchestrator.pid"
    stale = old.read_text() if old.exists() else None
    if foreground:
        d.output_file = tmp_path / "foreground.out"
        with open(d.output_file, "ab") as out:  # a file, not a pipe: a full pipe blocks
            d.proc = subprocess.Popen([ORCHESTRATOR, "--config", str(config_file), *args],
                                      env=full_env, stdout=out, stderr=subprocess.STDOUT)

        def ready():
            if d.proc.poll() is not None:
                raise AssertionError(f"daemon exited {d.proc.returncode}: "
                                     f"{d.output_file.read_text()}")
            if old.exists() and old.read_text() != stale and d._load_runtime():
                return d.health() is not None
            return False

        _poll(ready, timeout, "the foreground daemon to answer /health")
    else:
        result = subprocess.run([ORCHESTRATOR, "--daemon", "--config", str(config_file),
                                 *args], capture_output=True, text=True, env=full_env,
                                timeout=timeout + 30)
        d.start_output = result.stdout + result.stderr
        assert result.returncode == 0, f"--daemon failed ({result.returncode}): {d.start_output}"
        assert d._load_runtime(), "daemon started but wrote no pidfile/token"
    _started.append(d.pid)
    return d
