"""Host keys: the tool's own known_hosts file (`<data_dir>/ssh/known_hosts`).

A key is learned only when the infra says so: a server's `host_key`, or
`trust_on_first_use` (then ssh-keyscan reads it once). ssh itself checks it
with StrictHostKeyChecking=yes; when the check fails we name the host and
both fingerprints (ssh-keygen -lf of the known key and of the one the host
presents now). Nothing here reads or writes ~/.ssh.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from provisioning import locks
from provisioning.errors import TransportError
from provisioning.fsutil import atomic_write_bytes, ensure_private_dir

KEY_TYPES = "ed25519,ecdsa,rsa"
TOOL_TIMEOUT_S = 10.0


def host_pattern(address: str, port: int) -> str:
    """How known_hosts names a host (ssh's own format)."""
    return address if port == 22 else f"[{address}]:{port}"


def normalize_key(text: str) -> str:
    """'type base64' of a public key line (any comment dropped)."""
    parts = text.split()
    if len(parts) < 2 or not (parts[0].startswith(("ssh-", "ecdsa-", "sk-"))):
        raise TransportError(f"host_key {text[:40]!r} is not an OpenSSH public key "
                             "(expected e.g. 'ssh-ed25519 AAAA...')")
    return f"{parts[0]} {parts[1]}"


class KnownHosts:
    """The known_hosts file the tool owns; every change under a lock, atomically."""

    def __init__(self, ssh_dir: Path):
        self.dir = ssh_dir
        self.path = ssh_dir / "known_hosts"

    def keys_for(self, pattern: str) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and pattern in parts[0].split(","):
                out.append(f"{parts[1]} {parts[2]}")
        return out

    def replace(self, pattern: str, keys: list[str]) -> None:
        ensure_private_dir(self.dir)
        with locks.acquire(self.dir / "known_hosts.lock", 30):
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                lines = []
            kept = [ln for ln in lines
                    if ln.split() and pattern not in ln.split()[0].split(",")]
            kept += [f"{pattern} {k}" for k in keys]
            atomic_write_bytes(self.path, ("\n".join(kept) + "\n").encode(), mode=0o600)

    def learn(self, *, name: str, address: str, port: int, host_key: str | None,
              trust_on_first_use: bool, timeout: float) -> None:
        pattern = host_pattern(address, port)
        if host_key:
            key = normalize_key(host_key)
            if self.keys_for(pattern) != [key]:
                self.replace(pattern, [key])
            return
        if self.keys_for(pattern):
            return
        if not trust_on_first_use:
            raise TransportError(
                f"{name}: no host key known for {pattern}",
                hint="set host_key for the server, or trust_on_first_use = true in [provider]")
        keys = scan(address, port, timeout)
        if not keys:
            raise TransportError(f"{name}: cannot read the host key of {pattern} "
                                 "(ssh-keyscan got no answer)")
        self.replace(pattern, keys)

    def changed_key_error(self, *, name: str, address: str, port: int, timeout: float
                          ) -> TransportError:
        """The error for a failed host key check: both fingerprints when we can read them."""
        pattern = host_pattern(address, port)
        known = self.keys_for(pattern)
        if not known:
            return TransportError(f"{name}: no host key known for {pattern}",
                                  hint="set host_key for the server, or trust_on_first_use")
        types = {k.split()[0] for k in known}
        presented = [k for k in scan(address, port, timeout) if k.split()[0] in types]
        was = ", ".join(fingerprint(k) for k in known)
        now = ", ".join(fingerprint(k) for k in presented) or "unknown (no answer)"
        return TransportError(
            f"{name}: host key of {pattern} has changed: known {was}, the host presents {now}",
            hint=f"if the change is expected, update host_key (or remove {pattern} "
                 f"from {self.path})")


def scan(address: str, port: int, timeout: float) -> list[str]:
    """The host's public keys ('type base64'), read with ssh-keyscan."""
    try:
        proc = subprocess.run(["ssh-keyscan", "-T", str(max(1, int(timeout))), "-p", str(port),
                               "-t", KEY_TYPES, "--", address], capture_output=True,
                              text=True, timeout=timeout + TOOL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TransportError(f"{address}: ssh-keyscan failed: {e}") from e
    keys = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            keys.append(f"{parts[1]} {parts[2]}")
    return sorted(set(keys))


def fingerprint(key: str) -> str:
    """SHA256 fingerprint of a 'type base64' key, as ssh-keygen -lf prints it."""
    with tempfile.NamedTemporaryFile("w", suffix=".pub", encoding="utf-8") as f:
        f.write(key + "\n")
        f.flush()
        try:
            proc = subprocess.run(["ssh-keygen", "-l", "-f", f.name], capture_output=True,
                                  text=True, timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{key.split()[0]} (no fingerprint: {e})"
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) < 2:
        return f"{key.split()[0]} (unreadable)"
    return f"{parts[1]} ({key.split()[0]})"
