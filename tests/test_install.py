"""install.sh: offline install, the installed programs, uninstall, refusals (issue 7).

Every run gets PATH with only system dirs (+ the prefix), its own HOME (so
~/.shiv is inside tmp_path), an isolated data dir and port, and
--service-dir inside tmp_path: nothing touches the real system.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioning import __version__ as CORE_VERSION
from provisioning.versions import PLATFORM_VERSION
from tests.conftest import free_port
from tests.test_packaging import build_dist_once

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "install.sh"
SYSTEM_PATH = "/usr/bin:/bin"


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dist_once(tmp_path_factory)["dist"]


class Host:
    """A throwaway HOME, prefix and service dir, and a clean environment."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.prefix = tmp_path / "prefix"
        self.service_dir = tmp_path / "units"
        for d in (self.home, self.prefix, self.service_dir):
            d.mkdir()
        self.port = free_port()

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "PATH": f"{SYSTEM_PATH}:{self.prefix}/bin",
            "LANG": "C.UTF-8",
            "PROVISIONING_STORAGE_DATA_DIR": str(self.tmp / "data"),
            "PROVISIONING_USER_CONFIG_DIR": str(self.tmp / "userconfig"),
            "PROVISIONING_ETC_DIR": str(self.tmp / "etc"),
            "PROVISIONING_SERVER_PORT": str(self.port),
            "PROVISIONING_ORCHESTRATOR_ENDPOINT": f"http://127.0.0.1:{self.port}",
        }
        env.update(extra)
        return env

    def install_sh(self, *args: str, env: dict[str, str] | None = None,
                   script: Path = INSTALL_SH) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), *args], capture_output=True, text=True,
                              env=env or self.env(), cwd=self.tmp, timeout=180)

    def install(self, bundle: Path, *more: str) -> subprocess.CompletedProcess[str]:
        return self.install_sh("--bundle", str(bundle), "--prefix", str(self.prefix),
                               "--service-dir", str(self.service_dir), *more)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env(),
                              cwd=self.tmp, timeout=timeout)

    def listing(self) -> list[str]:
        out = []
        for base in (self.prefix, self.home, self.service_dir):
            out += sorted(str(p) for p in base.rglob("*"))
        return out


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck missing (CI: apt-get install shellcheck)")
def test_install_sh_is_shellcheck_clean() -> None:
    r = subprocess.run(["shellcheck", "--shell=sh", str(INSTALL_SH)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_sh_ends_by_calling_main() -> None:
    lines = [ln for ln in INSTALL_SH.read_text().splitlines() if ln.strip()]
    assert lines[-1] == 'main "$@"'
    # a truncated download cannot run a half-defined script: the only
    # top-level statements are assignments, `set` and function definitions
    assert INSTALL_SH.read_text().startswith("#!/bin/sh\n")


@pytest.mark.slow
def test_offline_install_runs_orchestrated_workflow_and_uninstalls_cleanly(
        dist: Path, host: Host) -> None:
    before = host.listing()
    r = host.install(dist)
    assert r.returncode == 0, r.stderr
    assert "verified provisioning-core-" in r.stderr
    bin_dir = host.prefix / "bin"
    assert (bin_dir / "provisioning-orchestrator").is_symlink()
    unit = host.service_dir / "provisioning-orchestrator.service"
    assert f"ExecStart={bin_dir}/provisioning-orchestrator" in unit.read_text()
    defaults = host.prefix / "share/provisioning/config/config.defaults.toml"
    assert f'"{host.prefix}/lib/provisioning"' in defaults.read_text()
    # unpacked once by the installer, into the (isolated) ~/.shiv
    assert any(p.name.startswith("provisioning_") for p in (host.home / ".shiv").iterdir())

    r = host.run("provisioning", "version")
    assert r.returncode == 0, r.stderr
    assert CORE_VERSION in r.stdout and PLATFORM_VERSION in r.stdout

    if (REPO / "provisioning" / "orchestrator" / "main.py").is_file():
        wf = host.tmp / "wf.toml"
        wf.write_text('[workflow]\nname = "pkg"\n\n[[tasks]]\nid = "a"\nop = "noop"\n')
        try:
            r = host.run("provisioning", "--orchestrated", "workflow", "submit", str(wf),
                         "--wait", timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "succeeded" in r.stdout
            # its record-writer child ran from the zipapp too (no in-process fallback)
            log = (host.tmp / "data" / "orchestrator.log").read_text()
            assert "record writer" not in log, log[-2000:]
            # the daemon that ran it is the installed zipapp
            r = host.run("provisioning", "orchestrator", "status")
            assert r.returncode == 0 and PLATFORM_VERSION in r.stdout, r.stdout + r.stderr

            # a platform beside an incompatible core is refused at daemon start
            versions = host.prefix / "share/provisioning/versions.toml"
            original = versions.read_text()
            versions.write_text(original.replace('core = "^3.2"', 'core = "^9.0"'))
            r = host.run(str(bin_dir / "provisioning-orchestrator"), "--check")
            assert r.returncode == 4, r.stdout + r.stderr
            assert CORE_VERSION in r.stderr and PLATFORM_VERSION in r.stderr
            versions.write_text(original)
        finally:
            host.run("provisioning", "orchestrator", "stop")

    r = host.install_sh("--uninstall", "--prefix", str(host.prefix))
    assert r.returncode == 0, r.stderr
    assert host.listing() == before
    assert (host.tmp / "data").exists()  # never the data dir without --purge


PROBE_OP = """\
import json
from provisioning.ops.protocol import run_op
from provisioning.ops.providers.sdk import import_sdk

def probe(ctx):
    boto3 = import_sdk("boto3", provider="aws", extra="aws")
    with open(ctx.params["out"], "w") as f:
        json.dump({"version": boto3.__version__, "file": boto3.__file__}, f)
    return {}

run_op(probe)
"""


@pytest.mark.slow
def test_providers_bundle_installs_offline_and_tasks_of_the_zipapp_import_the_sdk(
        dist: Path, host: Host) -> None:
    before = host.listing()
    r = host.install(dist)
    assert r.returncode == 0, r.stderr
    assert "verified provisioning-providers-" in r.stderr
    site = host.prefix / "lib" / "provisioning-providers"
    assert (site / "boto3" / "__init__.py").is_file() and (site / "botocore").is_dir()
    assert not list(site.glob("*.data"))
    manifest = (host.prefix / "share/provisioning/install-manifest").read_text()
    assert f"providers t {site}\n" in manifest
    # a task run by the installed zipapp imports boto3 from there (the zipapp has none)
    lib = host.tmp / "extlib"
    (lib / "probe").mkdir(parents=True)
    (lib / "probe" / "sdk.py").write_text(PROBE_OP)
    out = host.tmp / "probe.json"
    wf = host.tmp / "wf.toml"
    wf.write_text(f'[[tasks]]\nid = "p"\nop = "probe.sdk"\nparams = {{ out = "{out}" }}\n')
    r = subprocess.run(["provisioning", "--direct", "workflow", "submit", str(wf)],
                       capture_output=True, text=True, cwd=host.tmp, timeout=120,
                       env=host.env(PROVISIONING_LIB=str(lib)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert Path(json.loads(out.read_text())["file"]).is_relative_to(site)
    # --no-providers on a reinstall keeps what is there; uninstall removes it all
    assert host.install(dist, "--no-providers").returncode == 0 and site.is_dir()
    r = host.install_sh("--uninstall", "--prefix", str(host.prefix))
    assert r.returncode == 0, r.stderr
    assert host.listing() == before


@pytest.mark.slow
def test_tampered_wheel_in_the_providers_bundle_is_refused(dist: Path, host: Host) -> None:
    bad = host.tmp / "dist"
    shutil.copytree(dist, bad)
    (bundle,) = bad.glob("provisioning-providers-*.tar.gz")
    with tarfile.open(bundle) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None)
                   for m in tf.getmembers()]
    with tarfile.open(bundle, "w:gz") as tf:
        for m, data in members:
            if data is not None and m.name.endswith(".whl") and "/six-" in m.name:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    sums = bad / "SHA256SUMS"
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    sums.write_text("".join(f"{digest}  {bundle.name}\n" if line.endswith(bundle.name)
                            else line + "\n" for line in sums.read_text().splitlines()))
    before = host.listing()
    r = host.install(bad)
    assert r.returncode != 0
    assert "checksum mismatch for wheel six-" in r.stderr
    assert host.listing() == before


@pytest.mark.slow
def test_tampered_bundle_is_refused_and_nothing_written(dist: Path, host: Host) -> None:
    bad = host.tmp / "dist"
    shutil.copytree(dist, bad)
    (core,) = bad.glob("provisioning-core-*.tar.gz")
    data = bytearray(core.read_bytes())
    data[len(data) // 2] ^= 0xFF
    core.write_bytes(bytes(data))
    before = host.listing()
    r = host.install(bad)
    assert r.returncode != 0
    assert "checksum mismatch" in r.stderr and core.name in r.stderr
    assert host.listing() == before


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(dist: Path, host: Host) -> None:
    before = host.listing()
    r = host.install(dist, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"install:  {host.prefix}/bin/provisioning" in r.stdout
    assert f"{host.service_dir}/provisioning-orchestrator.service" in r.stdout
    assert host.listing() == before


@pytest.mark.slow
def test_reinstall_is_idempotent_and_upgrade_drops_stale_files(dist: Path, host: Host) -> None:
    assert host.install(dist).returncode == 0
    manifest = host.prefix / "share/provisioning/install-manifest"
    first = manifest.read_text()
    # pretend an older version shipped one more file and left an old extraction
    stale = host.prefix / "lib/provisioning/stale_op.py"
    stale.write_text("# from an older version\n")
    manifest.write_text(first + f"core f {stale}\n")
    old_unpack = host.home / ".shiv" / ("provisioning_" + "0" * 64)
    (old_unpack / "site-packages").mkdir(parents=True)

    r = host.install(dist)
    assert r.returncode == 0, r.stderr
    assert manifest.read_text() == first
    assert not stale.exists()
    assert not old_unpack.exists()
    assert host.run("provisioning", "version").returncode == 0


@pytest.mark.slow
def test_platform_bundle_alone_needs_core(dist: Path, host: Host) -> None:
    (plat,) = dist.glob("provisioning-platform-*.tar.gz")
    r = host.install(plat)
    assert r.returncode != 0
    assert "needs the core bundle installed first" in r.stderr
    assert list(host.prefix.iterdir()) == []


def test_refuses_old_python(host: Host, tmp_path: Path) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir()
    py = fake / "python3"
    py.write_text('#!/bin/sh\ncase "$*" in *version_info*) exit 1 ;; esac\necho 3.8.18\n')
    py.chmod(0o755)
    env = host.env(PATH=f"{fake}:{SYSTEM_PATH}")
    r = host.install_sh("--bundle", str(tmp_path), "--prefix", str(host.prefix), env=env)
    assert r.returncode != 0
    assert "python3 >= 3.10 is required" in r.stderr and "3.8.18" in r.stderr
    assert list(host.prefix.iterdir()) == []


def test_refuses_unusable_prefix(host: Host, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = host.install_sh("--bundle", str(tmp_path), "--prefix", str(blocker / "sub"))
    assert r.returncode != 0 and "is not a directory" in r.stderr
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        r = host.install_sh("--bundle", str(tmp_path), "--prefix", str(ro / "p"))
        assert r.returncode != 0 and "cannot write" in r.stderr


def test_online_install_without_base_url_says_what_to_do(host: Host) -> None:
    r = host.install_sh("--prefix", str(host.prefix))
    assert r.returncode != 0
    assert "PROVISIONING_BASE_URL" in r.stderr


def test_uninstall_without_manifest_refuses(host: Host) -> None:
    r = host.install_sh("--uninstall", "--prefix", str(host.prefix))
    assert r.returncode != 0 and "no install manifest" in r.stderr
