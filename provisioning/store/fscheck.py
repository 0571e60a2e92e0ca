"""Refuse a data dir on a network filesystem: flock does not protect it there.

flock on NFS is a no-op when mounted ``nolock`` and unreliable across clients
(tox-dev/filelock#6), CIFS/SMB and FUSE network filesystems vary; the queue's
cross-process guarantees rest on flock, so the daemon refuses such a data dir
unless ``storage.allow_network_fs = true`` (then it logs a loud warning).
"""

from __future__ import annotations

import logging
import os
import sys

from provisioning.errors import EXIT_USAGE, ProvisioningError

log = logging.getLogger("provisioning.store")

NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "afs", "ncpfs", "coda",
    "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "webdav",
    "afpfs", "sshfs",
})
# FUSE filesystems report "fuse.<name>"; these are network ones.
NETWORK_FUSE_NAMES = frozenset({
    "sshfs", "glusterfs", "s3fs", "rclone", "davfs2", "gcsfuse", "goofys", "cephfs",
    "juicefs", "moosefs", "mfs", "lizardfs", "seaweedfs", "smbnetfs", "curlftpfs",
})


def is_network_fs(fstype: str) -> bool:
    fstype = fstype.lower()
    if fstype in NETWORK_FS_TYPES or fstype.startswith(("nfs", "smb", "cifs")):
        return True
    return fstype.startswith("fuse.") and fstype[5:] in NETWORK_FUSE_NAMES


def read_mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount: /proc/self/mounts, else psutil."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
                return [(_unescape(fields[1]), fields[2])
                        for fields in (line.split() for line in f) if len(fields) >= 3]
        except OSError:
            pass
    import psutil  # lazy: only where /proc/self/mounts is missing (macOS, BSD)

    return [(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(esc, ch)
    return field


def mount_of(path: str | os.PathLike[str],
             mounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The mount holding ``path`` (the longest matching mount point; the last
    one mounted wins a tie). ``path`` need not exist; symlinks in the part
    that does are resolved."""
    real = os.path.realpath(os.path.abspath(path))  # resolves the part that exists
    best: tuple[str, str] | None = None
    for mountpoint, fstype in mounts:
        mp = mountpoint.rstrip("/") or "/"
        if real == mp or mp == "/" or real.startswith(mp + "/"):
            if best is None or len(mp) >= len(best[0].rstrip("/") or "/"):
                best = (mountpoint, fstype)
    return best


def check_data_dir(path: str | os.PathLike[str], *, allow_network_fs: bool,
                   mounts: list[tuple[str, str]] | None = None) -> str | None:
    """Raise ProvisioningError (exit 2) if ``path`` is on a network filesystem,
    unless ``allow_network_fs`` (then warn). Returns the fs type (None if unknown)."""
    found = mount_of(path, read_mounts() if mounts is None else mounts)
    if found is None:
        return None
    mountpoint, fstype = found
    if not is_network_fs(fstype):
        return fstype
    what = (f"the data dir {path} is on a network filesystem ({fstype} mounted at "
            f"{mountpoint}): file locks (flock) are unreliable there, so two processes "
            "could corrupt the queue")
    if allow_network_fs:
        log.warning("WARNING: %s; continuing because storage.allow_network_fs = true. "
                    "Run only one provisioning host against this directory.", what)
        return fstype
    raise ProvisioningError(
        what, exit_code=EXIT_USAGE,
        hint="use a local directory (storage.data_dir), or set storage.allow_network_fs = "
             "true if you are sure only this host uses it")
