"""Finding or starting the daemon (DESIGN.md 4): the CLI's auto-start, and the
one command line that runs `provisioning-orchestrator` for this CLI's config.

`ensure_orchestrator()` gives orchestrated commands a ready, version-checked
Client: the daemon that answers, or one started under the data dir's
spawn.lock (re-checked after the lock is won, so racing CLIs start one).
`daemon_command()` is what both auto-start and `provisioning orchestrator
start|stop|...` run: selfexec.orchestrator_command() (how this installation
starts its own programs) with our data dir, host and port made explicit.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.parse
from typing import TYPE_CHECKING

from provisioning import locks
from provisioning.client import Client, client_for, probe
from provisioning.errors import START_HINT, OrchestratorUnavailable
from provisioning.fsutil import ensure_private_dir
from provisioning.polling import wait_until
from provisioning.selfexec import orchestrator_command

if TYPE_CHECKING:
    from provisioning.config import Config


def _loopback_bind(endpoint: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 9090
    if host == "localhost":
        host = "127.0.0.1"
    if host not in ("127.0.0.1", "::1"):
        raise OrchestratorUnavailable(
            f"orchestrator not reachable at {endpoint}, and it is not a local endpoint, "
            "so it cannot be auto-started",
            hint="start the orchestrator on that host, or run with --direct")
    return host, port


def orchestrator_env(config: Config, endpoint: str) -> tuple[dict[str, str], str, int]:
    """Environment for a spawned daemon: our data dir, host and port, whatever
    layers the CLI's own config came from."""
    host, port = _loopback_bind(endpoint)
    env = dict(os.environ)
    env["PROVISIONING_STORAGE_DATA_DIR"] = str(config.data_paths().data_dir)
    env["PROVISIONING_SERVER_HOST"] = host
    env["PROVISIONING_SERVER_PORT"] = str(port)
    return env, host, port


def daemon_command(config: Config, endpoint: str, *flags: str,
                   config_file: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run `provisioning-orchestrator FLAGS` for this
    config: the same daemon whether auto-started or run by `orchestrator start`."""
    env, host, port = orchestrator_env(config, endpoint)
    argv, extra_env = orchestrator_command()
    env.update(extra_env)
    argv = [*argv, *flags, "--host", host, "--port", str(port),
            "--data-dir", str(config.data_paths().data_dir)]
    if config_file:
        argv += ["--config", str(config_file)]
    return argv, env


def spawn_daemon(config: Config, endpoint: str, *,
                 config_file: str | None = None) -> tuple[int | None, str]:
    """Run `provisioning-orchestrator --daemon`; return (exit code or None on
    timeout, its output).

    --daemon returns once /health answers (or fails with the reason). Output
    goes to a file, not a pipe: a daemon that kept the pipe open would make us
    wait forever for EOF.
    """
    argv, env = daemon_command(config, endpoint, "--daemon", config_file=config_file)
    limit = config.orchestrator.start_timeout_seconds
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, env=env, timeout=limit + 5)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        except OSError as e:
            raise OrchestratorUnavailable(f"cannot run {argv[0]}: {e.strerror or e}",
                                          hint="is provisioning installed completely?") from None
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    return code, text


def _last_lines(text: str, n: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-n:])


def start_orchestrator(config: Config, endpoint: str | None = None, *,
                       config_file: str | None = None) -> tuple[Client, bool]:
    """Make sure a daemon answers at `endpoint`; start one if needed.

    Returns (client, started_by_us). Spawns only while holding the data dir's
    spawn.lock and after re-checking /health, so racing CLIs start one daemon.
    """
    client = client_for(config, endpoint)
    health = probe(client)
    if health is not None:
        return client, False
    _loopback_bind(client.endpoint)  # refuse early for remote endpoints
    paths = config.data_paths()
    ensure_private_dir(paths.data_dir)
    limit = config.orchestrator.start_timeout_seconds
    try:
        with locks.acquire(paths.spawn_lock, timeout=limit + 10):
            health = probe(client)  # somebody else may have won the race
            if health is not None:
                return client, False
            code, output = spawn_daemon(config, client.endpoint, config_file=config_file)
            # --daemon returns after readiness; the poll covers a daemon that
            # answers a moment later. A failed start gets one last look (a
            # daemon started outside our lock, by systemd or a user).
            health = wait_until(lambda: probe(client), limit if code == 0 else 0,
                                first_delay=0.02, max_delay=0.5)
    except locks.LockBusy:
        raise OrchestratorUnavailable(
            f"another process is starting the orchestrator and it did not answer "
            f"within {limit + 10}s", hint=f"see {paths.daemon_log}") from None
    if health is None:
        if code is None:
            output = f"`provisioning-orchestrator --daemon` did not return within {limit + 5}s"
        elif code != 0:
            output = f"`provisioning-orchestrator --daemon` exited {code}: {output}"
        detail = f": {_last_lines(output)}" if output else ""
        raise OrchestratorUnavailable(
            f"the orchestrator did not come up at {client.endpoint}{detail}",
            hint=f"see {paths.daemon_log}, or run `provisioning-orchestrator --check`")
    return client, True


def ensure_orchestrator(config: Config, endpoint: str | None = None, *,
                        config_file: str | None = None) -> Client:
    """A ready, version-checked Client: the running daemon, or one auto-started
    (orchestrator.auto_start). Raises OrchestratorUnavailable (exit 3) or
    IncompatibleVersions (exit 4)."""
    client = client_for(config, endpoint)
    health = probe(client)
    if health is None:
        if not config.orchestrator.auto_start:
            raise OrchestratorUnavailable(
                f"orchestrator not running at {client.endpoint} "
                "(orchestrator.auto_start is off)", hint=START_HINT)
        client, _ = start_orchestrator(config, client.endpoint, config_file=config_file)
        health = client.last_health or client.health()
    client.check_versions(health)
    client.token  # noqa: B018 - fail now (and fall back) if the token is unreadable
    return client
