"""Per-workflow event logs: ``<data_dir>/events/<workflow_id>.jsonl``.

Append-only JSON lines, never fsynced: events are derived from the records
(which are), so a power loss may drop the newest events, never a record.
A torn last line (a crash mid-write) is skipped on read, and the next append
of a restarted daemon starts on a fresh line; a failed append (disk full)
cuts the file back to its old size (fileio.append_line).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from provisioning.store import checks
from provisioning.store.fileio import append_line, storage_errors

log = logging.getLogger("provisioning.store")
OPEN_LOGS = 32  # event logs kept open (see EventLogs.append)


class EventLogs:
    def __init__(self, events_dir: Path):
        self.dir = events_dir
        self._fds: dict[str, int] = {}  # workflow id -> open fd, LRU order
        self._clean: set[str] = set()  # logs this process appended to: their tail is whole
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._fds)

    def path(self, workflow_id: str) -> Path:
        return self.dir / f"{checks.check_id(workflow_id, 'workflow id')}.jsonl"

    def append(self, workflow_id: str, events: list[dict[str, Any]]) -> None:
        """JSON lines, one write(): a process crash (kill -9) loses nothing that
        write() returned for.

        The file stays open between appends (at most OPEN_LOGS workflows, the
        least recently used one is closed first): opening it with O_CREAT
        took the events directory's lock and cost ~0.3 ms of kernel CPU per
        event under the daemon's load, twice per task."""
        path = self.path(workflow_id)
        line = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
        with self._lock, storage_errors(self.dir):
            fd = self._fds.pop(workflow_id, None)
            if fd is None:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                append_line(fd, path, line, repair_tail=workflow_id not in self._clean)
            except BaseException:
                os.close(fd)
                raise
            self._clean.add(workflow_id)
            self._fds[workflow_id] = fd  # most recently used last
            while len(self._fds) > OPEN_LOGS:
                os.close(self._fds.pop(next(iter(self._fds))))

    def load(self, workflow_id: str) -> list[dict[str, Any]]:
        """The events of a workflow in order; a torn or corrupt line is skipped."""
        path = self.path(workflow_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        events = []
        lines = data.split(b"\n")
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                if n < len(lines):  # not the torn tail of a crash: worth a line in the log
                    log.warning("skipped corrupt line %d of %s", n, path)
                continue
            events.append(event)
        return events

    def close(self) -> None:
        """Close the logs kept open (also done when this object is collected)."""
        with self._lock:
            _close_all(self._fds)


def _close_all(fds: dict[str, int]) -> None:
    while fds:
        try:
            os.close(fds.popitem()[1])
        except OSError:
            pass
