"""The task protocol's stdout lines: `PROGRESS: <0-100> [message]` and `RESULT: <json>`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_PROTOCOL_LINE = 1 << 20  # longer lines are logged but not parsed


@dataclass
class LineParser:
    on_progress: Callable[[int, str | None], None]
    result: Any = None
    result_error: str | None = None
    _partial: bytearray = field(default_factory=bytearray)
    _overlong: bool = False

    def feed(self, chunk: bytes) -> None:
        data = bytes(self._partial) + chunk if self._partial else chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            if self._overlong:
                self._overlong = False
                continue
            self._line(line)
        if len(tail) > MAX_PROTOCOL_LINE:
            self._partial = bytearray()
            self._overlong = True
        elif not self._overlong:
            self._partial = bytearray(tail)

    def close(self) -> None:
        if self._partial and not self._overlong:
            self._line(bytes(self._partial))
        self._partial = bytearray()

    def _line(self, raw: bytes) -> None:
        if raw.startswith(b"PROGRESS:"):
            text = raw[9:].decode("utf-8", "replace").strip()
            number, _, message = text.partition(" ")
            try:
                value = float(number)
            except ValueError:
                return
            if value != value:  # NaN
                return
            self.on_progress(int(min(100, max(0, value))), message.strip() or None)
        elif raw.startswith(b"RESULT:"):
            text = raw[7:].decode("utf-8", "replace").strip()
            try:
                self.result = json.loads(text)
                self.result_error = None
            except ValueError as e:
                self.result = None
                self.result_error = f"RESULT line is not valid JSON: {e}"
