"""The system OpenSSH client as the one transport to real hosts (DESIGN.md 11).

- argv lists only; the remote command is one string of `shlex.quote`d
  arguments (ssh joins its arguments for the remote shell anyway).
- `-F /dev/null`: no ~/.ssh/config; host keys only from `<data_dir>/ssh/known_hosts`
  (StrictHostKeyChecking=yes, GlobalKnownHostsFile=/dev/null): nothing in ~/.ssh
  is read for host keys or written.
- One master connection per (user, host, port) and data dir, started here under
  a lock (ControlMaster=yes, ControlPersist), in its own session and with a clean
  environment: a task's process-group kill or marker sweep does not reach it,
  so the tasks of a workflow share it. Commands use it (ControlMaster=no); the
  daemon closes every master at shutdown (close_masters).
- Files: `cat` into a temp name, chmod, mv (atomic); folders: a tar stream
  unpacked by the remote `tar`. Both over the master: no scp/sftp process.
- Secrets never go into argv or the environment: only paths (the identity
  file's path) and the caller's own arguments.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from provisioning import locks
from provisioning.errors import TransportError
from provisioning.fsutil import ensure_private_dir
from provisioning.transport.hostkeys import KnownHosts

CONNECT_TIMEOUT_S = 10
PERSIST_S = 600
ALIVE_INTERVAL_S = 15
SUN_PATH_MAX = 104
MUX_TEMP_SUFFIX = 18  # ssh binds "<ControlPath>.<16 random chars>" first, then renames
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PUT_FILE = ('set -e; umask 077; mkdir -p -- "$(dirname -- "$1")"; t="$1.provisioning-tmp"; '
            'cat > "$t"; chmod "$2" "$t"; mv -f -- "$t" "$1"')
PUT_DIR = 'set -e; umask 077; mkdir -p -- "$1"; tar -x -o -f - -C "$1"'  # -o: not our uids


def _short_hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def control_dir(data_dir: Path) -> Path:
    """Where master sockets live: <data_dir>/ssh/cm, or (when that path is too long
    for a UNIX socket) a 0700 dir of ours in the temp dir named by the data dir."""
    cm = Path(data_dir) / "ssh" / "cm"
    if len(str(cm)) + 1 + 12 + MUX_TEMP_SUFFIX < SUN_PATH_MAX:
        return cm
    return Path(tempfile.gettempdir()) / f"provisioning-ssh-{os.getuid()}-" \
        f"{_short_hash(str(Path(data_dir).resolve()), 10)}"


def _private_dir(path: Path) -> Path:
    ensure_private_dir(path)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or not os.path.isdir(path) or os.path.islink(path):
        raise TransportError(f"{path}: not a private directory of ours; refusing to use it")
    return path


def _socket_alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _clean_env() -> dict[str, str]:
    """ssh's environment: no task marker, no PROVISIONING_*, nothing secret."""
    keep = ("PATH", "HOME", "SSH_AUTH_SOCK")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/bin:/bin")
    env["LC_ALL"] = "C"
    return env


