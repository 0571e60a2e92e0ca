"""The launcher: from a claimed task record to a TaskProcess ready to run.

It resolves the task's op to an argv (the op registry), and builds what the
task protocol gives a process (DESIGN.md 6): params on stdin, a cleaned
environment with the PROVISIONING_* variables, its log and checkpoint
files, its timeout. ``shell.run`` with valid params is spawned as its own
argv (same contract as ops/builtin/shell_run.py, without an interpreter in
between). Running the process is the scheduler's (a task thread's) job.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioning.engine.executor import TaskProcess, TaskRun, clean_env
from provisioning.engine.zygotes import Zygotes
from provisioning.model import Record
from provisioning.model.storage import Store
from provisioning.ops.providers import credential_env
from provisioning.ops.registry import OpRegistry


class TaskLauncher:
    def __init__(self, registry: OpRegistry, store: Store, *, data_dir: Path,
                 endpoint: str | None, task_timeout_s: float, kill_grace_s: float):
        """``store`` only says where each task's log and checkpoint files are."""
        self.registry = registry
        self.store = store
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.task_timeout_s = task_timeout_s
        self.kill_grace_s = kill_grace_s
        self._base_env: dict[str, str] | None = None
        self.zygotes: Zygotes | None = None  # Python ops fork from them once the engine has them

    def capture_env(self) -> None:
        """Take the inherited part of every task's environment now (once per
        engine start, not once per task)."""
        self._base_env = clean_env({})

    def base_env(self) -> dict[str, str]:
        """The inherited part of every task's environment."""
        return self._base_env if self._base_env is not None else clean_env({})

    def resolve(self, op: str) -> list[str]:
        """The op's argv; ValidationError if no such op (any more)."""
        return self.registry.resolve(op)

    def prepare(self, task: Record, argv: list[str],
                on_progress: Callable[[int, str | None], None]) -> tuple[TaskProcess, str]:
        """The process of one attempt of ``task`` (not started) and the task's
        own token (good only for its progress reports while it runs)."""
        workflow_id, task_id = task["workflow_id"], task["id"]
        task_token = secrets.token_urlsafe(32)
        env = {"PROVISIONING_TASK_ID": task["key"], "PROVISIONING_WORKFLOW_ID": workflow_id,
               "PROVISIONING_TASK_TOKEN": task_token,
               "PROVISIONING_LIB": os.pathsep.join(str(d) for d in self.registry.lib_dirs),
               "PROVISIONING_CHECKPOINT": str(self.store.checkpoint_path(workflow_id, task_id)),
               "PROVISIONING_STORAGE_DATA_DIR": str(self.data_dir)}
        if self.endpoint:
            env["PROVISIONING_ENDPOINT"] = self.endpoint
        params = task.get("params") or {}
        base = self.base_env()
        # a cloud provider's credentials, for its own tasks only (ops/providers CREDENTIAL_ENV)
        credentials = credential_env(task["op"], params, self.data_dir)
        env.update(credentials)
        run = TaskRun(key=task["key"], argv=argv, params=params, env={**base, **env},
                      log_path=self.store.task_log_path(workflow_id, task_id),
                      attempt=task["attempts"],
                      timeout_s=task.get("timeout_s") or self.task_timeout_s,
                      kill_grace_s=self.kill_grace_s)
        if task["op"] == "shell.run" and _valid_shell_run(params):
            # Fast path with the same contract as builtin/shell_run.py: the argv is the
            # task's process itself (no interpreter start), params env under ours.
            run.argv, run.cwd, run.send_params = list(params["argv"]), params.get("cwd"), False
            run.env = {**base, **(params.get("env") or {}), **env}
        zygote = self.zygotes.for_op(task["op"]) if self.zygotes is not None else None
        return TaskProcess(run, on_progress=on_progress, zygote=zygote), task_token


def _valid_shell_run(params: dict[str, Any]) -> bool:
    argv, cwd, env = params.get("argv"), params.get("cwd"), params.get("env")
    return (isinstance(argv, list) and bool(argv) and all(isinstance(a, str) for a in argv)
            and (cwd is None or isinstance(cwd, str))
            and (env is None or (isinstance(env, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()))))
