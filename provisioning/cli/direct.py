"""Direct mode: a workflow run inside the CLI process, and the trace it leaves.

`run_direct()` runs a spec through the same Engine the daemon hosts, over a
MemoryStore: no queue, no daemon. Its task logs and checkpoints are files
under `<data_dir>/direct/` (the task processes write them), and when the run
ends, finished or interrupted, its final workflow view is written there too,
atomically: `direct/workflows/<id>.json`, with where each task's log is. So
the id a direct run printed is not a dead end: `workflow status|logs|monitor
ID` read it back through `find_direct_run()` (a `DirectRun` answers the
calls those commands make of a Client), with or without a daemon.

A run killed outright (SIGKILL, power loss) leaves its task logs and no
trace. Traces and logs of direct runs untouched for a week are removed by
the next direct run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning.cli.monitor import follow
from provisioning.errors import EXIT_INTERRUPTED, NotFound, ProvisioningError
from provisioning.fsutil import atomic_write_json, ensure_private_dir, read_json
from provisioning.model import valid_workflow_id

if TYPE_CHECKING:
    from provisioning.cli.context import AppContext
    from provisioning.config import Config
    from provisioning.engine.engine import Engine
    from provisioning.model import WorkflowSpec

DIRECT = "direct"  # the mode's name; cli/modes.py decides when it applies
FILES_MAX_AGE_S = 7 * 86400  # traces and task logs of direct runs older than this go
TRACE_SCHEMA = 1
LOG_CHUNK_BYTES = 1024 * 1024  # what one task_log() call returns at most, as the API does


def direct_dir(config: Config) -> Path:
    return config.data_paths().data_dir / "direct"


def trace_file(files_dir: Path, workflow_id: str) -> Path:
    return files_dir / "workflows" / f"{workflow_id}.json"


def run_direct(app: AppContext, spec: WorkflowSpec) -> int:
    """Run `spec` in this process through the same engine the daemon hosts."""
    # lazy: the in-process engine and its store only for a direct run
    from provisioning.engine.engine import Engine
    from provisioning.store.memory import MemoryStore
    from provisioning.transport import close_masters

    cfg = app.config
    files_dir = ensure_private_dir(direct_dir(cfg))
    store = MemoryStore(files_dir=files_dir)
    store.prune_files(FILES_MAX_AGE_S)  # logs of direct runs are kept a week
    _prune_traces(files_dir, FILES_MAX_AGE_S)
    engine = Engine(store, cfg)
    engine.start()
    workflow_id: str | None = None
    try:
        workflow_id = engine.submit(spec)["workflow_id"]
        app.debug(f"running workflow {workflow_id} in-process ({len(spec.tasks)} tasks)")
        code = follow(app, engine, workflow_id, mode=DIRECT, detachable=False)
        if code == EXIT_INTERRUPTED:
            app.log("interrupted: cancelling the in-process workflow")
            engine.cancel(workflow_id)
        return code
    finally:
        engine.shutdown(cfg.executor.kill_grace_seconds)
        close_masters(cfg.data_paths().data_dir)  # SSH masters this run opened
        if workflow_id is not None:
            _keep_trace(app, engine, files_dir, workflow_id)


def _keep_trace(app: AppContext, engine: Engine, files_dir: Path, workflow_id: str) -> None:
    """The run's final view, atomically, for `workflow status|logs ID` later. A
    trace that cannot be written (disk full) is a warning: the run's outcome
    stands."""
    try:
        view = engine.get_workflow(workflow_id)
        logs = {t["key"]: str(engine.task_log_path(t["key"])) for t in view.get("tasks") or []}
        path = trace_file(files_dir, workflow_id)
        ensure_private_dir(path.parent)
        atomic_write_json(path, {"schema": TRACE_SCHEMA, "mode": DIRECT,
                                 "written_at": time.time(), "workflow": view,
                                 "task_logs": logs})
    except (OSError, TypeError, ValueError, ProvisioningError) as e:
        app.log(f"warning: the trace of direct run {workflow_id} was not kept: {e}")


def _prune_traces(files_dir: Path, max_age_s: float) -> None:
    cutoff = time.time() - max_age_s
    try:
        entries = list(os.scandir(files_dir / "workflows"))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.name.endswith(".json") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            continue  # gone or in use: next time


class DirectRun:
    """A finished direct run read back from its trace. It answers the calls that
    `workflow status|logs|monitor` make of a Client: get_workflow, task_log,
    events (none: the run is over)."""

    def __init__(self, workflow_id: str, view: dict[str, Any], task_logs: dict[str, str]):
        self.workflow_id = workflow_id
        self.view = {**view, "mode": DIRECT}
        self.task_logs = task_logs

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        if workflow_id != self.workflow_id:
            raise NotFound(f"no workflow {workflow_id}")
        return self.view

    def task_log(self, key: str, offset: int = 0) -> tuple[str, int]:
        """Captured output of a task from byte `offset` -> (text, next offset)."""
        path = self.task_logs.get(key)
        if path is None:
            raise NotFound(f"direct run {self.workflow_id} has no task {key}")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:  # the task printed nothing (no log file), or pruned
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def events(self, workflow_id: str, after: int = 0, timeout: float = 0) -> list[dict]:
        return []


def find_direct_run(config: Config, workflow_id: str) -> DirectRun | None:
    """The trace of direct run `workflow_id` under this data dir, or None."""
    if not valid_workflow_id(workflow_id):
        return None  # not an id a run prints, and never a path
    path = trace_file(direct_dir(config), workflow_id)
    try:
        doc = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ProvisioningError(f"{path}: unreadable trace of a direct run: {e}",
                                hint="remove the file; the run's task logs stay") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("workflow"), dict):
        raise ProvisioningError(f"{path}: not the trace of a direct run",
                                hint="remove the file; the run's task logs stay")
    logs = doc.get("task_logs") if isinstance(doc.get("task_logs"), dict) else {}
    return DirectRun(workflow_id, doc["workflow"], {str(k): str(v) for k, v in logs.items()})
