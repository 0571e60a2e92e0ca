"""The on-host taskserv contract (DESIGN.md 12) through the local provider:
where the folder goes, what install gets (stdin JSON, PROVISIONING_* env),
`servers` in templates, `command` health checks through the provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.errors import ProvisioningError, ValidationError
from provisioning.ops import installs, providers, servers
from provisioning.ops.infra import load_infra
from provisioning.ops.state import StateStore
from tests.test_taskservs import Recorder

INSTALL = """#!/bin/sh
set -eu
r=${PROVISIONING_ROOT%/}
cat > "$r/srv/ctx.json"
env | grep '^PROVISIONING_' | sort > "$r/srv/env.txt"
echo "installed in $PROVISIONING_TASKSERV_DIR"
"""

CHECK = """#!/bin/sh
r=${PROVISIONING_ROOT%/}
if [ -e "$r/srv/healthy" ]; then echo "all good on $PROVISIONING_HOSTNAME"; else
echo "not yet"; exit 1; fi
"""


@pytest.fixture
def ws(tmp_path):
    ws = tmp_path / "ws"
    ts = ws / "taskservs" / "probe"
    (ts / "templates").mkdir(parents=True)
    (ts / "taskserv.toml").write_text(
        '[ports]\nhttp = 18500\n[health]\ntype = "command"\nexpect = "all good"\n'
        'timeout_s = 2\n[templates]\n"peers.txt" = "etc/probe/peers.txt"\n'
        '[defaults]\ncolour = "blue"\n')
    (ts / "templates" / "peers.txt").write_text(
        "{% for s in servers %}{{ s.hostname }}={{ s.address or 'none' }} {% endfor %}\n"
        "{{ values.colour }} {{ settings.owner }} {{ server.hostname }}\n")
    for name, text in (("install", INSTALL), ("check", CHECK)):
        (ts / name).write_text(text)
        (ts / name).chmod(0o755)
    infra = ws / "infra" / "c"
    infra.mkdir(parents=True)
    (infra / "settings.toml").write_text(
        '[infra]\nname = "c"\nprovider = "local"\n[settings]\nowner = "ops"\n'
        '[taskservs.probe]\ncolour = "green"\n'
        '[[servers]]\nhostname = "a1"\ntaskservs = ["probe"]\n'
        '[[servers]]\nhostname = "a2"\n')
    return ws


def test_install_gets_its_folder_context_and_env_and_a_command_health_check(ws):
    infra = load_infra(ws / "infra" / "c")
    r = Recorder()
    a1 = servers.create(infra, "a1", r)
    root = Path(a1["root"])
    with pytest.raises(ProvisioningError, match=r"not healthy after 2s: check exited 1: not yet"):
        installs.install(infra, "a1", "probe", r)
    assert StateStore().taskserv("c", "a1", "probe")["status"] == "failed"

    (root / "srv" / "healthy").write_text("")
    out = installs.install(infra, "a1", "probe", r)
    assert out["changed"] is True
    deployed = root / "opt" / "provisioning" / "taskservs" / "probe"
    assert (deployed / "install").stat().st_mode & 0o777 == 0o700
    assert (deployed / "taskserv.toml").stat().st_mode & 0o777 == 0o600
    assert f"[probe install] installed in {deployed}" in r.lines
    assert "health probe@a1: check exited 0: all good on a1" in r.lines

    # a2 is not created: `servers` still lists it, without an address
    assert (root / "etc/probe/peers.txt").read_text() == (
        f"a1={a1['address']} a2=none \ngreen ops a1\n")
    ctx = json.loads((root / "srv" / "ctx.json").read_text())
    assert ctx["dir"] == str(deployed) and ctx["values"] == {"colour": "green"}
    assert ctx["ports"] == {"http": 18500} and [s["hostname"] for s in ctx["servers"]] == [
        "a1", "a2"]
    env = dict(line.split("=", 1) for line in (root / "srv" / "env.txt").read_text().split("\n")
               if line)
    assert env["PROVISIONING_TASKSERV_DIR"] == str(deployed)
    assert env["PROVISIONING_PORT_HTTP"] == "18500" and env["PROVISIONING_VALUE_COLOUR"] == "green"
    assert env["PROVISIONING_ADDRESS"] == a1["address"] and env["PROVISIONING_ROOT"] == str(root)

    installs.remove("c", "a1", "probe", r, provider=providers.for_infra(infra, StateStore()))
    assert not deployed.exists() and not (root / "etc/probe/peers.txt").exists()


def test_a_template_error_fails_the_install_naming_file_line_and_name(ws):
    tpl = ws / "taskservs" / "probe" / "templates" / "peers.txt"
    tpl.write_text("line one\n{{ values.colour }} {{ values.shade }}\n")
    infra = load_infra(ws / "infra" / "c")
    servers.create(infra, "a1", Recorder())
    with pytest.raises(ValidationError) as e:
        installs.install(infra, "a1", "probe", Recorder())
    assert e.value.message.startswith(f"{tpl}:2: undefined template value")
    assert "shade" in e.value.message
    rec = StateStore().taskserv("c", "a1", "probe")
    assert rec["status"] == "failed" and "peers.txt:2" in rec["error"]


def test_servers_in_a_template_carry_a_declared_address_before_their_record_exists():
    """A load balancer may install before its backends' hosts are adopted (each install
    waits only for its own server): an ssh host's declared address is known already."""
    from types import SimpleNamespace

    from provisioning.ops.infra import ServerDef
    from provisioning.ops.tscontext import infra_servers

    declared = ServerDef("web-1", connection={"address": "10.213.9.2"})
    cloud = ServerDef("web-2")  # a cloud server: no address until it is created
    infra = SimpleNamespace(name="rack", servers=(declared, cloud),
                            taskserv_plan=lambda host: [], catalog=None, taskserv_settings={})
    state = SimpleNamespace(server=lambda infra_name, host: None)  # nothing recorded yet
    seen = {s["hostname"]: s for s in infra_servers(infra, None, state)}
    assert seen["web-1"]["address"] == "10.213.9.2" and seen["web-1"]["state"] == "not created"
    assert seen["web-2"]["address"] is None
