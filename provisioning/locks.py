"""Cross-process locks on files: flock-based ``filelock.FileLock`` only.

Rules (PITFALLS.md): never SoftFileLock (a crashed holder leaves it stuck, and
it had its own CVE); always a finite timeout; one lock object per path per
process (tox-dev/filelock#315, #230), so objects are cached here; lock files
are 0600. Every lock of the package (the queue's, the daemon's singleton and
spawn locks, the business logic's state locks) comes from this module.
"""

from __future__ import annotations

import inspect
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning.errors import ProvisioningError

if TYPE_CHECKING:
    from filelock import FileLock

DEFAULT_TIMEOUT = 30.0  # seconds; our lock holders hold them for milliseconds

_cache: dict[str, FileLock] = {}
_cache_guard = threading.Lock()


class LockBusy(ProvisioningError):
    """A lock could not be taken within its timeout."""


def file_lock(path: str | os.PathLike[str]) -> FileLock:
    """The process-wide FileLock object for ``path`` (created on first use).

    thread_local=True (the default) keeps threads of one process excluding
    each other too: each thread flocks its own descriptor.
    """
    key = os.path.abspath(path)
    with _cache_guard:
        lock = _cache.get(key)
        if lock is None:
            # lazy: filelock imports asyncio (~20 ms); the CLI's fast path locks nothing
            import filelock

            kwargs: dict[str, object] = {"mode": 0o600}
            if _accepts_fallback_to_soft(filelock.FileLock):
                kwargs["fallback_to_soft"] = False
            lock = filelock.FileLock(key, **kwargs)
            _cache[key] = lock
        return lock


def _accepts_fallback_to_soft(cls: type) -> bool:
    """filelock >= 3.21 may fall back to a soft lock; older ones never do."""
    try:
        return "fallback_to_soft" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def acquire(path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT):
    """Context manager holding the lock on ``path``; LockBusy after ``timeout`` s."""
    import filelock  # lazy: see file_lock

    if timeout is None or timeout < 0:
        raise ValueError("a lock timeout must be finite")
    lock = file_lock(path)
    try:
        return lock.acquire(timeout=timeout)
    except filelock.Timeout as e:
        raise LockBusy(
            f"could not lock {Path(path)} within {timeout:g}s: another process holds it",
            hint="retry; if it persists, look for a hung provisioning process") from e


def try_acquire(path: str | os.PathLike[str]) -> FileLock | None:
    """Take the lock on ``path`` if it is free at once (the held lock object, to
    release or keep for life), else None."""
    import filelock  # lazy: see file_lock

    lock = file_lock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return None
    return lock
