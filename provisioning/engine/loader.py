"""Workflow files and payloads -> a validated WorkflowSpec (DESIGN.md 6).

Formats: TOML, JSON, and Nickel (`.ncl`, evaluated by provisioning.nickel,
which also applies the shipped contracts). Everything is checked before
anything runs, and every problem is a ValidationError (exit 2) that names
the source, the task and the field.
Validation is linear in tasks + edges and never recurses, so a 10,000-task
workflow is checked in well under a second.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning.errors import UsageError, ValidationError
from provisioning.model import PRIORITIES, TASK_ID_RE, TASK_ID_RULE, TaskSpec, WorkflowSpec

if TYPE_CHECKING:
    from provisioning.ops.registry import OpRegistry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WORKFLOW_KEYS = ("name", "max_parallel", "kind", "description")
TASK_KEYS = ("id", "op", "params", "depends_on", "priority", "retries", "timeout_s")
MAX_RETRIES = 100
MAX_ERRORS_SHOWN = 20


def load_workflow_file(path: str | Path, *, registry: OpRegistry | None = None) -> WorkflowSpec:
    """Read and validate a workflow file (.toml, .json, .ncl)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: workflow file not found")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        data = _read_toml(p)
    elif suffix == ".json":
        data = _read_json(p)
    elif suffix == ".ncl":
        from provisioning import nickel  # lazy: start-up of commands without .ncl files

        # after a contract error, the same checks list every problem of the file
        data = nickel.export(p, validate=lambda d: parse_workflow(
            _with_default_name(d, p), source=str(p), registry=registry))
    else:
        raise UsageError(f"{p}: unsupported workflow file type '{p.suffix}'",
                         hint="use .toml, .json or .ncl")
    return parse_workflow(_with_default_name(data, p), source=str(p), registry=registry)


def _with_default_name(data: Any, p: Path) -> Any:
    if isinstance(data, dict) and isinstance(data.get("workflow"), dict):
        data["workflow"].setdefault("name", p.stem)
    elif isinstance(data, dict) and "workflow" not in data:
        data["workflow"] = {"name": p.stem}
    return data


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read workflow file: {e}") from e


def _read_toml(p: Path) -> Any:
    text = _read_text(p)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(f"{p}: invalid TOML: {e}") from e


