"""The task protocol, from the op's side (DESIGN.md 6).

An op script reads its params as JSON on stdin, prints `PROGRESS: n msg`
lines, prints `RESULT: <json>` last, and exits 0 (success) or 1 (failure).
PROVISIONING_CHECKPOINT names a file where it may record finished steps, so
a re-run after a crash or a `workflow retry` skips them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.fsutil import atomic_write_json


class OpContext:
    def __init__(self, params: dict[str, Any]):
        self.params = params
        self._checkpoint_file = os.environ.get("PROVISIONING_CHECKPOINT") or None
        self._done: list[str] = []
        if self._checkpoint_file:
            try:
                with open(self._checkpoint_file, "rb") as f:
                    data = json.loads(f.read() or b"{}")
                self._done = list(data.get("done", []))
            except (OSError, ValueError, AttributeError):
                self._done = []

    def progress(self, percent: int, message: str = "") -> None:
        print(f"PROGRESS: {max(0, min(100, int(percent)))} {message}".rstrip(), flush=True)

    def log(self, message: str) -> None:
        print(message, flush=True)

    def done(self, step: str) -> bool:
        """Was this step finished by an earlier run of the same task?"""
        return step in self._done

    def mark_done(self, step: str) -> None:
        if step in self._done:
            return
        self._done.append(step)
        if self._checkpoint_file:
            atomic_write_json(self._checkpoint_file, {"done": self._done})


def read_params() -> dict[str, Any]:
    raw = sys.stdin.read() if not sys.stdin.isatty() else ""
    if not raw.strip():
        return {}
    params = json.loads(raw)
    if not isinstance(params, dict):
        raise ProvisioningError("params must be a JSON object")
    return params


def run_op(handler: Callable[[OpContext], dict[str, Any]]) -> None:
    """Run one op: params in, RESULT out, exit code from the outcome."""
    try:
        ctx = OpContext(read_params())
        result = handler(ctx)
    except ProvisioningError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        print("RESULT: " + json.dumps({"error": e.message}), flush=True)
        sys.exit(1)
    except ValueError as e:  # malformed params JSON
        print(f"error: bad params: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("RESULT: " + json.dumps(result, default=str), flush=True)
    sys.exit(0)


def require(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise ProvisioningError(f"param '{key}' is required (a string)")
    return value
