"""Install and remove taskservs on a server, through its provider.

The taskserv contract (DESIGN.md 12, docs/taskservs.md) is the same for
every provider: render the templates here (Jinja2, with the context of
provisioning.ops.tscontext), copy the taskserv folder to
`<root>/opt/provisioning/taskservs/<name>/` and the rendered files to their
places through the provider's `copy_file`, then run `install` there through
the provider's `run` (context JSON on stdin, PROVISIONING_* env), then wait
for its health check (`tcp`/`http` from here to the server's address, or
`command` run on the server). A script may print a last line
`{"pids": [...]}`: on a provider whose servers are this machine (`local`)
those processes are recorded (identity = pid + create time) and stopped at
removal; on a real host its own `remove` script stops what it started.

Every step is recorded in the taskserv's state record, so a failed install
is visible in `taskserv list` and a re-run (`workflow retry`) starts it over
cleanly: leftover processes of the failed attempt are stopped first.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from provisioning import procinfo
from provisioning.errors import ProvisioningError
from provisioning.ops import procs, providers, redact, tscontext
from provisioning.ops.infra import Infra
from provisioning.ops.state import StateStore
from provisioning.ops.taskservs import (
    SCRIPT_SUFFIXES,
    deploy_dir,
    effective_ports,
    render_template,
    script_argv,
)
from provisioning.polling import wait_until

INSTALL_TIMEOUT_S = 300
# helpers every taskserv's scripts and services may use (lib/ beside their files):
# one copy in the package for all of them
TASKSERV_LIB = Path(__file__).resolve().parent / "taskserv_lib"
DEFAULT_HEALTH_TIMEOUT_S = 20


def _same_machine(provider: Any) -> bool:
    """Are the provider's servers this machine (their pids are ours to watch)?"""
    return provider is not None and provider.name == "local"


def _host_python(provider: Any) -> str:
    return getattr(provider, "host_python", "python3")  # local: the tool's own interpreter


def _pids_from(stdout: str) -> list[int]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                return []
            pids = data.get("pids", []) if isinstance(data, dict) else []
            return [int(p) for p in pids if isinstance(p, int)]
        if line:
            return []
    return []


def taskserv_status(rec: dict[str, Any]) -> str:
    """Recorded status reconciled with the processes: a dead service says 'dead'."""
    status = rec.get("status", "unknown")
    if status == "installed":
        processes = rec.get("processes", [])
        if processes and not all(procinfo.is_alive(p) for p in processes):
            return "dead"
        return "running"
    return status


def _clean(text: str) -> str:
    """Script output without the secret-by-name env values this op was given: it goes
    into state records (an install's error) that the executor's redaction never sees."""
    return redact.redact_text(text, redact.secret_values(os.environ))


def _relay(report: Any, prefix: str, text: str) -> None:
    for line in _clean(text).splitlines():
        if line.strip() and not line.lstrip().startswith("{"):
            report.log(f"[{prefix}] {line}")


