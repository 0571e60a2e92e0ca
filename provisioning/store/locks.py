"""Cross-process locks on data-dir files: flock-based filelock.FileLock only.

Rules (PITFALLS.md): never SoftFileLock (a crashed holder leaves it stuck, and
it had its own CVE); always a finite timeout; one lock object per path per
process (tox-dev/filelock#315, #230), so objects are cached here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning.errors import ProvisioningError

if TYPE_CHECKING:
    from filelock import FileLock

DEFAULT_TIMEOUT = 30.0  # seconds; queue writers hold the lock for milliseconds

_cache: dict[str, FileLock] = {}
_cache_guard = threading.Lock()


def file_lock(path: str | os.PathLike[str]) -> FileLock:
    """The process-wide FileLock object for ``path`` (created on first use).

    thread_local=True (the default) keeps threads of one process excluding
    each other too: each thread flocks its own descriptor.
    """
    key = os.path.abspath(path)
    with _cache_guard:
        lock = _cache.get(key)
        if lock is None:
            import filelock

            kwargs: dict[str, object] = {"mode": 0o600}
            if _accepts_fallback_to_soft(filelock.FileLock):
                kwargs["fallback_to_soft"] = False
            lock = filelock.FileLock(key, **kwargs)
            _cache[key] = lock
        return lock


def _accepts_fallback_to_soft(cls: type) -> bool:
    import inspect

    try:
        return "fallback_to_soft" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


class LockBusy(ProvisioningError):
    """A queue lock could not be taken within its timeout."""


def acquire(path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT):
    """Context manager holding the lock on ``path``; LockBusy after ``timeout`` s."""
    import filelock

    lock = file_lock(path)
    try:
        return lock.acquire(timeout=timeout)
    except filelock.Timeout as e:
        raise LockBusy(
            f"could not lock {Path(path)} within {timeout:g}s: another process holds it",
            hint="retry; if it persists, look for a hung provisioning process") from e
