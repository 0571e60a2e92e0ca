"""The local provider: sandbox roots, loopback addresses, run/copy, extension providers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provisioning.errors import ProvisioningError
from provisioning.ops.infra import ServerDef, load_infra
from provisioning.ops.providers import open_provider, provider_class
from provisioning.ops.providers.local import LocalProvider
from provisioning.ops.state import StateStore


def provider(settings=None, infra="t") -> LocalProvider:
    return open_provider("local", infra=infra, settings=settings or {}, state=StateStore())


def create(p: LocalProvider, host: str) -> dict:
    record, created = p.create_server(ServerDef(hostname=host))
    record["status"] = "running"
    p.state.save_server(p.infra, record)
    return record


def test_servers_get_their_own_root_and_loopback_address(isolated):
    p = provider()
    a, b = create(p, "a"), create(p, "b")
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    assert Path(a["root"]) == data / "state" / "local" / "t" / "a"
    assert (Path(a["root"]) / "srv").is_dir()
    assert oct(Path(a["root"]).stat().st_mode & 0o777) == "0o700"
    if sys.platform.startswith("linux"):
        assert a["address"].startswith("127.") and a["address"] != "127.0.0.1"
        assert a["address"] != b["address"] and a["port_offset"] == b["port_offset"] == 0
    assert p.status("a") == "running" and p.list_servers() == ["a", "b"]
    again, created = p.create_server(ServerDef(hostname="a"))
    assert not created and again["address"] == a["address"]  # idempotent
    assert p.delete_server("a") is True
    assert p.status("a") == "missing" and not Path(a["root"]).exists()
    assert p.delete_server("a") is False
    assert create(p, "a")["address"] == a["address"]  # deterministic per data dir


def test_shared_loopback_uses_distinct_port_offsets():
    p = provider({"loopback": "shared"})
    a, b = create(p, "a"), create(p, "b")
    assert a["address"] == b["address"] == "127.0.0.1"
    assert a["port_offset"] != b["port_offset"] and a["port_offset"] > 0


def test_run_takes_an_argv_never_a_shell_string():
    p = provider()
    rec = create(p, "a")
    tricky = "$(touch pwned); echo hi > x"
    proc = p.run("a", [sys.executable, "-c",
                       "import os,sys; print(sys.argv[1]); print(os.getcwd()); "
                       "print(os.environ['PROVISIONING_HOST_ADDRESS'])", tricky])
    out = proc.stdout.splitlines()
    assert proc.returncode == 0 and out[0] == tricky
    assert out[1] == rec["root"] and out[2] == rec["address"]
    assert not (Path(rec["root"]) / "pwned").exists() and not (Path(rec["root"]) / "x").exists()
    assert p.run("a", [sys.executable, "-c", "raise SystemExit(3)"]).returncode == 3
    with pytest.raises(ProvisioningError, match="does not exist"):
        p.run("ghost", ["true"])


def test_copy_file_stays_inside_the_server_root(tmp_path):
    p = provider()
    rec = create(p, "a")
    src = tmp_path / "f.txt"
    src.write_text("hello")
    p.copy_file("a", src, "etc/app/f.txt")
    assert (Path(rec["root"]) / "etc/app/f.txt").read_text() == "hello"
    with pytest.raises(ProvisioningError, match="leaves the root"):
        p.copy_file("a", src, "../b/evil.txt")
    p.remove_path("a", "etc/app")
    assert not (Path(rec["root"]) / "etc/app").exists()


def test_extension_provider_from_a_lib_dir(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    (lib / "providers" / "sandbox").mkdir(parents=True)
    (lib / "providers" / "sandbox" / "provider.py").write_text(
        "from provisioning.ops.providers.local import LocalProvider\n"
        "class Sandbox(LocalProvider):\n    name = 'sandbox'\n"
        "PROVIDER = Sandbox\n")
    monkeypatch.setenv("PROVISIONING_LIB", str(lib))
    assert provider_class("sandbox").name == "sandbox"
    ws = tmp_path / "ws" / "infra" / "x"
    ws.mkdir(parents=True)
    (ws / "settings.toml").write_text("[infra]\nprovider = 'sandbox'\n[[servers]]\n"
                                      "hostname = 'h'\n")
    infra = load_infra(ws)
    p = open_provider(infra.provider, infra="x", settings={}, state=StateStore())
    rec, created = p.create_server(infra.servers[0])
    assert created and Path(rec["root"]).parent.parent.name == "sandbox"
    (lib / "providers" / "broken").mkdir()
    (lib / "providers" / "broken" / "provider.py").write_text("PROVIDER = 42\n")
    from provisioning.errors import ValidationError

    with pytest.raises(ValidationError, match="must define PROVIDER"):
        provider_class("broken")
