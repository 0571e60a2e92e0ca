"""File helpers of the JSON-file store: disk-full errors, appends, quarantine.

Whole-record writes go through provisioning.fsutil (temp, fsync, rename, dir
fsync); this module adds what the store needs around them.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning import fsutil
from provisioning.errors import StorageFull

log = logging.getLogger("provisioning.store")

_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_temp_name(name: str) -> bool:
    """Temp files of fsutil.atomic_write_bytes: ``.<final name>.<random>.tmp``."""
    return name.startswith(".") and name.endswith(".tmp")


@contextmanager
def storage_errors(where: str | os.PathLike[str]) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StorageFull (HTTP 507); other errors pass through."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL_ERRNOS:
            raise StorageFull(
                f"no space left for the queue in {where} ({os.strerror(e.errno)}); "
                "nothing was recorded",
                hint="free space (or raise the quota) on that filesystem, then retry") from e
        raise


def append_line(fd: int, path: Path, line: bytes, *, repair_tail: bool) -> None:
    """Append one whole line with a single write() to ``fd`` (``path``, opened
    with O_APPEND; the caller keeps or closes it).

    ``repair_tail``: first check that the file ends with a newline; if a crash
    left a torn last line, start ours on a fresh line so only the torn one is
    lost. On any error the file is cut back to its old size, so a failed append
    (ENOSPC mid-write) never leaves a torn line behind.
    """
    size = os.fstat(fd).st_size
    if repair_tail and size > 0:
        with open(path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                line = b"\n" + line
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write only happens when the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except BaseException:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise


def quarantine(path: Path, quarantine_dir: Path, reason: str) -> Path | None:
    """Move ``path`` into ``quarantine_dir`` under a new, never-reused name.

    The name is ``<dir>-<file>.<UTC timestamp>[.<n>]``; os.link refuses to
    overwrite, so two files with one name never clobber each other. The caller
    fsyncs both directories once it is done moving files.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    stamp += f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
    base = f"{path.parent.name}-{path.name.lstrip('.')}.{stamp}"
    for n in range(1000):
        target = quarantine_dir / (base if n == 0 else f"{base}.{n}")
        try:
            os.link(path, target)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None  # already gone
        except OSError:  # no hard links on this filesystem: check, then rename
            if target.exists():
                continue
            os.rename(path, target)
        else:
            os.unlink(path)
        log.warning("quarantined %s -> %s: %s", path, target, reason)
        return target
    log.warning("could not quarantine %s (%s): too many name clashes", path, reason)
    return None


# -- staged (batched) atomic writes --------------------------------------------

PARALLEL_FSYNC_MIN = 4  # files; below this a thread hand-off costs more than it saves
STAGE_CHUNK = 64  # temp files open at once in replace_many
_pool = None
_pool_guard = threading.Lock()


@dataclass
class Staged:
    """A record written to its temp file, not yet durable nor visible."""

    path: Path
    tmp: str
    fd: int | None


