"""Packaging: the shiv zipapp, the bundles, the service units (issue 7).

The build runs once per session (`build_dist_once`, also used by
tests/test_install.py) from a snapshot of the source tree, so helpers editing
the tree meanwhile cannot make two builds differ.
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from provisioning import __version__ as CORE_VERSION
from provisioning import zipapp
from provisioning.versions import PLATFORM_VERSION

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "build"
EPOCH = "1700000000"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

_built: dict[str, Path] = {}


def snapshot_source(dest: Path) -> Path:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "install.sh"):
        shutil.copy2(REPO / name, dest / name)
    if (REPO / "README.md").exists():
        shutil.copy2(REPO / "README.md", dest / "README.md")
    shutil.copytree(REPO / "provisioning", dest / "provisioning", ignore=ignore)
    shutil.copytree(REPO / "packaging", dest / "packaging", ignore=ignore)
    return dest


def run_build(source: Path, out: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    for name in list(env):
        if name.startswith("PROVISIONING_"):
            del env[name]
    r = subprocess.run([sys.executable, str(BUILD), "--source", str(source), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"packaging/build failed:\n{r.stdout}\n{r.stderr}"


def build_dist_once(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build dist/ once per session: {"dist", "source"}."""
    if not _built:
        root = factory.mktemp("packaging-build")
        source = snapshot_source(root / "src")
        run_build(source, root / "dist")
        _built.update(dist=root / "dist", source=source, root=root)
    return dict(_built)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_dist_once(tmp_path_factory)


