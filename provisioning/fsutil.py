"""Durable file writes: temp file in the same directory, fsync, rename, fsync dir.

A reader never sees half a file; after a crash a file is either the old or the
new version, never a mix or a NUL-filled stub (peter-wangxu/persist-queue#56).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# Tests and benchmarks may turn fsync off to measure the rest; never off in production.
FSYNC = os.environ.get("PROVISIONING_FSYNC", "1") != "0"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or create in ``directory`` durable."""
    if not FSYNC:
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, sync_dir: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if FSYNC:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, mode: int = 0o600, sync_dir: bool = True
) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (see atomic_write_bytes)."""
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    atomic_write_bytes(path, data, mode=mode, sync_dir=sync_dir)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; raises OSError or ValueError (json.JSONDecodeError)."""
    with open(path, "rb") as f:
        return json.loads(f.read())


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p