def install(infra: Infra, hostname: str, name: str, report: Any, *,
            state: StateStore | None = None) -> dict[str, Any]:
    """Install (or confirm) one taskserv on one server."""
    state = state or StateStore()
    tdef = infra.catalog.get(name)
    provider = providers.for_infra(infra, state)
    with state.lock(infra.name, hostname):
        server = state.server(infra.name, hostname)
        if server is None or provider.status(hostname) == "missing":
            raise ProvisioningError(
                f"server {hostname} of infra {infra.name} does not exist; create it first",
                hint=f"provisioning server create {hostname} --infra {infra.name}")
        required_ports = _required_ports(infra.name, hostname, tdef, state)

        existing = state.taskserv(infra.name, hostname, name)
        if existing and taskserv_status(existing) == "running":
            ok, detail = _health(tdef, server, existing.get("ports", {}), provider, deadline=5)
            if ok:
                message = f"taskserv {name} is already running on {hostname}; nothing to do"
                report.progress(100, message)
                return {"taskserv": name, "hostname": hostname, "changed": False,
                        "ports": existing.get("ports", {}), "message": message}
        if existing:  # a failed, dead or interrupted earlier attempt: start over cleanly
            report.log(f"cleaning up an earlier install of {name} on {hostname} "
                       f"(status {taskserv_status(existing)})")
            for p in existing.get("processes", []):
                procs.stop(p)

        overrides = infra.taskserv_settings.get(name, {})
        ports = effective_ports(tdef, overrides, provider.port_offset(server))
        seq = existing.get("seq") if existing else None
        if seq is None:
            seq = 1 + max((t.get("seq", 0) for t in state.taskservs(infra.name, hostname)),
                          default=0)
        record: dict[str, Any] = {
            "name": name, "hostname": hostname, "infra": infra.name, "status": "installing",
            "requires": list(tdef.requires), "ports": ports, "health": tdef.health,
            "processes": [], "files": [], "source": str(tdef.dir), "seq": seq,
            "started_at": time.time(), "error": None,
            "attempts": (existing or {}).get("attempts", 0) + 1,
        }
        state.save_taskserv(infra.name, hostname, record)
        try:
            _deploy_and_run(infra, server, tdef, ports, required_ports, provider, record,
                            report, state)
        except ProvisioningError as e:
            record.update(status="failed", error=e.message, finished_at=time.time())
            state.save_taskserv(infra.name, hostname, record)
            raise
        record.update(status="installed", installed_at=time.time())
        state.save_taskserv(infra.name, hostname, record)
    where = ", ".join(f"{k}={server['address']}:{v}" for k, v in ports.items())
    message = f"taskserv {name} installed on {hostname} ({where})"
    report.progress(100, message)
    return {"taskserv": name, "hostname": hostname, "changed": True, "ports": ports,
            "address": server["address"], "message": message}


def _required_ports(infra_name: str, hostname: str, tdef: Any, state: StateStore
                    ) -> dict[str, dict[str, int]]:
    """The ports of each taskserv `tdef` requires, all of which must be running."""
    required_ports: dict[str, dict[str, int]] = {}
    for req in tdef.requires:
        rec = state.taskserv(infra_name, hostname, req)
        if rec is None or taskserv_status(rec) != "running":
            raise ProvisioningError(f"taskserv {tdef.name} requires {req}, which is not "
                                    f"running on {hostname}", hint=f"install {req} first")
        required_ports[req] = rec.get("ports", {})
    return required_ports


def _deploy_and_run(infra: Infra, server: dict[str, Any], tdef: Any, ports: dict[str, int],
                    required_ports: dict[str, dict[str, int]], provider: Any,
                    record: dict[str, Any], report: Any, state: StateStore) -> None:
    hostname = server["hostname"]
    ctx = tscontext.build(infra=infra, server=server, tdef=tdef, ports=ports,
                          required_ports=required_ports, provider=provider, state=state)
    report.progress(15, f"rendering {len(tdef.templates)} template(s) of {tdef.name}")
    with tempfile.TemporaryDirectory(prefix="provisioning-render-") as tmp:
        rendered = []
        for n, (src, dest) in enumerate(sorted(tdef.templates.items())):
            out = Path(tmp) / f"{n}-{Path(src).name}"
            out.write_text(render_template(tdef, src, ctx), encoding="utf-8")
            rendered.append((out, dest))
        report.progress(30, f"copying {tdef.name} to {hostname}")
        _copy_folder(tdef, provider, hostname, record)
        for out, dest in rendered:
            provider.copy_file(hostname, out, dest)
            record["files"].append(dest)
    state.save_taskserv(infra.name, hostname, record)

    if tdef.script("install") is not None:
        report.progress(50, f"running install of {tdef.name} on {hostname}")
        proc = _run_script(provider, tdef, "install", ctx)
        _relay(report, f"{tdef.name} install", proc.stdout)
        _relay(report, f"{tdef.name} install", proc.stderr)
        if _same_machine(provider):
            for pid in _pids_from(proc.stdout):
                ident = procinfo.identity(pid)
                if ident:
                    record["processes"].append(ident)
        if proc.returncode != 0:
            last = _clean(proc.stderr.strip() or proc.stdout.strip() or "no output"
                          ).splitlines()[-1]
            raise ProvisioningError(f"install of {tdef.name} on {hostname} failed "
                                    f"(exit {proc.returncode}): {last}")
        record["status"] = "starting"
        state.save_taskserv(infra.name, hostname, record)

    if tdef.health:
        report.progress(75, f"waiting for {tdef.name} on {hostname} to be healthy")
        deadline = float(tdef.health.get("timeout_s", DEFAULT_HEALTH_TIMEOUT_S))
        ok, detail = _health(tdef, server, ports, provider, deadline=deadline)
        report.log(f"health {tdef.name}@{hostname}: {detail}")
        if not ok:
            raise ProvisioningError(f"taskserv {tdef.name} on {hostname} is not healthy "
                                    f"after {deadline:g}s: {detail}")


