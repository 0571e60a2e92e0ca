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
        from provisioning.selfexec import package_parent_dir

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent_dir(), os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-c", "from provisioning.store.writer import main; main()",
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
                _write_frame(self._proc.stdin, request)
                reply = _read_frame(self._proc.stdout)
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


def _write_frame(stream, data: bytes) -> None:
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream) -> bytes | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def main() -> None:
    """The child: write each batch it is sent, reply, exit at end of input."""
    import signal

    from provisioning.paths import DataPaths
    from provisioning.store.jsonfile import JsonFileStore

    _die_with_parent(int(sys.argv[2]))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s")
    data_dir = Path(sys.argv[1])
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    with locks.acquire(writer_lock_path(data_dir), timeout=START_TIMEOUT):
        store = JsonFileStore(DataPaths(data_dir))
        try:
            while True:
                frame = _read_frame(inp)
                if frame is None:
                    return
                _write_frame(out, json.dumps(_commit(store, json.loads(frame))).encode())
        finally:
            store.close()


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL),
                                                    0, 0, 0)
        except (OSError, AttributeError) as e:  # then: exit at end of input only
            log.warning("record writer: cannot follow the daemon's death (%s)", e)
    if os.getppid() != parent_pid:  # the daemon died before that took effect
        os._exit(0)


def _commit(store, request: dict[str, Any]) -> dict[str, Any]:
    try:
        store.commit_batch(adds=[(w, t) for w, t in request["adds"]], tasks=request["tasks"],
                           workflows=request["workflows"], initial_tasks=request["initial"],
                           events=[(w, e) for w, e in request["events"]])
    except StorageFull as e:
        return {"error": "full", "message": e.message, "hint": e.hint}
    except OSError as e:
        return {"error": "os", "errno": e.errno, "message": str(e)}
    except Exception as e:  # reported to the daemon, which logs it and retries the batch
        return {"error": "other", "message": f"{type(e).__name__}: {e}"}
    return {"ok": True}
