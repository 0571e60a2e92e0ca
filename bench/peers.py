"""Peers the benchmarks compare against, installed by the bench itself.

- huey (PyPI) into its own venv, bench/.peers-venv, so the project's venv
  never gets a package it does not use;
- Nushell (the npm registry package `nushell`, whose per-platform optional
  dependency ships the native `nu` binary) into bench/.peers-npm, to time the
  seeds' `nu -c` per-task spawn.

Each `ensure_*` returns a `Peer`: either the thing to run, or why it is
unavailable (no network, no npm, no wheel...). The bench then prints
"peer unavailable: <why>" in the row instead of failing. Installs are done
once and reused; a broken half-install is retried on the next run.

Usage: python -m bench.peers   (installs both and prints what it found)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEERS_VENV = BENCH / ".peers-venv"
PEERS_NPM = BENCH / ".peers-npm"
HUEY_SCRIPT = BENCH / "huey_peer.py"
INSTALL_TIMEOUT = 300  # seconds; a registry that does not answer must not hang the bench


@dataclass(frozen=True)
class Peer:
    """A peer program: `argv` to run it, or `unavailable` saying why not."""

    name: str
    argv: tuple[str, ...] = ()
    version: str = ""
    unavailable: str = ""

    @property
    def ok(self) -> bool:
        return not self.unavailable


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                          stdin=subprocess.DEVNULL, **kw)


def ensure_huey() -> Peer:
    """A venv with huey; argv runs bench/huey_peer.py in it (append N PARALLEL DIR)."""
    python = PEERS_VENV / "bin" / "python"
    probe = [str(python), "-c", "import huey; print(huey.__version__)"]
    try:
        if python.exists():
            found = _run(probe)
            if found.returncode == 0:
                return Peer("huey", (str(python), str(HUEY_SCRIPT)), found.stdout.strip())
            shutil.rmtree(PEERS_VENV, ignore_errors=True)  # half-made: start again
        # The venv's base interpreter, not the project venv: huey sees only huey.
        base = getattr(sys, "_base_executable", sys.executable)
        made = _run([base, "-m", "venv", str(PEERS_VENV)])
        if made.returncode != 0:
            return Peer("huey", unavailable=f"venv failed: {_last_line(made.stderr)}")
        pip = _run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                    "--quiet", "huey"])
        if pip.returncode != 0:
            shutil.rmtree(PEERS_VENV, ignore_errors=True)
            return Peer("huey", unavailable=f"pip install huey failed: "
                                            f"{_last_line(pip.stderr or pip.stdout)}")
        found = _run(probe)
        if found.returncode != 0:
            return Peer("huey", unavailable=f"huey does not import: {_last_line(found.stderr)}")
        return Peer("huey", (str(python), str(HUEY_SCRIPT)), found.stdout.strip())
    except (OSError, subprocess.TimeoutExpired) as e:
        return Peer("huey", unavailable=f"install failed: {e}")


def _find_nu_binary() -> Path | None:
    """The native `nu` inside @nushell/<platform>: spawning it directly leaves out
    the node launcher (lib/index.js), which would time node, not Nushell."""
    scoped = PEERS_NPM / "node_modules" / "@nushell"
    if scoped.is_dir():
        for candidate in sorted(scoped.glob("*/bin/nu")) + sorted(scoped.glob("*/nu")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def ensure_nushell() -> Peer:
    """Nushell from the npm registry; argv is the native `nu` binary."""
    try:
        nu = _find_nu_binary()
        if nu is None:
            npm = shutil.which("npm")
            if npm is None:
                return Peer("nushell", unavailable="npm is not installed")
            PEERS_NPM.mkdir(exist_ok=True)
            done = _run([npm, "install", "--prefix", str(PEERS_NPM), "--no-audit", "--no-fund",
                         "--loglevel=error", "nushell"])
            if done.returncode != 0:
                return Peer("nushell", unavailable=f"npm install nushell failed: "
                                                   f"{_last_line(done.stderr or done.stdout)}")
            nu = _find_nu_binary()
            if nu is None:
                return Peer("nushell", unavailable="npm package has no native nu binary "
                                                   "for this platform")
        found = _run([str(nu), "--version"])
        if found.returncode != 0:
            return Peer("nushell", unavailable=f"nu does not run: {_last_line(found.stderr)}")
        return Peer("nushell", (str(nu),), found.stdout.strip())
    except (OSError, subprocess.TimeoutExpired) as e:
        return Peer("nushell", unavailable=f"install failed: {e}")


def main() -> int:
    for ensure in (ensure_huey, ensure_nushell):
        t0 = time.perf_counter()
        peer = ensure()
        took = time.perf_counter() - t0
        state = f"{peer.version} ({' '.join(peer.argv)})" if peer.ok else peer.unavailable
        print(f"{peer.name:<8} {state}  [{took:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
