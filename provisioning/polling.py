"""Waiting for a condition outside our control, with a deadline and backoff.

For what we cannot be woken by (another process's exit, a port that starts
answering, a lock another process holds): the condition is checked at once,
then after delays that double from ``first_delay`` up to ``max_delay``, and
one last time at the deadline. Never a fixed sleep before the first check
(PITFALLS: fixed sleeps before connecting are flaky), never a busy loop.
Inside the engine, waits are on Conditions and selectors instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, *, first_delay: float = 0.01,
               max_delay: float = 0.2) -> T | None:
    """Call ``condition`` until it returns something truthy, and return that;
    None if it is still falsy at the deadline (``timeout`` seconds from now).

    It is always called at least once, and once more at the deadline: a
    timeout of 0 is a single look.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay = first_delay
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_delay)