class Transport:
    """Run commands and copy files on hosts over SSH; one per data dir."""

    def __init__(self, data_dir: Path | str, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                 persist: int = PERSIST_S):
        self.data_dir = Path(data_dir)
        self.ssh_dir = self.data_dir / "ssh"
        self.known_hosts = KnownHosts(self.ssh_dir)
        self.cm_dir = control_dir(self.data_dir)
        self.connect_timeout = max(1, int(connect_timeout))
        self.persist = persist

    # -- connection facts ------------------------------------------------------------
    def _target(self, conn: dict[str, Any]) -> tuple[str, str, int, str | None, str | None]:
        address = str(conn.get("address") or "")
        if not address or address.startswith("-") or any(c.isspace() for c in address):
            raise TransportError(f"{conn.get('hostname') or '?'}: no usable address "
                                 f"({address!r})")
        port = int(conn.get("port") or 22)
        name = f"{conn.get('hostname') or address} ({address}:{port})"
        user = conn.get("user") or None
        identity = conn.get("identity_file") or None
        if identity:
            identity = str(Path(identity).expanduser())
            if not os.path.isfile(identity):
                raise TransportError(f"{name}: identity file {identity} does not exist")
            if not os.access(identity, os.R_OK):
                raise TransportError(f"{name}: identity file {identity} is not readable")
        return name, address, port, user, identity

    def control_path(self, conn: dict[str, Any]) -> str:
        _, address, port, user, _ = self._target(conn)
        return str(self.cm_dir / _short_hash(f"{user or ''}@{address}:{port}"))

    def _options(self, conn: dict[str, Any]) -> list[str]:
        _, address, port, user, identity = self._target(conn)
        opts = ["-F", "/dev/null", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}", "-o", "ServerAliveCountMax=3",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts.path}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
                "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                "-o", "LogLevel=ERROR", "-o", f"ControlPath={self.control_path(conn)}",
                "-p", str(port)]
        if identity:
            opts += ["-o", "IdentitiesOnly=yes", "-i", identity]
        if user:
            opts += ["-l", user]
        return opts

    # -- host keys ------------------------------------------------------------------
    def learn_host_key(self, conn: dict[str, Any], trust_on_first_use: bool) -> None:
        """Put the host's key into our known_hosts: the given `host_key`, else (only
        with trust_on_first_use) the one the host presents; else fail plainly."""
        name, address, port, _, _ = self._target(conn)
        self.known_hosts.learn(name=name, address=address, port=port,
                               host_key=conn.get("host_key"),
                               trust_on_first_use=trust_on_first_use,
                               timeout=self.connect_timeout)

    # -- the master connection ------------------------------------------------------------
    def _ensure_master(self, conn: dict[str, Any]) -> None:
        path = self.control_path(conn)
        if _socket_alive(path):
            return
        _private_dir(self.cm_dir)
        with locks.acquire(f"{path}.lock", 3 * self.connect_timeout + 30):
            if _socket_alive(path):
                return
            try:
                os.unlink(path)  # a stale socket of a master that died
            except FileNotFoundError:
                pass
            argv = ["ssh", *self._options(conn), "-o", "ControlMaster=yes",
                    "-o", f"ControlPersist={self.persist}", "-N", "-f", "--",
                    self._target(conn)[1]]
            with tempfile.TemporaryFile() as err:
                try:
                    proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err,
                                          env=_clean_env(), start_new_session=True,
                                          timeout=2 * self.connect_timeout + 10)
                    code = proc.returncode
                except subprocess.TimeoutExpired:
                    code = None
                err.seek(0)
                text = err.read().decode(errors="replace")
            if code != 0:
                raise self._failure(conn, text, code)

    def _failure(self, conn: dict[str, Any], stderr: str, code: int | None
                 ) -> TransportError:
        """A plain reason for a failed connection, from ssh's own words."""
        name, address, port, user, identity = self._target(conn)
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        low = stderr.lower()
        if code is None or "timed out" in low:
            return TransportError(f"{name}: unreachable: no answer within "
                                  f"{self.connect_timeout}s")
        if "host key verification failed" in low or "identification has changed" in low:
            return self.known_hosts.changed_key_error(name=name, address=address, port=port,
                                                      timeout=self.connect_timeout)
        if "permission denied" in low:
            return TransportError(f"{name}: the host refused the key "
                                  f"{identity or '(default identities)'} for user "
                                  f"{user or os.environ.get('USER', '?')}: {last}")
        for words in ("connection refused", "no route to host", "network is unreachable",
                      "invalid argument", "could not resolve", "connection closed",
                      "connection reset"):
            if words in low:
                return TransportError(f"{name}: unreachable: {last}")
        return TransportError(f"{name}: ssh failed (exit {code}): {last}")

    # -- commands ---------------------------------------------------------------
    def _ssh(self, conn: dict[str, Any], remote: list[str], *, input: bytes | str | None,
             timeout: float | None, text: bool) -> subprocess.CompletedProcess:
        self._ensure_master(conn)
        argv = ["ssh", *self._options(conn), "-o", "ControlMaster=no", "--",
                self._target(conn)[1], shlex.join(remote)]
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=text,
                                  env=_clean_env(), timeout=timeout,
                                  stdin=subprocess.DEVNULL if input is None else None)
        except subprocess.TimeoutExpired as e:
            raise TransportError(f"{self._target(conn)[0]}: {remote[0]} did not finish "
                                 f"within {timeout}s") from e
        except OSError as e:
            raise TransportError(f"cannot run ssh: {e}") from e
        if proc.returncode == 255:
            err = proc.stderr if text else proc.stderr.decode(errors="replace")
            if _is_ssh_error(err):
                raise self._failure(conn, err, 255)
        return proc

    def run(self, conn: dict[str, Any], argv: list[str], *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run argv on the host; output captured; never raises on a non-zero exit
        (only when the host cannot be reached: TransportError). `env` values travel
        in the remote command line (`env K=V ...`): never a secret there, use stdin."""
        if not argv:
            raise TransportError("nothing to run")
        remote = list(argv)
        if env:
            bad = [k for k in env if not ENV_NAME.match(k)]
            if bad:
                raise TransportError(f"bad environment variable name(s): {', '.join(bad)}")
            remote = ["env", *(f"{k}={v}" for k, v in env.items()), *remote]
        return self._ssh(conn, remote, input=input, timeout=timeout, text=True)

    def copy(self, conn: dict[str, Any], local: Path, remote: str, *, mode: int = 0o600
             ) -> None:
        """Copy a local file (atomically, with `mode`) or a folder to `remote`."""
        local = Path(local)
        if local.is_dir():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for p in sorted(local.rglob("*")):
                    if "__pycache__" not in p.parts:
                        tar.add(p, arcname=p.relative_to(local).as_posix(), recursive=False)
            data, script, args = buf.getvalue(), PUT_DIR, [remote]
        else:
            try:
                data = local.read_bytes()
            except OSError as e:
                raise TransportError(f"cannot read {local}: {e}") from e
            script, args = PUT_FILE, [remote, f"{mode:o}"]
        proc = self._ssh(conn, ["sh", "-c", script, "sh", *args], input=data,
                         timeout=300, text=False)
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise TransportError(f"{self._target(conn)[0]}: copying {local.name} to {remote} "
                                 f"failed: {why[-1] if why else f'exit {proc.returncode}'}")

    # -- masters -----------------------------------------------------------------
    def master_alive(self, conn: dict[str, Any]) -> bool:
        return _socket_alive(self.control_path(conn))

    def close_master(self, conn: dict[str, Any]) -> None:
        """Close this host's master connection, if one runs (`ssh -O exit`)."""
        path = self.control_path(conn)
        if _socket_alive(path):
            subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={path}", "-O",
                            "exit", "--", "closing"], capture_output=True, timeout=10,
                           env=_clean_env(), stdin=subprocess.DEVNULL, check=False)

    def close_all(self) -> int:
        """Close every master connection of this data dir (`ssh -O exit`). How many."""
        return close_masters(self.data_dir)


def _is_ssh_error(stderr: str) -> bool:
    low = stderr.lower()
    return any(w in low for w in ("ssh: ", "connection closed", "host key verification",
                                  "permission denied (", "connection reset",
                                  "mux_client", "control socket"))


def close_masters(data_dir: Path | str) -> int:
    """The daemon's shutdown hook: `ssh -O exit` each master socket of the data dir."""
    cm = control_dir(Path(data_dir))
    if not cm.is_dir():
        return 0
    closed = 0
    for sock in sorted(cm.iterdir()):
        if sock.suffix == ".lock" or not sock.is_socket():
            continue
        try:
            proc = subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}",
                                   "-O", "exit", "--", "closing"], capture_output=True,
                                  timeout=10, env=_clean_env(), stdin=subprocess.DEVNULL)
            closed += proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            pass
    for leftover in cm.iterdir():  # sockets of masters gone, their lock files
        try:
            leftover.unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass
    if cm != Path(data_dir) / "ssh" / "cm":
        try:
            cm.rmdir()  # the fallback dir in the temp dir: leave nothing there
        except OSError:
            pass
    return closed
