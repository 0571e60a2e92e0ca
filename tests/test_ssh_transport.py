"""provisioning.transport over real sshd test hosts (tests/hosts.py)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from provisioning.errors import TransportError
from provisioning.transport import Transport, close_masters, control_dir
from tests.hosts import ssh_hosts  # noqa: F401 - the fixture

CONNECT_TIMEOUT = 2


def _masters(cm: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if cmd.startswith("ssh ") and f"ControlPath={cm}" in cmd and "ControlMaster=yes" in cmd:
            out.append(p)
    return out


@pytest.fixture
def transport(tmp_path: Path):
    t = Transport(tmp_path / "data", connect_timeout=CONNECT_TIMEOUT)
    yield t
    t.close_all()
    left = _masters(t.cm_dir)
    for p in left:
        p.kill()
    assert not left, "close_all left master connections running"


def test_run_quotes_each_argument_and_returns_nonzero_exits(ssh_hosts, transport):  # noqa: F811
    (h,) = ssh_hosts(1)
    conn = h.conn()
    transport.learn_host_key(conn, trust_on_first_use=False)
    out = transport.run(conn, ["printf", "%s|", "a b", "$HOME", "it's", ";", "*"])
    assert out.returncode == 0 and out.stdout == "a b|$HOME|it's|;|*|"
    assert transport.run(conn, ["cat"], input="from stdin\n").stdout == "from stdin\n"
    env = transport.run(conn, ["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hi there"})
    assert env.stdout == "hi there\n"
    failed = transport.run(conn, ["sh", "-c", "echo oops >&2; exit 7"])
    assert failed.returncode == 7 and "oops" in failed.stderr
    with pytest.raises(TransportError, match="environment variable"):
        transport.run(conn, ["true"], env={"BAD NAME": "x"})


def test_copy_file_and_folder(ssh_hosts, transport, tmp_path):  # noqa: F811
    (h,) = ssh_hosts(1)
    conn = h.conn()
    transport.learn_host_key(conn, trust_on_first_use=False)
    src = tmp_path / "site.conf"
    src.write_bytes(b"listen 80;\n\x00binary\n")
    dest = h.root / "etc" / "new dir" / "site.conf"
    transport.copy(conn, src, str(dest), mode=0o640)
    assert dest.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert not list(dest.parent.glob("*.provisioning-tmp"))
    folder = tmp_path / "ts"
    (folder / "templates").mkdir(parents=True)
    (folder / "install").write_text("#!/bin/sh\necho installed\n")
    (folder / "install").chmod(0o755)
    (folder / "templates" / "a.conf").write_text("x")
    transport.copy(conn, folder, str(h.root / "opt" / "ts"))
    assert (h.root / "opt" / "ts" / "templates" / "a.conf").read_text() == "x"
    ran = transport.run(conn, [str(h.root / "opt" / "ts" / "install")])
    assert ran.stdout == "installed\n"
    with pytest.raises(TransportError, match="cannot read"):
        transport.copy(conn, tmp_path / "missing", "/tmp/x")


def test_one_connection_per_host_shared_by_transports(ssh_hosts, transport, tmp_path):  # noqa: F811
    hosts = ssh_hosts(2)
    for h in hosts:
        transport.learn_host_key(h.conn(), trust_on_first_use=False)
    other = Transport(tmp_path / "data", connect_timeout=CONNECT_TIMEOUT)  # another task
    for i in range(4):
        for h in hosts:
            t = transport if i % 2 else other
            assert t.run(h.conn(), ["echo", str(i)]).stdout == f"{i}\n"
    # a command started from a task's process group and marked environment: the
    # executor's kill of that group must not reach the master.
    env = dict(os.environ, PROVISIONING_TASK_ID="t-1")
    code = ("import sys; from provisioning.transport import Transport; "
            "t = Transport(sys.argv[1], connect_timeout=2); "
            f"print(t.run({hosts[0].conn()!r}, ['hostname']).returncode)")
    child = subprocess.run([os.sys.executable, "-c", code, str(tmp_path / "data")],
                           capture_output=True, text=True, env=env, timeout=60,
                           start_new_session=True)
    assert child.stdout.strip() == "0", child.stderr
    assert [h.accepted() for h in hosts] == [1, 1]
    masters = _masters(transport.cm_dir)
    assert len(masters) == 2
    assert all("PROVISIONING_TASK_ID" not in p.environ() for p in masters)
    assert close_masters(tmp_path / "data") == 2
    assert psutil.wait_procs(masters, timeout=5)[1] == []
    transport.run(hosts[0].conn(), ["true"])  # a new master after a close
    assert hosts[0].accepted() == 2


def test_host_key_from_infra_and_trust_on_first_use(ssh_hosts, transport):  # noqa: F811
    h1, h2 = ssh_hosts(2)
    transport.learn_host_key(h1.conn(), trust_on_first_use=False)
    known = transport.known_hosts.path.read_text()
    assert h1.host_key.split()[1] in known and h2.address not in known
    assert stat.S_IMODE(transport.known_hosts.path.stat().st_mode) == 0o600
    bare = h2.conn(host_key=None)
    with pytest.raises(TransportError, match="no host key known") as e:
        transport.learn_host_key(bare, trust_on_first_use=False)
    assert "trust_on_first_use" in str(e.value)
    with pytest.raises(TransportError, match="no host key known"):
        transport.run(bare, ["true"])  # never learned by ssh itself either
    assert h2.address not in transport.known_hosts.path.read_text()
    transport.learn_host_key(bare, trust_on_first_use=True)
    assert h2.host_key.split()[1] in transport.known_hosts.path.read_text()
    assert transport.run(bare, ["true"]).returncode == 0


def test_changed_host_key_names_host_and_both_fingerprints(ssh_hosts, transport, tmp_path):  # noqa: F811
    (h,) = ssh_hosts(1)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True, timeout=30)
    wrong = (tmp_path / "other.pub").read_text().strip()
    conn = h.conn(host_key=wrong)
    transport.learn_host_key(conn, trust_on_first_use=True)

    def fp(path: Path) -> str:
        return subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True,
                              text=True, check=True).stdout.split()[1]

    with pytest.raises(TransportError, match="has changed") as e:
        transport.run(conn, ["true"])
    msg = str(e.value)
    assert h.name in msg and h.address in msg
    assert fp(tmp_path / "other.pub") in msg
    assert fp(h.dir / "ssh_host_ed25519_key.pub") in msg
    assert h.accepted() == 0


def test_unreachable_host_fails_in_bounded_time(ssh_hosts, transport):  # noqa: F811
    (h,) = ssh_hosts(1)
    conn = h.conn()
    transport.learn_host_key(conn, trust_on_first_use=False)
    h.pause()  # accepts TCP (kernel) but never answers: a hung host
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="unreachable") as e:
        transport.run(conn, ["true"])
    assert time.monotonic() - t0 < 2 * CONNECT_TIMEOUT + 8
    assert h.name in str(e.value)
    h.resume()
    gone = {"hostname": "gone", "address": ssh_hosts.unused_address(), "user": "root",
            "identity_file": str(h.identity_file), "host_key": h.host_key}
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="unreachable"):
        transport.run(gone, ["true"])
    assert time.monotonic() - t0 < 2 * CONNECT_TIMEOUT + 8


def test_missing_identity_and_refused_key(ssh_hosts, transport, tmp_path):  # noqa: F811
    (h,) = ssh_hosts(1)
    with pytest.raises(TransportError, match="identity file .*nope does not exist"):
        transport.run(h.conn(identity_file=str(tmp_path / "nope")), ["true"])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "stranger")], check=True, timeout=30)
    conn = h.conn(identity_file=str(tmp_path / "stranger"))
    transport.learn_host_key(conn, trust_on_first_use=False)
    with pytest.raises(TransportError, match="refused the key") as e:
        transport.run(conn, ["true"])
    assert "stranger" in str(e.value) and "root" in str(e.value)


def test_nothing_written_to_home_ssh(ssh_hosts, transport, tmp_path, monkeypatch):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    real = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"

    def look() -> tuple:
        try:
            st = real.stat()
            return (True, st.st_mtime_ns, (real / "known_hosts").exists()
                    and (real / "known_hosts").stat().st_mtime_ns)
        except FileNotFoundError:
            return (False,)

    before = look()
    (h,) = ssh_hosts(1)
    conn = h.conn(host_key=None)
    transport.learn_host_key(conn, trust_on_first_use=True)
    transport.run(conn, ["true"])
    transport.copy(conn, Path(__file__), str(h.root / "x.py"))
    transport.close_all()
    assert not (home / ".ssh").exists()
    assert look() == before


def test_control_path_stays_short(tmp_path):
    deep = tmp_path / ("d" * 90)
    cm = control_dir(deep)
    assert len(str(cm)) + 13 + 18 < 104 and str(cm).startswith("/")
    assert control_dir(Path("/var/lib/provisioning")) == Path("/var/lib/provisioning/ssh/cm")
