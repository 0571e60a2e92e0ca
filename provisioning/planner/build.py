"""Business commands as workflows: build_workflow(kind, infra, params) -> WorkflowSpec.

The CLI calls this and hands the spec to modes.execute (direct or through the
daemon); the daemon's POST /workflows/servers/create etc. call it too. The
infra is resolved and validated here, before anything is submitted, and put
into every task's params as an ABSOLUTE path: tasks run in the daemon, whose
current directory is not the workspace.

Shapes:
  server.create    one `server.create` task per server (all, or params["server"]), parallel
  server.delete    one `server.delete` task (params["server"])
  taskserv.create  per server: the taskserv's requirements, then it (`taskserv.create`)
  taskserv.delete  one `taskserv.delete` task per server that has it
  cluster.create   servers (parallel) -> each server's taskservs in `requires` order
                   -> one `cluster.check`
  cluster.delete   `server.delete` per server (parallel) -> `cluster.delete` (forgets it)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from provisioning.errors import UsageError, ValidationError
from provisioning.model import TaskSpec, WorkflowSpec
from provisioning.model import task_id_from as task_id
from provisioning.ops.infra import Infra, load_infra, resolve_infra
from provisioning.ops.state import StateStore

KINDS = ("server.create", "server.delete", "taskserv.create", "taskserv.delete",
         "cluster.create", "cluster.delete")


def _base(infra: Infra) -> dict[str, Any]:
    return {"infra": str(infra.dir), "infra_name": infra.name}


def _param(params: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise UsageError(f"{key} is required for this command")
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string, got {value!r}")
    return value


def _load(infra_ref: str | Path, kind: str, state: StateStore) -> Infra | dict[str, Any]:
    """The validated infra; for deletes, fall back to what state remembers of it."""
    try:
        return load_infra(infra_ref)
    except UsageError:
        if not kind.endswith(".delete"):
            raise
        name = Path(str(infra_ref)).name
        record = state.infra_record(name)
        if record is None:
            raise
        return {"infra": record["path"], "infra_name": name}


def build_workflow(kind: str, infra: str | Path, params: dict[str, Any] | None = None, *,
                   state: StateStore | None = None) -> WorkflowSpec:
    """The WorkflowSpec for one business command. ValidationError/UsageError: exit 2.

    `state` (default: the data dir from env/config) is read only by deletes, to
    find servers and infras whose definition is gone.
    """
    params = dict(params or {})
    state = state or StateStore()
    if kind not in KINDS:
        raise UsageError(f"unknown workflow kind '{kind}'", hint=f"known: {', '.join(KINDS)}")
    loaded = _load(infra, kind, state)
    if isinstance(loaded, dict):  # infra file gone; deletes still work from state
        base, name, inf = loaded, loaded["infra_name"], None
    else:
        base, name, inf = _base(loaded), loaded.name, loaded
    builder = _BUILDERS[kind]
    tasks = builder(inf, base, params, state)
    if not tasks:
        raise ValidationError(f"nothing to do for {kind} in infra {name}")
    label = params.get("server") or params.get("taskserv") or params.get("cluster") or "all"
    return WorkflowSpec(name=f"{kind.replace('.', '-')}-{name}-{label}", tasks=tuple(tasks),
                        kind=kind)


def _server_create(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                   state: StateStore) -> list[TaskSpec]:
    assert infra is not None
    one = _param(params, "server")
    hosts = [infra.server(one).hostname] if one else [s.hostname for s in infra.servers]
    return [TaskSpec(id=task_id("create", h), op="server.create",
                     params={**base, "server": h}) for h in hosts]


def _server_delete(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                   state: StateStore) -> list[TaskSpec]:
    host = _param(params, "server", required=True)
    return [TaskSpec(id=task_id("delete", host), op="server.delete",
                     params={**base, "server": host})]


def _install_chain(infra: Infra, base: dict[str, Any], host: str, names: list[str],
                   after: tuple[str, ...]) -> list[TaskSpec]:
    """Tasks installing `names` (already in install order) on one server."""
    tasks: list[TaskSpec] = []
    ids: dict[str, str] = {}
    for ts in names:
        tid = task_id("install", host, ts)
        deps = list(after) + [ids[r] for r in infra.catalog.get(ts).requires if r in ids]
        tasks.append(TaskSpec(id=tid, op="taskserv.create",
                              params={**base, "server": host, "taskserv": ts},
                              depends_on=tuple(deps)))
        ids[ts] = tid
    return tasks


def _taskserv_create(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                     state: StateStore) -> list[TaskSpec]:
    assert infra is not None
    name = _param(params, "taskserv", required=True)
    infra.catalog.get(name)
    one = _param(params, "server")
    if one:
        hosts = [infra.server(one).hostname]
    else:
        hosts = [s.hostname for s in infra.servers if name in infra.taskserv_plan(s.hostname)]
        if not hosts:
            raise ValidationError(f"{infra.file}: no server of infra {infra.name} declares "
                                  f"taskserv '{name}'", hint="pass --server NAME")
    order = infra.catalog.install_order([name])
    tasks: list[TaskSpec] = []
    for h in hosts:
        tasks += _install_chain(infra, base, h, order, ())
    return tasks


def _taskserv_delete(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                     state: StateStore) -> list[TaskSpec]:
    name = _param(params, "taskserv", required=True)
    one = _param(params, "server")
    if one:
        hosts = [one]
    else:
        hosts = [r["hostname"] for r in state.servers(base["infra_name"])
                 if state.taskserv(base["infra_name"], r["hostname"], name) is not None]
        if not hosts and infra is not None:
            hosts = [s.hostname for s in infra.servers if name in s.taskservs]
    return [TaskSpec(id=task_id("remove", h, name), op="taskserv.delete",
                     params={**base, "server": h, "taskserv": name}) for h in hosts]


def _cluster_hosts(infra: Infra | None, base: dict[str, Any], name: str,
                   state: StateStore) -> list[str]:
    if infra is not None:
        return list(infra.cluster(name).servers)
    record = state.cluster(base["infra_name"], name)
    return list((record or {}).get("servers", []))


def _cluster_create(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                    state: StateStore) -> list[TaskSpec]:
    assert infra is not None
    name = _param(params, "cluster", required=True)
    hosts = _cluster_hosts(infra, base, name, state)
    tasks: list[TaskSpec] = []
    for h in hosts:
        create = TaskSpec(id=task_id("create", h), op="server.create",
                          params={**base, "server": h})
        tasks.append(create)
        tasks += _install_chain(infra, base, h, infra.taskserv_plan(h), (create.id,))
    tasks.append(TaskSpec(id=task_id("check", name), op="cluster.check",
                          params={**base, "cluster": name},
                          depends_on=tuple(t.id for t in tasks)))
    return tasks


def _cluster_delete(infra: Infra | None, base: dict[str, Any], params: dict[str, Any],
                    state: StateStore) -> list[TaskSpec]:
    name = _param(params, "cluster", required=True)
    hosts = _cluster_hosts(infra, base, name, state)
    tasks = [TaskSpec(id=task_id("delete", h), op="server.delete",
                      params={**base, "server": h}) for h in hosts]
    tasks.append(TaskSpec(id=task_id("forget", name), op="cluster.delete",
                          params={**base, "cluster": name, "servers": hosts},
                          depends_on=tuple(t.id for t in tasks)))
    return tasks


_BUILDERS = {"server.create": _server_create, "server.delete": _server_delete,
             "taskserv.create": _taskserv_create, "taskserv.delete": _taskserv_delete,
             "cluster.create": _cluster_create, "cluster.delete": _cluster_delete}


def resolve_infra_params(spec: WorkflowSpec, base_dir: Path, *, source: str) -> WorkflowSpec:
    """A workflow file's tasks with every relative `infra` param made absolute.

    A relative ref in a file means relative to that file (then the file's
    workspace), as a path in a Terraform or Ansible file does; tasks run in
    the daemon, whose current directory is not the user's. An unknown infra
    is an error here (exit 2), before anything is submitted.
    """
    tasks = []
    for t in spec.tasks:
        ref = t.params.get("infra")
        if isinstance(ref, str) and ref and not Path(ref).expanduser().is_absolute():
            try:
                resolved = resolve_infra(ref, cwd=base_dir)
            except UsageError as e:
                raise ValidationError(f"{source}: task '{t.id}' params.infra: {e.message}",
                                      hint=e.hint) from None
            t = dataclasses.replace(t, params={**t.params, "infra": str(resolved)})
        tasks.append(t)
    return dataclasses.replace(spec, tasks=tuple(tasks))
