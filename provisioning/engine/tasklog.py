"""A task attempt's log file, made at the first write.

A task that prints nothing costs no file (creating one was ~15% of the
per-task cost of a trivial task on ext4); its exit is in its record all
the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class TaskLog:
    """A task attempt's log, appended to; the file is opened (and the
    attempt's header written) at the first write."""

    def __init__(self, path: Path, header: Callable[[], str]):
        self.path = path
        self.header = header  # made at the first write: most tasks never print
        self.note = ""  # appended to the header (how the process was started)
        self.fd: int | None = None

    @property
    def opened(self) -> bool:
        return self.fd is not None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _write_all(self.fd, (self.header() + self.note + "\n").encode("utf-8", "replace"))
        _write_all(self.fd, data)

    def line(self, text: str) -> None:
        self.write((text + "\n").encode("utf-8", "replace"))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
