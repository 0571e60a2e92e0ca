"""Test hosts: a real OpenSSH sshd per host, each in its own network namespace.

`ssh_hosts(n)` (a fixture returning a factory) makes n hosts. Each host is a
network namespace with a veth pair and a private /30 out of 10.213.0.0/16
(10.213.k.1 on our side, 10.213.k.2 the host), running `/usr/sbin/sshd -D -e`
with its own config, host key and authorized_keys for a test key made here.
While any host exists a blackhole route covers the whole range (PITFALLS.md:
a removed host's address must never leave the machine). Where namespaces
cannot be made (or SSH_TEST_HOSTS=loopback) each sshd listens on
its own 127.213.k.2 instead; the run says which (a line in pytest's summary
and the test's `ssh_hosts` property). Everything made is removed in the
fixture's finalizer, also when setup fails halfway.

The hosts share this machine's filesystem (only the network is separate),
so tests give each host its own `root` (host.root) for what is installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from provisioning import locks
from provisioning.polling import wait_until

SSHD = "/usr/sbin/sshd"
PREFIX = "10.213"
RANGE = f"{PREFIX}.0.0/16"
LOOP_PREFIX = "127.213"
LOCK_FILE = Path("/tmp/provisioning-test-hosts.lock")
READY_TIMEOUT_S = 15
_MODES_SEEN: dict[str, int] = {}

SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey {dir}/ssh_host_ed25519_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
MaxSessions 64
MaxStartups 64
LogLevel INFO
Subsystem sftp internal-sftp
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


@dataclass
class TestHost:
    name: str
    address: str
    mode: str  # "netns" or "loopback"
    dir: Path
    identity_file: Path
    host_key: str = ""
    port: int = 22
    slot: int = 0
    netns: str | None = None
    link: str | None = None
    proc: subprocess.Popen | None = None
    paused: bool = field(default=False)

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def root(self) -> Path:
        """Where this host's taskservs install (hosts share our filesystem)."""
        return self.dir / "root"

    def conn(self, **extra) -> dict:
        return {"hostname": self.name, "address": self.address, "port": self.port,
                "user": "root", "identity_file": str(self.identity_file),
                "host_key": self.host_key, **extra}

    def accepted(self) -> int:
        """SSH connections the host accepted so far (sshd's `Accepted` lines)."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey")
        except FileNotFoundError:
            return 0

    def pause(self) -> None:
        """Stop answering (SIGSTOP): connections hang as with a dead host."""
        assert self.proc is not None
        self._signal_all(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self._signal_all(signal.SIGCONT)
        self.paused = False

    def _signal_all(self, sig: int) -> None:
        """sshd and its sessions (an open master connection stalls too)."""
        try:
            main = psutil.Process(self.proc.pid)
            for p in [main, *main.children(recursive=True)]:
                p.send_signal(sig)
        except psutil.Error:
            pass

    def listening(self) -> bool:
        return "Server listening on" in self.log.read_text(errors="replace") \
            if self.log.exists() else False

    def stop(self) -> None:
        """Kill sshd and every session process it forked, then the namespace."""
        self.resume()
        if self.proc is not None:
            try:
                procs = [psutil.Process(self.proc.pid)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=5)
            self.proc.wait(timeout=5)
            self.proc = None
        for p in psutil.process_iter(["cwd"]):  # services a test started in the host's root
            try:
                if p.info["cwd"] and p.info["cwd"].startswith(f"{self.dir}/"):
                    p.kill()
            except psutil.Error:
                pass
        if self.netns:  # what sessions left running inside (services a test started)
            pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            _ip("netns", "del", self.netns, check=False)
            self.netns = None
        if self.link:
            _ip("link", "del", self.link, check=False)
            self.link = None


def _used_slots() -> set[int]:
    out = _ip("-o", "addr").stdout + _ip("-o", "link").stdout
    used = set()
    for word in out.replace("/", " ").replace(":", " ").replace("@", " ").split():
        for prefix in (f"{PREFIX}.", f"{LOOP_PREFIX}.", "pvh"):
            if word.startswith(prefix):
                rest = word[len(prefix):].split(".")[0].rstrip("mn")
                if rest.isdigit():
                    used.add(int(rest))
    return used


def _bindable(address: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, 22))
            return True
        except OSError:
            return False


def _netns_possible() -> bool:
    if os.environ.get("SSH_TEST_HOSTS") == "loopback" or os.geteuid() != 0:
        return False
    probe = f"pvprobe{os.getpid()}"
    ok = _ip("netns", "add", probe, check=False).returncode == 0
    if ok:
        _ip("netns", "del", probe, check=False)
    return ok


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


class HostFactory:
    def __init__(self, base: Path, request: pytest.FixtureRequest | None = None):
        self.base = base
        self.request = request
        self.hosts: list[TestHost] = []
        self.mode = "netns" if _netns_possible() else "loopback"
        self.base.mkdir(parents=True, exist_ok=True)
        self.identity_file = base / "id_ed25519"
        self.client_key = _keygen(self.identity_file, "provisioning-test")
        self._blackhole = False

    def __call__(self, n: int) -> list[TestHost]:
        made = [self._one() for _ in range(n)]
        for h in made:
            if not wait_until(lambda h=h: h.listening() or h.proc.poll() is not None,
                              READY_TIMEOUT_S) or not h.listening():
                raise AssertionError(f"sshd of {h.name} did not start: "
                                     f"{h.log.read_text(errors='replace')[-2000:]}")
        _MODES_SEEN[self.mode] = _MODES_SEEN.get(self.mode, 0) + n
        if self.request is not None:
            self.request.node.user_properties.append(("ssh_hosts", self.mode))
        print(f"ssh test hosts: {n} in mode {self.mode} "
              f"({', '.join(h.address for h in made)})", file=sys.stderr)
        return made

    def unused_address(self) -> str:
        """An address in the test range with no host (routed nowhere)."""
        return f"{PREFIX}.255.2" if self.mode == "netns" else f"{LOOP_PREFIX}.255.2"

    def _one(self) -> TestHost:
        with locks.acquire(LOCK_FILE, 60):
            used = _used_slots() | {h.slot for h in self.hosts}
            k = next(i for i in range(1, 255) if i not in used
                     and (self.mode == "netns" or _bindable(f"{LOOP_PREFIX}.{i}.2")))
            name = f"host{len(self.hosts) + 1}"
            d = self.base / name
            d.mkdir()
            (d / "root").mkdir()
            if self.mode == "netns":
                host = TestHost(name, f"{PREFIX}.{k}.2", "netns", d, self.identity_file, slot=k)
                self.hosts.append(host)
                self._make_netns(host, k)
            else:
                host = TestHost(name, f"{LOOP_PREFIX}.{k}.2", "loopback", d,
                                self.identity_file, slot=k)
                self.hosts.append(host)
        host.host_key = _keygen(d / "ssh_host_ed25519_key", name)
        (d / "authorized_keys").write_text(self.client_key + "\n")
        cfg = d / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(address=host.address, dir=d))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        argv = [SSHD, "-D", "-e", "-f", str(cfg)]
        rc = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".bashrc"
        if rc.is_file() and shutil.which("unshare"):
            # Sessions see an empty ~/.bashrc, like a fresh host: bash sources it for
            # every ssh command, and this machine's (pyenv init) costs ~0.4 s each.
            # A private mount namespace: nothing changes outside, gone with sshd.
            (d / "empty.bashrc").write_text("")
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
                    str(d / "empty.bashrc"), str(rc), *argv]
        if host.netns:
            argv = ["ip", "netns", "exec", host.netns, *argv]
        with open(host.log, "wb") as log:
            host.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return host

    def _make_netns(self, host: TestHost, k: int) -> None:
        ns, main, inner = f"pvt{os.getpid()}h{k}", f"pvh{k}m", f"pvh{k}n"
        _ip("netns", "add", ns)
        host.netns = ns
        _ip("link", "add", main, "type", "veth", "peer", "name", inner)
        host.link = main
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{PREFIX}.{k}.1/30", "dev", main)
        _ip("link", "set", main, "up")
        for args in (("addr", "add", f"{PREFIX}.{k}.2/30", "dev", inner),
                     ("link", "set", inner, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", ns, "ip", *args)
        if not self._blackhole:
            _ip("route", "add", "blackhole", RANGE, check=False)  # may exist: another run
            self._blackhole = True

    def close(self) -> None:
        errors = []
        for h in reversed(self.hosts):
            try:
                h.stop()
            except Exception as e:  # noqa: BLE001 - remove the others anyway
                errors.append(f"{h.name}: {e}")
        if self._blackhole:
            with locks.acquire(LOCK_FILE, 60):
                if f" {PREFIX}." not in _ip("-o", "addr").stdout:
                    _ip("route", "del", "blackhole", RANGE, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise AssertionError("test host teardown: " + "; ".join(errors))


MODE_TEXT = {"netns": "network namespaces", "loopback": "loopback 127.213.x.2 (fallback)"}


class _Summary:
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if _MODES_SEEN:
            terminalreporter.write_line("ssh test hosts: " + ", ".join(
                f"{n} in {MODE_TEXT[m]}" for m, n in _MODES_SEEN.items()))


@pytest.fixture
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A factory: ssh_hosts(n) -> n TestHost, all removed at the end of the test."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("needs OpenSSH (openssh-server and openssh-client; .ci/run installs them)")
    pm = request.config.pluginmanager
    if not pm.has_plugin("provisioning-ssh-hosts"):
        pm.register(_Summary(), "provisioning-ssh-hosts")
    # A short base dir: the hosts' files, not under the test's tmp_path (ssh's
    # control sockets live under the data dir; this keeps both readable).
    factory = HostFactory(Path(tmp_path_factory.mktemp("hosts", numbered=True)), request)
    try:
        yield factory
    finally:
        factory.close()



WEB_INSTALL = """#!/bin/sh
# Runs ON the host (cwd: the server's root): a tiny web service bound to the host address.
set -e
cat > /dev/null  # the context JSON; this one needs only the env
mkdir -p srv/{name} run
echo "{greeting} $PROVISIONING_HOST_NAME at $PROVISIONING_HOST_ADDRESS" > srv/{name}/index.html
setsid python3 -m http.server --bind "$PROVISIONING_HOST_ADDRESS" --directory srv/{name} \\
    {port} < /dev/null > run/{name}.log 2>&1 &
echo $! > run/{name}.pid
"""
WEB_REMOVE = """#!/bin/sh
[ -f run/{name}.pid ] && kill "$(cat run/{name}.pid)" 2>/dev/null
rm -rf srv/{name} run/{name}.pid run/{name}.log
exit 0
"""


def write_web_taskserv(ws: Path, name: str, port: int, greeting: str) -> Path:
    """A workspace taskserv ``name``: POSIX sh install/remove of python3's http.server
    on the host's address and ``port``, its page "<greeting> <host> at <address>",
    and an http health check expecting the greeting's first word."""
    ts = ws / "taskservs" / name
    ts.mkdir(parents=True)
    (ts / "taskserv.toml").write_text(
        '[taskserv]\ndescription = "python3 http.server on the host"\n'
        f'[ports]\nhttp = {port}\n'
        f'[health]\ntype = "http"\nport = "http"\npath = "/"\nexpect = "{greeting.split()[0]}"\n'
        'timeout_s = 20\n')
    (ts / "install").write_text(WEB_INSTALL.format(name=name, port=port, greeting=greeting))
    (ts / "remove").write_text(WEB_REMOVE.format(name=name))
    for f in (ts / "install", ts / "remove"):
        f.chmod(0o755)
    return ts
