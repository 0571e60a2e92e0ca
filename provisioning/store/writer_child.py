"""The record writer child process (store/writer.py says why and how).

Run as ``python -c "from provisioning.store.writer_child import main; main()"
DATA_DIR DAEMON_PID`` by WriterProcess: it writes each batch it reads on
stdin with its own JsonFileStore and answers on stdout.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from provisioning import locks, procinfo
from provisioning.errors import StorageFull
from provisioning.paths import DataPaths
from provisioning.store.jsonfile import JsonFileStore
from provisioning.store.writer import START_TIMEOUT, read_frame, write_frame, writer_lock_path

log = logging.getLogger("provisioning.store")


def main() -> None:
    """The child: write each batch it is sent, reply, exit at end of input."""
    if not procinfo.die_with_parent(int(sys.argv[2])):  # then: exit at end of input only
        log.warning("record writer: cannot follow the daemon's death")
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
                frame = read_frame(inp)
                if frame is None:
                    return
                write_frame(out, json.dumps(commit(store, json.loads(frame))).encode())
        finally:
            store.close()


def commit(store: JsonFileStore, request: dict[str, Any]) -> dict[str, Any]:
    """One request: the batch written by ``store``, and the reply that says how it went."""
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