def stage_json(path: Path, obj: Any, spares: Spares | None = None) -> Staged:
    """Write ``obj`` to a 0600 temp file (no fsync, no rename): a recycled
    inode from ``spares`` if there is one, else a fresh file beside ``path``.

    Two system calls (create, write): in the committer under load each one
    costs ~0.1 ms of waiting to get the GIL back, so no fchmod (O_CREAT|O_EXCL
    with mode 0600 already makes it 0600 or stricter under any umask, and the
    daemon's umask is 077) and no random bytes in the name (see _create_temp).
    """
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    fd, tmp = (spares and spares.take(path)) or _create_temp(path)
    staged = Staged(path, tmp, fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        discard([staged])
        raise
    return staged


_temp_names = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(
    os, "O_NOFOLLOW", 0)


def _temp_name(path: Path) -> str:
    return f"{path.parent}/.{path.name}.{os.getpid()}.{next(_temp_names)}.tmp"


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path`` (``.<name>.<pid>.<n>.tmp``, see
    is_temp_name). Like tempfile.mkstemp (O_EXCL, 0600) without its per-call
    overhead, which showed in the profile of the hot path. pid and counter
    make the name unique in this process; O_EXCL catches a leftover of a dead
    process with the same pid (the next number is tried). The directory is
    private to the daemon (0700), so a predictable name is no risk."""
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name beside {path}")


def sync_staged(items: list[Staged]) -> None:
    """fsync every temp file; many at once run in parallel so the filesystem
    can fold them into fewer journal commits (ext4: ~1.6x faster at 32 files)."""
    if not fsutil.FSYNC:
        return
    fds = [s.fd for s in items if s.fd is not None]
    if len(fds) < PARALLEL_FSYNC_MIN:
        for fd in fds:
            os.fsync(fd)
        return
    for _ in _fsync_pool().map(os.fsync, fds):  # re-raises the first error
        pass


def replace_many(pairs: list[tuple[Path, Any]], done: list[Path],
                 spares: Spares | None = None, *, sync: bool = True) -> None:
    """Replace each ``path`` with ``obj`` as JSON, durably per file, in three
    phases: write every temp file (no fsync), fsync them all (in parallel,
    see sync_staged), then close and rename each in order. Profiled under the
    engine's load, this beats doing each file's create/fsync/rename in its
    own pool thread (~10% of the benchmark): creating a file waits for the
    journal while other fsyncs commit, so creates and fsyncs interleaved slow
    each other down, while the parallel fsyncs still fold into one journal
    commit. Each final path is appended to ``done`` once renamed; on an error
    it is raised and no temp file is left (files not yet renamed keep their
    old version). The directory fsync is the caller's (once for all).
    Files are taken STAGE_CHUNK at a time: a submission of thousands of tasks
    must not hold thousands of open fds. With ``spares``, replaced files'
    inodes are recycled as the next temp files (see Spares). ``sync=False``:
    no fsync (still atomic for readers; for files that can be rebuilt)."""
    for start in range(0, len(pairs), STAGE_CHUNK):
        staged: list[Staged] = []
        try:
            for path, obj in pairs[start:start + STAGE_CHUNK]:
                staged.append(stage_json(path, obj, spares))
            if sync:
                sync_staged(staged)
            publish(staged, done, spares)
        except BaseException:
            discard(staged)
            raise


def _fsync_pool():
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-fsync")
        return _pool


def publish(items: list[Staged], done: list[Path], spares: Spares | None = None) -> None:
    """Close and rename each temp file onto its final name, in order; each
    final path is appended to ``done`` as soon as it exists. With ``spares``,
    the inode each rename replaces is kept as a spare (see Spares)."""
    for s in items:
        if s.fd is not None:
            fd, s.fd = s.fd, None
            os.close(fd)
        old = spares.link(s.path) if spares else None
        try:
            os.replace(s.tmp, s.path)
        except BaseException:
            if old:  # still a name of the live record: never hand it out
                spares.drop(old)
            raise
        if old:
            spares.put(old)
        s.tmp = ""
        done.append(s.path)


def discard(items: list[Staged]) -> None:
    """Close and delete the temp files of ``items`` not yet published."""
    for s in items:
        if s.fd is not None:
            try:
                os.close(s.fd)
            except OSError:
                pass
            s.fd = None
        if s.tmp:
            try:
                os.unlink(s.tmp)
            except OSError:
                pass
            s.tmp = ""


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Spares:
    """Inodes of replaced record files, recycled as temp files.

    Creating a file costs ~0.2-0.3 ms of kernel CPU on ext4 on our VMs (inode
    allocation), ~10x a link or an open of an existing file, and the durable
    path created one per record write. So before a rename replaces a record,
    its old inode gets a second name in ``directory`` (a private dir on the
    same filesystem, outside queue/ and workflows/); after the rename that
    name is its only one and the inode is free for the next temp file: moved
    beside its target under a temp name, opened with O_TRUNC, written,
    fsynced, renamed: the same temp-fsync-rename protocol (and the same
    leftovers after a crash), only without the inode allocation.

    Safety: a name is handed out only after the rename that made its inode
    unreferenced succeeded (if the rename fails the name is removed at once:
    it would still be a name of the live record). Names survive only in this
    object; ``purge`` (at load, i.e. daemon start) deletes every name it does
    not hold, such as those left by a crash. A spare holds an old version of
    a record and is never read.
    """

    def __init__(self, directory: Path, limit: int = 64):
        self.dir = str(directory)
        self.limit = limit
        self._names: list[str] = []
        self._pending = 0  # linked, rename not done yet: counted against the limit
        self._lock = threading.Lock()
        # Names are unique per instance: another store on the same dir (tests)
        # can at worst delete ours, never hand out one of its names as ours.
        self._prefix = f"{self.dir}/{os.getpid()}.{os.urandom(4).hex()}."
        self._seq = itertools.count()

    def take(self, path: Path) -> tuple[int, str] | None:
        """A spare moved beside ``path`` under a temp name (so the write is
        the usual temp file, and a crash leaves the usual leftover), opened
        truncated; None if there is none."""
        while True:
            with self._lock:
                if not self._names:
                    return None
                name = self._names.pop()
            tmp = _temp_name(path)
            try:
                os.rename(name, tmp)
            except OSError:  # removed behind our back (another store's purge)
                continue
            try:
                return os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
                               | getattr(os, "O_NOFOLLOW", 0)), tmp
            except OSError:
                _unlink_quietly(tmp)
                return None

    def link(self, path: Path) -> str | None:
        """A new name for ``path``'s current inode (None: pool full, or no such
        file, i.e. a new record). Pass it to ``put`` once ``path`` was replaced."""
        with self._lock:
            if len(self._names) + self._pending >= self.limit:
                return None
            self._pending += 1
        name = f"{self._prefix}{next(self._seq)}"
        try:
            os.link(path, name, follow_symlinks=False)
        except OSError:
            with self._lock:
                self._pending -= 1
            return None
        return name

    def put(self, name: str) -> None:
        with self._lock:
            self._pending -= 1
            self._names.append(name)

    def drop(self, name: str) -> None:
        """A name from ``link`` whose rename failed: it still names the live record."""
        _unlink_quietly(name)
        with self._lock:
            self._pending -= 1

    def purge(self, *, keep_held: bool = True) -> None:
        """Delete every name in the directory this object does not hold (with
        ``keep_held=False``: every name, the pool is emptied)."""
        with self._lock:
            held = set(self._names) if keep_held else set()
            if not keep_held:
                self._names.clear()
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for entry in entries:
            name = f"{self.dir}/{entry}"
            if name not in held:
                _unlink_quietly(name)