def zipapp_env(shiv_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROVISIONING_", "SHIV_"))}
    env.update(SHIV_ROOT=str(shiv_root), PATH="/usr/bin:/bin", **extra)
    return env


# ---------------------------------------------------------------- the zipapp


@pytest.mark.slow
def test_build_outputs_are_named_and_summed(built: dict[str, Path]) -> None:
    dist = built["dist"]
    tag = f"{sys.platform}-{os.uname().machine}-py3"
    core = dist / f"provisioning-core-{CORE_VERSION}-{tag}.tar.gz"
    plat = dist / f"provisioning-platform-{PLATFORM_VERSION}-{tag}.tar.gz"
    assert core.is_file() and plat.is_file()
    assert (dist / "provisioning").read_bytes().startswith(b"#!/usr/bin/env python3\n")
    sums = dict(reversed(line.split("  ", 1)) for line in
                (dist / "SHA256SUMS").read_text().splitlines())
    (providers,) = dist.glob(f"provisioning-providers-{CORE_VERSION}.tar.gz")
    assert set(sums) == {"provisioning", core.name, plat.name, providers.name, "install.sh"}
    import hashlib

    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_bundle_layout_and_fixed_metadata(built: dict[str, Path]) -> None:
    dist = built["dist"]
    (core,) = dist.glob("provisioning-core-*.tar.gz")
    (plat,) = dist.glob("provisioning-platform-*.tar.gz")
    with tarfile.open(core) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
        assert {"bin/provisioning", "share/provisioning/versions.toml",
                "share/provisioning/config/config.defaults.toml",
                "share/provisioning/completions/provisioning.bash", "BUNDLE"} <= set(members)
        assert members["bin/provisioning"].mode == 0o755
        if (built["source"] / "provisioning" / "lib").is_dir():
            assert any(n.startswith("lib/provisioning/") for n in members)
        assert all(m.mtime == int(EPOCH) and m.uid == 0 and m.gid == 0 for m in members.values())
        meta = tf.extractfile(core.name[:-7] + "/BUNDLE").read().decode()
        assert f"version={CORE_VERSION}" in meta and "component=core" in meta
    with tarfile.open(plat) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
        link = members["bin/provisioning-orchestrator"]
        assert link.issym() and link.linkname == "provisioning"
        assert {"share/provisioning/units/provisioning-orchestrator.service",
                "share/provisioning/units/io.provisioning.orchestrator.plist",
                "share/provisioning/versions.toml"} <= set(members)


@pytest.mark.slow
def test_providers_bundle_holds_pure_wheels_with_their_sums(built: dict[str, Path]) -> None:
    import hashlib

    (bundle,) = built["dist"].glob("provisioning-providers-*.tar.gz")
    top = bundle.name[:-len(".tar.gz")]
    with tarfile.open(bundle) as tf:
        files = {m.name[len(top) + 1:]: tf.extractfile(m).read()
                 for m in tf.getmembers() if m.isfile()}
    wheels = {n.split("/", 1)[1] for n in files if n.endswith(".whl")}
    assert any(w.startswith("boto3-") for w in wheels)
    assert any(w.startswith("botocore-") for w in wheels)
    assert all(w.endswith("-none-any.whl") for w in wheels)  # one bundle for every platform
    sums = dict(reversed(line.split("  ", 1))
                for line in files["wheels/SHA256SUMS"].decode().splitlines())
    assert set(sums) == wheels
    for name, digest in sums.items():
        assert hashlib.sha256(files[f"wheels/{name}"]).hexdigest() == digest
    assert files["requirements.txt"].decode().splitlines() == ["boto3>=1.28"]
    meta = files["BUNDLE"].decode()
    assert "component=providers" in meta and f"version={CORE_VERSION}" in meta
    # the core zipapp does not grow by the SDKs
    with zipfile.ZipFile(built["dist"] / "provisioning") as z:
        assert not any(n.startswith(("site-packages/boto3/", "site-packages/botocore/"))
                       for n in z.namelist())


@pytest.mark.slow
def test_build_is_reproducible(built: dict[str, Path]) -> None:
    second = built["root"] / "dist-again"
    run_build(built["source"], second)
    assert (second / "provisioning").read_bytes() == (built["dist"] / "provisioning").read_bytes()
    # the bundles (tar + gzip) are byte-identical too
    assert (second / "SHA256SUMS").read_text() == (built["dist"] / "SHA256SUMS").read_text()


@pytest.mark.slow
def test_zipapp_runs_cli_and_answers_as_orchestrator(built: dict[str, Path],
                                                     tmp_path: Path) -> None:
    pyz = tmp_path / "bin" / "provisioning"
    pyz.parent.mkdir()
    shutil.copy2(built["dist"] / "provisioning", pyz)
    (tmp_path / "bin" / "provisioning-orchestrator").symlink_to("provisioning")
    env = zipapp_env(tmp_path / "shiv")
    r = subprocess.run([str(pyz), "--json", "version"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["core_version"] == CORE_VERSION
    for argv, extra in (([str(tmp_path / "bin" / "provisioning-orchestrator"), "--help"], {}),
                        ([str(pyz), "--help"], {"PROVISIONING_ENTRY": "orchestrator"})):
        r = subprocess.run(argv, capture_output=True, text=True, env={**env, **extra},
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "usage: provisioning-orchestrator" in r.stdout
    # ...and without either, the same file is the CLI
    r = subprocess.run([str(pyz), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert "provisioning-orchestrator" not in r.stdout.splitlines()[0]


@pytest.mark.slow
def test_five_concurrent_first_runs_extract_once(built: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "shiv"
    env = zipapp_env(root)
    procs = [subprocess.Popen([SYSTEM_PYTHON, str(built["dist"] / "provisioning"), "version"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(5)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all(rc == 0 for rc, _ in results), results
    extracted = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    assert len(extracted) == 1 and extracted[0].startswith("provisioning_"), extracted
    assert (root / extracted[0] / "site-packages" / "provisioning" / "zipapp.py").is_file()


def _patched_zipapp(src: Path, dest: Path, build_info: dict) -> None:
    with src.open("rb") as f:
        shebang = f.readline()
    with zipfile.ZipFile(src) as zin, dest.open("wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename == "site-packages/provisioning/_zipapp_build.json":
                    data = json.dumps(build_info).encode()
                zout.writestr(info, data)
    dest.chmod(0o755)


@pytest.mark.slow
def test_zipapp_for_another_platform_says_what_is_wrong(built: dict[str, Path],
                                                        tmp_path: Path) -> None:
    pyz = built["dist"] / "provisioning"
    with zipfile.ZipFile(pyz) as z:
        info = json.loads(z.read("site-packages/provisioning/_zipapp_build.json"))
    assert info["extensions"] and info["platform_tag"] == f"{sys.platform}-{os.uname().machine}"
    other = dict(info, machine="riscv64", platform_tag=f"{sys.platform}-riscv64")
    bad = tmp_path / "provisioning"
    _patched_zipapp(pyz, bad, other)
    r = subprocess.run([SYSTEM_PYTHON, str(bad), "version"], capture_output=True, text=True,
                       env=zipapp_env(tmp_path / "shiv"), timeout=60)
    assert r.returncode == 2
    assert "built for " + other["platform_tag"] in r.stderr
    assert "CPU " + os.uname().machine in r.stderr
    assert "Traceback" not in r.stderr


def test_platform_problem_checks() -> None:
    machine = os.uname().machine
    ok = {"sys_platform": sys.platform, "machine": machine, "extensions": [],
          "platform_tag": f"{sys.platform}-{machine}"}
    assert zipapp.platform_problem(None) is None
    assert zipapp.platform_problem(ok) is None
    assert "operating system" in zipapp.platform_problem(dict(ok, sys_platform="darwin0"))
    wrong_abi = zipapp.platform_problem(dict(ok, extensions=["psutil/_psutil.cpython-27-x.so"]))
    assert "cannot load psutil/_psutil.cpython-27-x.so" in wrong_abi
    if zipapp._glibc_version():
        assert "glibc" in zipapp.platform_problem(dict(ok, libc="glibc", min_glibc=[99, 0]))
    assert zipapp.normalize_machine("arm64") == zipapp.normalize_machine("aarch64")


def test_entry_dispatch_by_name_and_env() -> None:
    assert zipapp._wants_orchestrator("/usr/local/bin/provisioning-orchestrator", {})
    assert not zipapp._wants_orchestrator("/usr/local/bin/provisioning", {})
    assert zipapp._wants_orchestrator("/x/provisioning", {"PROVISIONING_ENTRY": "orchestrator"})
    assert not zipapp._wants_orchestrator("/x/provisioning-orchestrator",
                                          {"PROVISIONING_ENTRY": "cli"})


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to run the zipapp as a uid without a passwd entry")
def test_no_home_never_extracts_into_cwd(built: dict[str, Path]) -> None:
    uid = 54321  # no passwd entry: HOME unset and ~ cannot be expanded
    import pwd

    try:
        pwd.getpwuid(uid)
        pytest.skip(f"uid {uid} exists here")
    except KeyError:
        pass
    # tmp_path's parents are 0700 root: use a world-traversable dir of our own
    base = Path(tempfile.mkdtemp(prefix="provisioning-nohome-"))
    try:
        base.chmod(0o755)
        pyz = base / "provisioning"
        shutil.copy2(built["dist"] / "provisioning", pyz)
        pyz.chmod(0o755)
        cwd = base / "cwd"
        cwd.mkdir()
        os.chown(cwd, uid, uid)
        env = {"PATH": "/usr/bin:/bin"}

        def as_nobody() -> None:
            os.setgid(uid)
            os.setuid(uid)

        r = subprocess.run([SYSTEM_PYTHON, str(pyz), "version"], capture_output=True,
                           text=True, env=env, cwd=cwd, timeout=60, preexec_fn=as_nobody)
        assert r.returncode == 2
        assert "set SHIV_ROOT" in r.stderr
        assert list(cwd.iterdir()) == []
        # with a cache dir of its own, it unpacks there
        cache = base / "cache"
        cache.mkdir()
        os.chown(cache, uid, uid)
        r = subprocess.run([SYSTEM_PYTHON, str(pyz), "version"], capture_output=True, text=True,
                           env={**env, "XDG_CACHE_HOME": str(cache)}, cwd=cwd, timeout=60,
                           preexec_fn=as_nobody)
        assert r.returncode == 0, r.stderr
        assert any(p.name.startswith("provisioning_") for p in (cache / "shiv").iterdir())
        assert list(cwd.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- units and config


def _unit_with_real_exec(src: Path, dest_dir: Path) -> Path:
    """verify checks that ExecStart exists: point it at a real executable."""
    exe = dest_dir / "provisioning-orchestrator"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    dest = dest_dir / src.name
    dest.write_text(src.read_text().replace("/usr/local/bin/provisioning-orchestrator", str(exe)))
    return dest


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (CI installs the systemd package)")
def test_system_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_with_real_exec(REPO / "packaging/systemd/provisioning-orchestrator.service",
                                tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # verify only warns about unknown keys and bad values: any line naming our unit fails
    assert unit.name not in r.stderr, r.stderr
    # and it does catch a broken unit (so the check above means something)
    broken = tmp_path / "broken" / unit.name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Type=notify", "Tpye=notify"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                       text=True, timeout=60)
    assert "Tpye" in r.stderr


def _directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, value)
    return out


def test_units_carry_the_required_settings() -> None:
    from provisioning.config import ExecutorConfig

    system = _directives(REPO / "packaging/systemd/provisioning-orchestrator.service")
    user = _directives(REPO / "packaging/systemd/user/provisioning-orchestrator.service")
    for unit in (system, user):
        assert unit["Type"] == "notify"
        assert unit["ExecStart"] == "/usr/local/bin/provisioning-orchestrator"
        assert unit["Restart"] == "on-failure"
        assert unit["KillMode"] == "mixed"
        assert unit["NoNewPrivileges"] == "yes"
        assert int(unit["TimeoutStopSec"]) > ExecutorConfig().shutdown_grace_seconds
        assert unit["Environment"].startswith("SHIV_ROOT=")
    assert system["Environment"] == "SHIV_ROOT=/var/cache/provisioning/shiv"
    assert system["StateDirectory"] == system["CacheDirectory"] == "provisioning"
    assert system["ProtectSystem"] == "strict"
    assert system["ReadWritePaths"] == "/var/lib/provisioning"
    assert system["PrivateTmp"] == "yes"


def test_launchd_plist_parses_with_required_keys() -> None:
    (path,) = (REPO / "packaging" / "launchd").glob("*.plist")
    with path.open("rb") as f:
        plist = plistlib.load(f)
    assert path.name == plist["Label"] + ".plist"
    assert plist["ProgramArguments"] == ["/usr/local/bin/provisioning-orchestrator"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] and plist["StandardErrorPath"]
    assert plist["EnvironmentVariables"]["SHIV_ROOT"].endswith("/provisioning/shiv")
    assert "--daemon" not in plist["ProgramArguments"]  # launchd jobs must not fork away


def test_shipped_defaults_are_valid_and_change_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioning.config import load_config, validate_file

    defaults = REPO / "provisioning" / "config" / "config.defaults.toml"
    validate_file(defaults)
    share = tmp_path / "share"
    (share / "config").mkdir(parents=True)
    shutil.copy2(defaults, share / "config" / "config.defaults.toml")
    monkeypatch.setenv("PROVISIONING_SHARE_DIR", str(share))
    with_file = load_config()
    assert any(exists and p.parent.parent == share for _, p, exists in with_file.files)
    shutil.rmtree(share)
    assert with_file.as_dict() == load_config().as_dict()
