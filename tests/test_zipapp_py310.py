"""The core zipapp runs on Python 3.10, the oldest it claims (abi tag py3).

3.10 has no tomllib, so the core needs tomli there. pyproject's marker
(`python_version < '3.11'`) leaves tomli out of a build on 3.11+. So
packaging/build always adds tomli's pure-Python wheel (never a compiled
one, which would tie the zipapp to the build's CPython). Run when a python3.10
is installed (/usr/bin or pyenv), else skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.test_packaging import build_dist_once, zipapp_env


def python310() -> str | None:
    found = shutil.which("python3.10", path="/usr/bin:/bin:/usr/local/bin")
    if found:
        return found
    pyenv = sorted(Path("~/.pyenv/versions").expanduser().glob("3.10*/bin/python3.10"))
    return str(pyenv[-1]) if pyenv else None


@pytest.mark.slow
def test_the_build_carries_pure_python_tomli(tmp_path_factory):
    pyz = build_dist_once(tmp_path_factory)["dist"] / "provisioning"
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        info = json.loads(z.read("site-packages/provisioning/_zipapp_build.json"))
    assert "site-packages/tomli/__init__.py" in names
    assert not [n for n in names if "mypyc" in n or (n.startswith("site-packages/tomli/")
                                                     and n.endswith(".so"))]
    assert info["abi_tag"] == "py3"


@pytest.mark.slow
def test_the_zipapp_reads_toml_on_python_3_10(tmp_path_factory, tmp_path: Path):
    py310 = python310()
    if py310 is None:
        pytest.skip("no python3.10 here")
    pyz = build_dist_once(tmp_path_factory)["dist"] / "provisioning"
    workflow = tmp_path / "w.toml"
    workflow.write_text('[workflow]\nname = "w"\n\n[[tasks]]\nid = "a"\nop = "noop"\n')
    env = zipapp_env(tmp_path / "shiv")
    r = subprocess.run([py310, "-S", str(pyz), "config", "validate", str(workflow)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "is a valid workflow (1 task)" in r.stdout
    assert "Traceback" not in r.stderr
