"""Secrets out of every log, event, record and `config show` (DESIGN.md 11).

Known secret values are:
- the values of environment variables that are secret by name: the name
  holds TOKEN, PASSWORD, PASSWD, PASSPHRASE, SECRET, PRIVATE_KEY, API_KEY or
  CREDENTIAL (AWS_SECRET_ACCESS_KEY, UPCLOUD_PASSWORD, GITHUB_TOKEN,
  PROVISIONING_TASK_TOKEN...), unless it ends in _FILE, _PATH or _DIR (where
  a secret is kept, e.g. AWS_SHARED_CREDENTIALS_FILE), taken from a task's
  environment and the daemon's own (as of its first task);
- what a task declares on a stdout line `SECRET: <value>` (the task protocol,
  README "Secrets"): redacted from that line on; the line itself is logged
  as `SECRET: ***`.

Values shorter than MIN_LEN characters are not redacted (a "1" would turn every
digit of a log into ***). Each occurrence becomes `***`. A secret is matched
within one line: a value holding a newline is matched line by line.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MIN_LEN = 4
MASK = "***"
SECRET_WORDS = ("TOKEN", "PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "PRIVATE_KEY", "API_KEY",
                "CREDENTIAL")
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)")
DECLARE = b"SECRET:"
MAX_HELD = 1 << 20  # an unterminated line longer than this is let through (redacted) in pieces


# where a secret is kept, not the secret (AWS_SHARED_CREDENTIALS_FILE is a path)
LOCATION_SUFFIX = ("_FILE", "_PATH", "_DIR")


@functools.lru_cache(maxsize=4096)  # the same few dozen names for every task
def is_secret_name(name: str) -> bool:
    upper = name.upper()  # (substring tests: ~20x faster than one regex, once per variable)
    return any(w in upper for w in SECRET_WORDS) and not upper.endswith(LOCATION_SUFFIX)


def secret_values(*envs: Mapping[str, str]) -> set[str]:
    """The values of the secret-by-name variables of these environments."""
    return {v for env in envs for k, v in env.items()
            if is_secret_name(k) and isinstance(v, str) and len(v) >= MIN_LEN}


_process_secrets: frozenset[str] | None = None


def process_secrets() -> frozenset[str]:
    """The secret-by-name values of this process's environment, as of the first call
    (a daemon's environment is fixed; reading os.environ costs ~50 us a task)."""
    global _process_secrets
    if _process_secrets is None:
        _process_secrets = frozenset(secret_values(os.environ))
    return _process_secrets


def redact_text(text: str, values: Iterable[str]) -> str:
    for v in sorted(values, key=len, reverse=True):
        if len(v) >= MIN_LEN and v in text:
            text = text.replace(v, MASK)
    return text


def redact_config(value: Any, key: str = "") -> Any:
    """A config tree to show: secret-by-name keys masked, URL passwords masked."""
    if isinstance(value, dict):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v, key) for v in value]
    if key and is_secret_name(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return URL_PASSWORD.sub(lambda m: m.group("head") + MASK, value)
    return value


class StreamRedactor:
    """Redacts a task's output stream, line by line (a secret split between two
    reads is still found); learns `SECRET: <value>` declarations as they come."""

    def __init__(self, values: Iterable[str] = ()):
        self._values: list[bytes] = []
        self._partial = b""
        for v in values:
            self.add(v)

    def add(self, value: str | bytes) -> None:
        b = value.encode() if isinstance(value, str) else value
        if len(b) >= MIN_LEN and b not in self._values:
            # a new list, bound at once: redact() may read it from another thread
            self._values = sorted([*self._values, b], key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Text from elsewhere about this task (a progress message it POSTed)."""
        for v in self._values:
            s = v.decode(errors="replace")
            if s in text:
                text = text.replace(s, MASK)
        return text

    def feed(self, chunk: bytes) -> bytes:
        """The redacted complete lines so far; an unterminated tail is held back."""
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) <= MAX_HELD:
            self._partial = data
            return b""
        if end == 0:
            end = len(data)
        self._partial = data[end:]
        return self._lines(data[:end])

    def flush(self) -> bytes:
        data, self._partial = self._partial, b""
        return self._lines(data) if data else b""

    def _lines(self, data: bytes) -> bytes:
        if DECLARE in data:
            out = []
            for line in data.splitlines(keepends=True):
                if line.startswith(DECLARE):
                    self.add(line[len(DECLARE):].strip())
                    line = DECLARE + b" " + MASK.encode() + (b"\n" if line.endswith(b"\n")
                                                             else b"")
                out.append(line)
            data = b"".join(out)
        for v in self._values:
            if v in data:
                data = data.replace(v, MASK.encode())
        return data
