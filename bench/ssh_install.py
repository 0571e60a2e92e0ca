"""Figure 11: the same taskserv on 10 ssh test hosts, provisioning vs Ansible vs pyinfra.

The hosts are tests/hosts.py's (a real sshd per network namespace; root only).
The work on each host: copy a folder, render one template, run an install
script, then a health check (TCP to the host's sshd port). Per run, every tool
starts without an open connection:

- provisioning: `provisioning --direct taskserv create benchts` (the hosts are
  adopted once before timing; the taskserv is removed between runs, and the
  master connections closed);
- Ansible: `ansible-playbook -f 10` (ansible-core from PyPI), the system ssh with
  ControlMaster=auto/ControlPersist=60s and a fresh ControlPath dir per run,
  `copy` + `template` + `command` + `wait_for`, no fact gathering;
- pyinfra (PyPI, its paramiko connector): `files.sync` + `files.template` +
  `server.shell`, --parallel 10.

Wall time, client CPU (user+sys of the command and every child it reaped) and
SSH connections per host (sshd's `Accepted` lines). Peers go into their own venv
(bench/.peers-ssh-venv); one that cannot be installed is a `peer unavailable` row.

Usage: python bench/ssh_install.py [--hosts 10] [--runs 3]   (prints the rows as JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench.report import Figure, Row, Target, row_from_samples  # noqa: E402

VENV = BENCH / ".peers-ssh-venv"
BIN = Path(sys.executable).parent
TITLE = "Taskserv on 10 ssh hosts"
TIMEOUT = 600

INSTALL = """#!/bin/sh
set -e
cat > /dev/null
mkdir -p var/benchts
date > var/benchts/installed
echo installed
"""
ANSIBLE_PLAY = """- hosts: all
  gather_facts: false
  tasks:
    - file: {{path: "{{{{ root }}}}/opt/bench/benchts", state: directory, mode: "0700"}}
    - copy: {{src: "{ts}/", dest: "{{{{ root }}}}/opt/bench/benchts/", mode: preserve}}
    - template: {{src: "{ts}/templates/motd.txt", dest: "{{{{ root }}}}/etc-motd.txt"}}
    - command: {{cmd: "{{{{ root }}}}/opt/bench/benchts/install", chdir: "{{{{ root }}}}",
                 stdin: "{{}}"}}
    - wait_for: {{host: "{{{{ ansible_host }}}}", port: 22, timeout: 20}}
      delegate_to: localhost
