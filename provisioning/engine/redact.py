"""Known secret values blanked out of a task's captured output (DESIGN.md 11).

The launcher gives a task the secrets it passes to it (a cloud provider's
credential variables, ops/providers CREDENTIAL_ENV); every byte the task
prints goes through a Redactor before it reaches its log file or the line
parser (progress messages, RESULT), so a value printed by mistake lands in
no log, record or event. A secret split across two reads is still found:
the last len(longest)-1 bytes are held back until more comes or the output
ends (`finish`). With no secrets it passes data through untouched.
"""

from __future__ import annotations

MASK = b"***"
MIN_SECRET = 6  # shorter values would blank out ordinary words


class Redactor:
    def __init__(self, secrets: tuple[str, ...] | list[str] = ()):
        values = {s.encode("utf-8") for s in secrets if len(s) >= MIN_SECRET}
        self.secrets = sorted(values, key=len, reverse=True)
        self.keep = max((len(s) for s in self.secrets), default=1) - 1
        self.tail = b""

    def _mask(self, data: bytes) -> bytes:
        for s in self.secrets:
            data = data.replace(s, MASK)
        return data

    def feed(self, chunk: bytes) -> bytes:
        """What can be written now; a possible start of a secret is kept back."""
        if not self.secrets:
            return chunk
        data = self._mask(self.tail + chunk)
        cut = max(0, len(data) - self.keep)
        out, self.tail = data[:cut], data[cut:]
        return out

    def finish(self) -> bytes:
        data, self.tail = self._mask(self.tail), b""
        return data