def _read_json(p: Path) -> Any:
    text = _read_text(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValidationError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Errors:
    """Collects problems so one run reports them all (up to a limit)."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_ERRORS_SHOWN]
        more = len(self.items) - len(shown)
        lines = [f"{self.source}: {e}" for e in shown]
        if more:
            lines.append(f"{self.source}: ... and {more} more")
        head = lines[0] if len(lines) == 1 else f"{len(self.items)} problems:\n  " + "\n  ".join(
            lines)
        raise ValidationError(head)


def parse_workflow(data: Any, *, source: str = "workflow",
                   registry: OpRegistry | None = None) -> WorkflowSpec:
    """Validate a workflow document (DESIGN.md 6 format, or WorkflowSpec.to_dict())."""
    errors = _Errors(source)
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: a workflow must be a table/object with [workflow] "
                              f"and [[tasks]], got {_type_name(data)}")
    for key in data:
        if key not in ("workflow", "tasks"):
            errors.add(f"top-level key '{key}'", "unknown field (known: workflow, tasks)")
    head = data.get("workflow", {})
    name, max_parallel, kind = "workflow", None, "workflow"
    if not isinstance(head, dict):
        errors.add("[workflow]", f"must be a table, got {_type_name(head)}")
    else:
        for key in head:
            if key not in WORKFLOW_KEYS:
                errors.add(f"[workflow] field '{key}'",
                           f"unknown field (known: {', '.join(WORKFLOW_KEYS)})")
        name = head.get("name", name)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            errors.add("[workflow] field 'name'", "must be a non-empty string (at most 200 "
                       f"characters), got {_type_name(name)}")
        max_parallel = head.get("max_parallel")
        if max_parallel is not None and (not _is_int(max_parallel) or max_parallel < 1):
            errors.add("[workflow] field 'max_parallel'",
                       f"must be an integer >= 1, got {json.dumps(max_parallel, default=str)}")
        kind = head.get("kind", kind)
        if not isinstance(kind, str) or not kind or len(kind) > 64:
            errors.add("[workflow] field 'kind'", f"must be a short string, got {_type_name(kind)}")
        description = head.get("description")
        if description is not None and not isinstance(description, str):
            errors.add("[workflow] field 'description'",
                       f"must be a string, got {_type_name(description)}")

    raw_tasks = data.get("tasks")
    if raw_tasks is None or (isinstance(raw_tasks, list) and not raw_tasks):
        errors.add("tasks", "empty workflow: define at least one [[tasks]] entry")
        errors.raise_if_any()
    if not isinstance(raw_tasks, list):
        errors.add("tasks", f"must be a list of tables ([[tasks]]), got {_type_name(raw_tasks)}")
        errors.raise_if_any()

    # Every kind of problem in one report (fields, then graph, then ops), as an
    # operator fixing a file expects; checks of the graph and the ops look at
    # the tasks whose fields are fine, and know every id given.
    tasks: list[TaskSpec] = []
    ids: list[tuple[int, str]] = []  # (index, id) of every valid-looking id given
    for index, raw in enumerate(raw_tasks):
        spec = _parse_task(raw, index, errors)
        if spec is not None:
            tasks.append(spec)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) \
                and TASK_ID_RE.match(raw["id"]):
            ids.append((index, raw["id"]))
    fields_ok = not errors.items
    _check_graph(tasks, ids, errors, find_cycle=fields_ok)
    _check_ops(tasks, registry, errors)
    errors.raise_if_any()
    return WorkflowSpec(name=name, tasks=tuple(tasks), max_parallel=max_parallel, kind=kind)


def _parse_task(raw: Any, index: int, errors: _Errors) -> TaskSpec | None:
    where = f"task #{index + 1}"
    if not isinstance(raw, dict):
        errors.add(where, f"must be a table, got {_type_name(raw)}")
        return None
    task_id = raw.get("id")
    if isinstance(task_id, str) and TASK_ID_RE.match(task_id):
        where = f"task '{task_id}'"
    elif task_id is None:
        errors.add(f"{where} field 'id'", "missing (every task needs an id)")
        return None
    else:
        errors.add(f"{where} field 'id'",
                   f"{json.dumps(task_id, default=str)} is not a valid task id: {TASK_ID_RULE}")
        return None
    before = len(errors.items)
    for key in raw:
        if key not in TASK_KEYS:
            errors.add(f"{where} field '{key}'", f"unknown field (known: {', '.join(TASK_KEYS)})")
    op = raw.get("op")
    if not isinstance(op, str) or not op:
        errors.add(f"{where} field 'op'", f"must be an op name string, got {_type_name(op)}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        errors.add(f"{where} field 'params'", f"must be a table, got {_type_name(params)}")
    depends_on = raw.get("depends_on", [])
    if isinstance(depends_on, str):
        depends_on = [depends_on]
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        errors.add(f"{where} field 'depends_on'",
                   f"must be a list of task ids, got {_type_name(depends_on)}")
        depends_on = []
    priority = raw.get("priority", "normal")
    if priority not in PRIORITIES:
        errors.add(f"{where} field 'priority'",
                   f"must be one of {', '.join(PRIORITIES)}, got "
                   f"{json.dumps(priority, default=str)}")
    retries = raw.get("retries", 0)
    if not _is_int(retries) or not 0 <= retries <= MAX_RETRIES:
        errors.add(f"{where} field 'retries'", f"must be an integer from 0 to {MAX_RETRIES}, got "
                   f"{json.dumps(retries, default=str)}")
    timeout_s = raw.get("timeout_s")
    if timeout_s is not None and (not _is_int(timeout_s) or timeout_s < 1):
        errors.add(f"{where} field 'timeout_s'",
                   f"must be a whole number of seconds >= 1, got "
                   f"{json.dumps(timeout_s, default=str)}")
    if len(errors.items) != before:
        return None
    return TaskSpec(id=task_id, op=op, params=params, depends_on=tuple(dict.fromkeys(depends_on)),
                    priority=priority, retries=retries, timeout_s=timeout_s)


def _check_graph(tasks: list[TaskSpec], all_ids: list[tuple[int, str]], errors: _Errors, *,
                 find_cycle: bool = True) -> None:
    """Duplicate ids, missing dependencies, cycles (iterative Kahn; no recursion).
    ``all_ids``: (index, id) of every id given, also of tasks whose fields are
    wrong (so a dependency on one of those is not reported as missing)."""
    first: dict[str, int] = {}
    for i, tid in all_ids:
        if tid in first:
            errors.add(f"task '{tid}' field 'id'",
                       f"duplicate id (tasks #{first[tid] + 1} and #{i + 1})")
        else:
            first[tid] = i
    for t in tasks:
        for dep in t.depends_on:
            if dep not in first:
                errors.add(f"task '{t.id}' field 'depends_on'",
                           f"depends on '{dep}', which is not a task of this workflow")
    if errors.items or not find_cycle:
        return
    remaining = {t.id: len(t.depends_on) for t in tasks}
    dependents: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for dep in t.depends_on:
            dependents[dep].append(t.id)
    ready = deque(tid for tid, n in remaining.items() if n == 0)
    done = 0
    while ready:
        tid = ready.popleft()
        done += 1
        for child in dependents[tid]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if done == len(tasks):
        return
    cycle = _find_cycle({t.id: t.depends_on for t in tasks}, remaining)
    errors.add(f"task '{cycle[0]}' field 'depends_on'",
               f"dependency cycle: {' -> '.join(cycle)} (each task depends on the next)")


def _find_cycle(deps: dict[str, tuple[str, ...]], remaining: dict[str, int]) -> list[str]:
    """One cycle among the tasks Kahn could not order: each has an unordered dependency,
    so walking those dependencies must revisit a task."""
    stuck = {tid for tid, n in remaining.items() if n > 0}
    start = min(stuck)  # deterministic messages
    position: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in stuck)
    cycle = path[position[node]:]
    return [*cycle, node]


def _check_ops(tasks: list[TaskSpec], registry: OpRegistry | None, errors: _Errors) -> None:
    first_use: dict[str, str] = {}
    for t in tasks:
        first_use.setdefault(t.op, t.id)
        if t.op == "shell.run":
            _check_shell_run(t, errors)
    if registry is None:
        return
    for op, task_id in first_use.items():
        try:
            registry.resolve(op)
        except ValidationError as e:
            errors.add(f"task '{task_id}' field 'op'", str(e))


def _check_shell_run(t: TaskSpec, errors: _Errors) -> None:
    where = f"task '{t.id}' field 'params'"
    argv = t.params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        errors.add(where, 'shell.run needs "argv", a non-empty list of strings, e.g. '
                   'params = { argv = ["echo", "hi"] }')
    cwd = t.params.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        errors.add(where, f'shell.run "cwd" must be a string, got {_type_name(cwd)}')
    env = t.params.get("env")
    if env is not None and not (isinstance(env, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        errors.add(where, 'shell.run "env" must be a table of string values')
    for key in t.params:
        if key not in ("argv", "cwd", "env"):
            errors.add(where, f"shell.run: unknown param '{key}' (known: argv, cwd, env)")