"""
PYINFRA_DEPLOY = """from pyinfra import host
from pyinfra.operations import files, server
root = host.data.root
files.sync(src={ts!r} + "/", dest=root + "/opt/bench/benchts")
files.template(src={ts!r} + "/templates/motd.txt", dest=root + "/etc-motd.txt")
server.shell(commands=["cd " + root + " && echo '{{}}' | ./opt/bench/benchts/install"])
server.wait(port=22)
"""


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, client CPU seconds (children reaped), output tail."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = int(os.environ.get("BENCH_TAIL", "300"))  # more of the output when debugging
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed: "
                           f"{(proc.stdout + proc.stderr).strip()[-tail:]}")
    return wall, cpu, proc.stdout[-tail:]


def _taskserv(ws: Path) -> Path:
    ts = ws / "taskservs" / "benchts"
    (ts / "templates").mkdir(parents=True)
    (ts / "taskserv.toml").write_text(
        '[taskserv]\ndescription = "bench: copy, one template, an install script"\n'
        '[ports]\nssh = 22\n[health]\ntype = "tcp"\nport = "ssh"\ntimeout_s = 20\n'
        '[templates]\n"motd.txt" = "etc-motd.txt"\n')
    (ts / "templates" / "motd.txt").write_text("managed by a benchmark\n")
    (ts / "install").write_text(INSTALL)
    (ts / "install").chmod(0o755)
    return ts


def _infra(ws: Path, hosts) -> Path:
    d = ws / "infra" / "benchrack"
    d.mkdir(parents=True)
    text = ['[infra]\nname = "benchrack"\nprovider = "ssh"\n',
            f'[provider]\nuser = "root"\nidentity_file = "{hosts[0].identity_file}"\n']
    for h in hosts:
        text.append(f'[[servers]]\nhostname = "{h.name}"\naddress = "{h.address}"\n'
                    f'host_key = "{h.host_key}"\nroot = "{h.root}"\ntaskservs = ["benchts"]\n')
    (d / "settings.toml").write_text("\n".join(text))
    return d


def _accepted(hosts) -> list[int]:
    return [h.accepted() for h in hosts]


def measure_provisioning(hosts, ws: Path, runs: int, env: dict[str, str]) -> dict:
    from provisioning.transport import close_masters

    infra = _infra(ws, hosts)
    cli = [str(BIN / "provisioning"), "--direct"]
    for h in hosts:
        _timed([*cli, "server", "create", h.name, "--infra", str(infra)], env, ws)
    out: dict[str, list[float]] = {"wall": [], "cpu": [], "conns": []}
    for _ in range(runs):
        _timed([*cli, "taskserv", "delete", "benchts", "--infra", str(infra)], env, ws)
        close_masters(env["PROVISIONING_STORAGE_DATA_DIR"])
        before = _accepted(hosts)
        wall, cpu, _ = _timed([*cli, "taskserv", "create", "benchts", "--infra", str(infra)],
                              env, ws)
        out["wall"].append(wall)
        out["cpu"].append(cpu)
        out["conns"].append(max(a - b for a, b in zip(_accepted(hosts), before, strict=True)))
    return out


def ensure_peers() -> tuple[str, str]:
    """(ansible-playbook or '', pyinfra or '') from bench/.peers-ssh-venv, installing them."""
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                        str(VENV)], capture_output=True, timeout=TIMEOUT)
    for tool, pkg in (("ansible-playbook", "ansible-core"), ("pyinfra", "pyinfra")):
        if py.exists() and not (VENV / "bin" / tool).exists():
            subprocess.run([str(py), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", pkg], capture_output=True,
                           timeout=TIMEOUT)
    return tuple(str(VENV / "bin" / t) if (VENV / "bin" / t).exists() else ""
                 for t in ("ansible-playbook", "pyinfra"))


def measure_ansible(exe: str, hosts, ws: Path, ts: Path, runs: int, known: Path) -> dict:
    play = ws / "ansible" / "play.yml"
    play.parent.mkdir(parents=True, exist_ok=True)
    play.write_text(ANSIBLE_PLAY.format(ts=ts))
    inv = play.parent / "hosts.ini"
    inv.write_text("[all]\n" + "".join(
        f"{h.name} ansible_host={h.address} ansible_user=root root={h.root}\n" for h in hosts))
    out: dict[str, list[float]] = {"wall": [], "cpu": [], "conns": []}
    for i in range(runs):
        cp = Path(f"/tmp/pvb-ans-{os.getpid()}-{i}")
        cp.mkdir(mode=0o700)
        cfg = play.parent / "ansible.cfg"
        cfg.write_text(
            "[defaults]\nforks = 10\nhost_key_checking = True\n"
            f"private_key_file = {hosts[0].identity_file}\ninterpreter_python = auto_silent\n"
            f"local_tmp = {ws}/ansible/tmp\n"
            "[ssh_connection]\n"
            f"ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=60s "
            f"-o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes\n")
        env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), HOME=str(ws / "ansible"),
                   ANSIBLE_SSH_CONTROL_PATH=f"{cp}/%%C")  # ansible %-formats it; ssh's %C
        before = _accepted(hosts)
        try:
            wall, cpu, _ = _timed([exe, "-i", str(inv), str(play)], env, play.parent)
        finally:
            for sock in cp.iterdir():
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                               capture_output=True, timeout=10)
            shutil.rmtree(cp, ignore_errors=True)
        out["wall"].append(wall)
        out["cpu"].append(cpu)
        out["conns"].append(max(a - b for a, b in zip(_accepted(hosts), before, strict=True)))
    return out


def measure_pyinfra(exe: str, hosts, ws: Path, ts: Path, runs: int, known: Path) -> dict:
    d = ws / "pyinfra"
    d.mkdir(parents=True, exist_ok=True)
    (d / "deploy.py").write_text(PYINFRA_DEPLOY.format(ts=str(ts)))
    (d / "inventory.py").write_text("hosts = " + repr([
        (h.address, {"ssh_user": "root", "ssh_key": str(h.identity_file), "root": str(h.root),
                     "ssh_known_hosts_file": str(known),
                     "ssh_strict_host_key_checking": "yes"}) for h in hosts]) + "\n")
    out: dict[str, list[float]] = {"wall": [], "cpu": [], "conns": []}
    env = dict(os.environ, HOME=str(d))
    for _ in range(runs):
        before = _accepted(hosts)
        wall, cpu, _ = _timed([exe, "-y", "--parallel", "10", "inventory.py", "deploy.py"],
                              env, d)
        out["wall"].append(wall)
        out["cpu"].append(cpu)
        out["conns"].append(max(a - b for a, b in zip(_accepted(hosts), before, strict=True)))
    return out


def _rows(name: str, m: dict, *, ref: str, is_ref: bool) -> list[Row]:
    wall = row_from_samples(f"{name}: wall", m["wall"], "s", reference=f"{ref}: wall",
                            is_reference=is_ref)
    cpu = row_from_samples(f"{name}: client CPU", m["cpu"], "s",
                           reference=f"{ref}: client CPU", is_reference=is_ref)
    conns = row_from_samples(f"{name}: SSH connections per host", m["conns"], "",
                             note="max over hosts")
    return [wall, cpu, conns]


def measure(n_hosts: int, runs: int, tmp: Path) -> list[Row]:
    sys.path.insert(0, str(REPO))
    from tests.hosts import HostFactory

    ws = tmp / "ws"
    ts = _taskserv(ws)
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env.update(PROVISIONING_STORAGE_DATA_DIR=str(data), PROVISIONING_USER_CONFIG_DIR=str(tmp),
               PROVISIONING_ETC_DIR=str(tmp / "etc"), PROVISIONING_SHARE_DIR=str(tmp / "sh"))
    factory = HostFactory(tmp / "hosts")
    try:
        hosts = factory(n_hosts)
        prov = measure_provisioning(hosts, ws, runs, env)
        known = data / "ssh" / "known_hosts"
        ansible, pyinfra = ensure_peers()
        peers = {}
        for name, exe, fn in (("ansible-playbook", ansible, measure_ansible),
                              ("pyinfra", pyinfra, measure_pyinfra)):
            if not exe:
                peers[name] = "peer unavailable: could not pip install it"
                continue
            try:
                peers[name] = fn(exe, hosts, ws, ts, runs, known)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                peers[name] = f"peer failed: {str(e)[:200]}"
    finally:
        from provisioning.transport import close_masters

        close_masters(data)
        factory.close()
    ref = "ansible-playbook" if isinstance(peers.get("ansible-playbook"), dict) \
        else "provisioning"
    rows = _rows("provisioning", prov, ref=ref, is_ref=ref == "provisioning")
    rows[0].target = Target("<=", 0.5, basis="ratio", label="<= 0.5x Ansible")
    rows[2].target = Target("<=", 1, label="<= 1")
    for name, m in peers.items():
        if isinstance(m, dict):
            rows += _rows(name, m, ref=ref, is_ref=name == ref)
        else:
            rows.append(Row(name, unavailable=m))
    return rows


def figure(quick: bool, tmp: Path) -> Figure:
    """Figure 11 of `python -m bench`."""
    runs, n = (1 if quick else 3), 10
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd"):
        return Figure(11, TITLE, rows=[Row("provisioning on ssh hosts", unavailable=(
            "peer unavailable: needs root and /usr/sbin/sshd (openssh-server)"))])
    rows = measure(n, runs, tmp)
    return Figure(11, TITLE, f"{n} hosts, {runs} run(s) each, every run without open "
                  "connections", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-ssh-", dir="/var/tmp"))
    try:
        rows = measure(args.hosts, args.runs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps([r.to_dict() for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
