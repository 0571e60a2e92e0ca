"""The daemon's record writes, in a child process of their own.

Why: a group commit (JsonFileStore.commit_batch) is half a dozen system
calls per record, and each one releases the GIL and then waits to take it
back from the daemon's other threads (task threads, HTTP threads, the
scheduler). Measured under load, the committer spent ~1.6 ms per record, 4x
its cost alone, and a workflow's end waited for its last batch. The same
calls in a child process run on the other core with a GIL of their own: 500
trivial tasks ran ~25% faster and the daemon's kernel time fell ~3x.

Contract: ``WriterProcess.commit_batch`` is ``JsonFileStore.commit_batch``
(same arguments, the same durability when it returns, the same errors:
StorageFull for a full disk, OSError otherwise), because the child runs
exactly that method on its own JsonFileStore. Frames on the child's
stdin/stdout: a 4-byte big-endian length, then JSON. Request
``{"adds": [[workflow, tasks], ...], "tasks": [...], "workflows": [...],
"initial": {workflow_id: [task_id, ...]}, "events": [[workflow_id, event], ...]}``;
reply
``{"ok": true}`` or ``{"error": "full"|"os"|"other", ...}``.

The child's side is store/writer_child.py (it imports JsonFileStore, which
imports this module: two modules, so no import cycle).

Lifetime: the child exits at the end of its stdin, when the daemon closes
it. It ignores SIGTERM and SIGINT (a Ctrl-C or `systemctl stop` reaches the
whole group; the daemon still has batches to write while it drains). If the
daemon dies, the child dies with it at once (Linux: PR_SET_PDEATHSIG; it is
set by the child, which then checks it still has its parent), in the middle
of a batch if need be, exactly as an in-process write would: a dead daemon
writes nothing more, so what a kill -9 leaves is final (elsewhere: the child
finishes its batch and exits at end of input). It also holds the flock on
``<data_dir>/writer.lock`` for its whole life, and ``wait_for_old_writer``
takes that lock before the daemon reads the queue: a new daemon never reads
records while the writer of a dead one still writes them. If the child
dies, the daemon logs it and writes in-process from then on. (PDEATHSIG
follows the thread that started the child: the store starts it in load(),
which the daemon calls from its main thread.)
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from provisioning import locks
from provisioning.errors import StorageFull
from provisioning.selfexec import package_parent_dir

log = logging.getLogger("provisioning.store")

Record = dict[str, Any]
_LEN = struct.Struct(">I")
START_TIMEOUT = 30.0  # seconds to wait for an old writer's lock


def writer_lock_path(data_dir: Path) -> Path:
    return data_dir / "writer.lock"


def wait_for_old_writer(data_dir: Path, timeout: float = START_TIMEOUT) -> None:
    """Return once no writer process of an earlier daemon is left writing."""
    with locks.acquire(writer_lock_path(data_dir), timeout=timeout):
        pass


class WriterDied(RuntimeError):
    """The child is gone (killed, crashed): write in-process instead."""


class WriterProcess:
    def __init__(self, data_dir: Path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent_dir(), os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-c", "from provisioning.store.writer_child import main; main()",
             str(data_dir), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self._lock = threading.Lock()  # one batch at a time

    @property
    def pid(self) -> int:
        return self._proc.pid

    def commit_batch(self, *, adds: list[tuple[Record, list[Record]]] = (),
                     tasks: list[Record] = (), workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, dict[str, Any]]] = ()) -> None:
        request = json.dumps({"adds": [[w, t] for w, t in adds], "tasks": list(tasks),
                              "workflows": list(workflows),
                              "initial": initial_tasks or {},
                              "events": [[w, e] for w, e in events]},
                             separators=(",", ":")).encode()
        with self._lock:
            try:
                write_frame(self._proc.stdin, request)
                reply = read_frame(self._proc.stdout)
            except (OSError, ValueError) as e:
                raise WriterDied(f"record writer process: {e}") from e
            if reply is None:
                raise WriterDied(f"record writer process {self._proc.pid} exited "
                                 f"({self._proc.poll()})")
        answer = json.loads(reply)
        kind = answer.get("error")
        if kind is None:
            return
        if kind == "full":
            raise StorageFull(answer.get("message", "no space left"), hint=answer.get("hint"))
        if kind == "os":
            raise OSError(answer.get("errno"), answer.get("message"))
        raise RuntimeError(answer.get("message", "record writer error"))

    def close(self, timeout: float = 30.0) -> None:
        """End of input: the child finishes and exits; waited for."""
        with self._lock:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("record writer process %s did not exit; killing it", self._proc.pid)
                self._proc.kill()
                self._proc.wait()
            self._proc.stdout.close()


def write_frame(stream, data: bytes) -> None:
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def read_frame(stream) -> bytes | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data
