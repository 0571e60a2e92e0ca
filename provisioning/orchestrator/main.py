"""`provisioning-orchestrator`: run, daemonize, stop, inspect or check the daemon.

No flag: run in the foreground (what systemd and launchd run). `--daemon`
forks into the background and returns once /health answers. `--stop`,
`--status` (exit 0 running, 3 stopped), `--check` (config + versions.toml
verdict: exit 0, 2 bad config, 4 incompatible versions; on PostgreSQL also the
database: 1 unreachable, 4 a schema of another version), `--migrate` (PostgreSQL
schema to this version's: pg_admin.py).

argparse rather than click: the daemon stays lean. Errors are one line on
stderr with their exit code from provisioning.errors; -v adds tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
from pathlib import Path

from provisioning.config import Config, load_config
from provisioning.errors import EXIT_FAILED, EXIT_INTERRUPTED, ConfigError, ProvisioningError
from provisioning.orchestrator import pg_admin
from provisioning.orchestrator.background import (
    ALREADY_MARKER,
    ERROR_MARKER,
    pipe_send,
    start_background,
)
from provisioning.orchestrator.control import daemon_status, stop_daemon
from provisioning.orchestrator.listen import check_bind_allowed
from provisioning.versions import check_compatibility


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provisioning-orchestrator",
        description="The provisioning orchestrator: durable queue, workflow engine, HTTP API.")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--daemon", action="store_true",
                        help="fork into the background; return once /health answers")
    action.add_argument("--stop", action="store_true", help="stop the running daemon")
    action.add_argument("--status", action="store_true",
                        help="report whether it runs (exit 0 running, 3 stopped)")
    action.add_argument("--check", action="store_true",
                        help="validate config and versions.toml (and, on PostgreSQL, reach "
                             "the database and read its schema version), then exit")
    action.add_argument("--migrate", action="store_true",
                        help="PostgreSQL backend: bring the database schema to this "
                             "version's, then exit")
    p.add_argument("--config", metavar="FILE", help="extra config file (layered last)")
    p.add_argument("--host", help="bind address (server.host)")
    p.add_argument("--port", type=int, help="port (server.port); 0 picks a free one")
    p.add_argument("--data-dir", metavar="DIR", help="data dir (storage.data_dir)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="debug logging and tracebacks on errors")
    return p


def load(args: argparse.Namespace) -> Config:
    """Config with the command-line overrides applied (they win over every layer)."""
    config = load_config(args.config)
    server, storage, sources = config.server, config.storage, dict(config.sources)
    if args.host is not None:
        server = dataclasses.replace(server, host=args.host)
        sources["server.host"] = "--host"
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {args.port}")
        server = dataclasses.replace(server, port=args.port)
        sources["server.port"] = "--port"
    data_dir = args.data_dir if args.data_dir is not None else storage.data_dir
    # Absolute: the daemon chdirs to / after forking.
    storage = dataclasses.replace(storage, data_dir=str(Path(data_dir).expanduser().absolute()))
    if args.data_dir is not None:
        sources["storage.data_dir"] = "--data-dir"
    return dataclasses.replace(config, server=server, storage=storage, sources=sources)


def check_versions() -> None:
    """Refuse to run beside an incompatible core (exit 4, both versions and the range)."""
    check_compatibility().raise_if_incompatible()


def run_check(config: Config) -> int:
    check_bind_allowed(config)
    verdict = check_compatibility()
    print(f"config: ok (data dir {config.storage.data_dir}, "
          f"listen {config.server.host}:{config.server.port})")
    verdict.raise_if_incompatible()
    print(f"versions: {verdict.reason}")
    if config.storage.backend == "postgres":
        print(f"database: {pg_admin.check(config)}")
    return 0


def setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def run_foreground(config: Config, *, instance_id: str | None = None,
                   ready_fd: int | None = None, verbose: int = 0) -> int:
    """The daemon proper. In --daemon's grandchild, failures go to the log and the pipe."""
    # lazy: the engine, store and HTTP server only where a daemon runs, so
    # --stop, --status and --check (and the --daemon parent) stay light
    from provisioning.orchestrator.daemon import AlreadyRunning, Orchestrator

    log = logging.getLogger("provisioning.orchestrator")
    try:
        return Orchestrator(config, instance_id=instance_id).run(ready_fd=ready_fd)
    except AlreadyRunning as e:
        if ready_fd is not None:
            pipe_send(ready_fd, f"{ALREADY_MARKER} {e.pid or 'unknown'}")
        print(str(e))
        return 0
    except ProvisioningError as e:
        log.error("%s", e, exc_info=bool(verbose))
        if ready_fd is not None:
            pipe_send(ready_fd, f"{ERROR_MARKER} {e.exit_code} {e.message}")
            return e.exit_code
        raise
    except Exception as e:
        log.exception("orchestrator crashed")
        if ready_fd is not None:
            pipe_send(ready_fd, f"{ERROR_MARKER} {EXIT_FAILED} internal error: {e}")
            return EXIT_FAILED
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load(args)
        if args.check:
            return run_check(config)
        if args.migrate:
            print(pg_admin.migrate(config))
            return 0
        if args.stop:
            return stop_daemon(config)
        if args.status:
            return daemon_status(config)
        check_versions()
        check_bind_allowed(config)
        if args.daemon:
            def child(instance_id: str, ready_fd: int) -> int:
                setup_logging(args.verbose)
                return run_foreground(config, instance_id=instance_id, ready_fd=ready_fd,
                                      verbose=args.verbose)

            # The same deadline the CLI's auto-start allows (it waits a little longer).
            timeout = config.orchestrator.start_timeout_seconds
            return start_background(config, run_child=child, timeout=timeout)
        return run_foreground(config, verbose=args.verbose)
    except ProvisioningError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.verbose:
            raise
        print(f"error: internal error: {e} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