def _copy_folder(tdef: Any, provider: Any, hostname: str, record: dict[str, Any]) -> None:
    """The taskserv folder to <root>/opt/provisioning/taskservs/<name>/ (scripts 0700),
    with the helpers every taskserv may use (lib/: provisioning.sh, provisioning_service.py)."""
    rel, _ = deploy_dir("/", tdef.name)
    for helper in sorted(TASKSERV_LIB.iterdir()):
        if helper.suffix in (".sh", ".py"):
            provider.copy_file(hostname, helper, f"{rel}/lib/{helper.name}", mode=0o600)
    for f in sorted(tdef.dir.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            name = f.relative_to(tdef.dir).as_posix()
            executable = name.split(".")[0] in ("install", "remove", "check") or bool(
                f.stat().st_mode & 0o100)
            provider.copy_file(hostname, f, f"{rel}/{name}",
                               mode=0o700 if executable else 0o600)
    record["files"] = [rel]


def _run_script(provider: Any, tdef: Any, kind: str, ctx: dict[str, Any],
                argv: list[str] | None = None, timeout: float = INSTALL_TIMEOUT_S) -> Any:
    """Run a script of the taskserv (or `argv`) on the server with its context."""
    python = _host_python(provider)
    if argv is None:
        script = tdef.script(kind) if tdef is not None else None
        name = script.name if script is not None else kind
        argv = script_argv(f"{ctx['dir']}/{name}", python=python)
    return provider.run(ctx["hostname"], argv, input=json.dumps(tscontext.script_context(ctx)),
                        env=tscontext.script_env(ctx, python=python), timeout=timeout)


def _health(tdef: Any, server: dict[str, Any], ports: dict[str, int], provider: Any,
            *, deadline: float) -> tuple[bool, str]:
    health = tdef.health
    if not health:
        return True, "no health check declared"
    if health["type"] != "command":
        return procs.wait_healthy(health["type"], server["address"], ports[health["port"]],
                                  deadline_s=deadline, path=health.get("path", "/"),
                                  send=health.get("send", ""), expect=health.get("expect", ""))
    ctx = _remove_context(server, tdef.name, {"ports": ports})
    argv = health.get("argv")
    if argv and (tdef.dir / argv[0]).is_file():  # a file of the taskserv: its deployed copy
        argv = [f"{ctx['dir']}/{argv[0]}", *argv[1:]]
    last: list[tuple[bool, str]] = []

    def healthy() -> bool:
        try:
            proc = _run_script(provider, tdef, "check", ctx, argv=argv, timeout=30)
        except ProvisioningError as e:
            last[:] = [(False, e.message)]
            return False
        said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
        ok = proc.returncode == 0 and health.get("expect", "") in proc.stdout
        last[:] = [(ok, f"check exited {proc.returncode}: {said[0]}")]
        return ok

    wait_until(healthy, deadline, first_delay=0.05, max_delay=1.0)
    return last[0]


def health_of(infra: Infra, server: dict[str, Any], rec: dict[str, Any], provider: Any, *,
              deadline: float) -> tuple[bool, str]:
    """The recorded taskserv's health check, as an install runs it (`command` through
    the provider, on the host)."""
    tdef = infra.catalog.get(rec["name"])
    return _health(tdef, server, rec.get("ports", {}), provider, deadline=deadline)


def read_on_host(infra: Infra, server: dict[str, Any], name: str, provider: Any,
                 state: StateStore) -> tuple[bool, str]:
    """Read only, from the host: is taskserv `name` there (its folder under
    <root>/opt/provisioning/taskservs/) and does its `check`, if it has one, pass?"""
    tdef = infra.catalog.get(name)
    host = server["hostname"]
    d = deploy_dir(server.get("root") or "/", name)[1]
    if provider.run(host, ["test", "-d", d], timeout=30).returncode != 0:
        return False, f"{name} is not on {host} (no {d})"
    if tdef.script("check") is None:
        return True, f"{name} is on {host} ({d}; it has no check)"
    rec = state.taskserv(infra.name, host, name) or {}
    ports = rec.get("ports") or effective_ports(
        tdef, infra.taskserv_settings.get(name, {}), provider.port_offset(server))
    proc = _run_script(provider, tdef, "check", _remove_context(server, name, {"ports": ports}),
                       timeout=30)
    said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
    if proc.returncode != 0:
        return False, f"{name} is on {host} but its check fails (exit {proc.returncode}: " \
            f"{_clean(said[0])})"
    return True, f"{name} is installed on {host} (check: {_clean(said[0])})"


def _remove_context(server: dict[str, Any], name: str, record: dict[str, Any]
                    ) -> dict[str, Any]:
    """What remove/check scripts get: the server and the recorded ports (no infra at hand)."""
    root = server.get("root") or "/"
    return {"hostname": server["hostname"], "address": server.get("address", ""),
            "root": root, "dir": deploy_dir(root, name)[1], "infra": server.get("infra", ""),
            "provider": server.get("provider", ""), "taskserv": name,
            "ports": record.get("ports", {}), "required_ports": {}, "values": {}}


def remove(infra_name: str, hostname: str, name: str, report: Any, *, provider: Any,
           state: StateStore | None = None) -> dict[str, Any]:
    """Remove one taskserv (refused while another installed taskserv requires it)."""
    state = state or StateStore()
    with state.lock(infra_name, hostname):
        return remove_locked(infra_name, hostname, name, report, provider=provider,
                             state=state, force=False)


def remove_locked(infra_name: str, hostname: str, name: str, report: Any, *, provider: Any,
                  state: StateStore, force: bool) -> dict[str, Any]:
    record = state.taskserv(infra_name, hostname, name)
    if record is None:
        message = f"taskserv {name} is not installed on {hostname}; nothing to remove"
        report.progress(100, message)
        return {"taskserv": name, "hostname": hostname, "changed": False, "message": message}
    if not force:
        users = [t["name"] for t in state.taskservs(infra_name, hostname)
                 if name in t.get("requires", [])]
        if users:
            raise ProvisioningError(f"taskserv {name} on {hostname} is required by "
                                    f"{', '.join(users)}", hint="remove those first")
    exists = provider is not None and provider.status(hostname) != "missing"
    if exists and record.get("source"):
        _run_remove(provider, state.server(infra_name, hostname) or {"hostname": hostname},
                    name, record, report)
    stopped = sum(1 for p in record.get("processes", []) if procs.stop(p))
    if exists:
        for f in record.get("files", []):
            provider.remove_path(hostname, f)
    state.remove_taskserv(infra_name, hostname, name)
    message = f"taskserv {name} removed from {hostname} ({stopped} process(es) stopped)"
    report.log(message)
    return {"taskserv": name, "hostname": hostname, "changed": True, "message": message}


def _run_remove(provider: Any, server: dict[str, Any], name: str, record: dict[str, Any],
                report: Any) -> None:
    """The taskserv's deployed `remove` script, if it has one; failures are warnings."""
    for suffix in SCRIPT_SUFFIXES:
        if not (Path(record["source"]) / f"remove{suffix}").is_file():
            continue
        ctx = _remove_context(server, name, record)
        argv = script_argv(f"{ctx['dir']}/remove{suffix}", python=_host_python(provider))
        try:
            proc = _run_script(provider, None, "remove", ctx, argv=argv)
            _relay(report, f"{name} remove", proc.stdout + proc.stderr)
            failed = f"exited {proc.returncode}" if proc.returncode else ""
        except ProvisioningError as e:
            failed = e.message
        if failed:
            report.log(f"warning: remove script of {name}: {failed}; "
                       "stopping its processes anyway")
        return
