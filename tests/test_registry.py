"""OpRegistry: lookup order, file kinds, refusals, and the built-in ops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.errors import ValidationError
from provisioning.ops.registry import BUILTIN_DIR, OpRegistry


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_builtins_resolve_to_scripts_run_by_this_python():
    reg = OpRegistry([])
    assert reg.resolve("noop") == [sys.executable, str(BUILTIN_DIR / "noop.py")]
    assert reg.resolve("shell.run") == [sys.executable, str(BUILTIN_DIR / "shell_run.py")]
    assert {"noop", "shell.run"} <= set(reg.names())


def test_python_nushell_and_executable_ops(tmp_path: Path):
    lib = tmp_path / "lib"
    py = _write(lib / "gadgets" / "create.py", "print('hi')\n")
    exe = _write(lib / "widget" / "spin", "#!/bin/sh\nexit 0\n", 0o755)
    _write(lib / "widget" / "notexec", "data\n", 0o644)
    reg = OpRegistry([lib])
    # `gadget` is tried as given and with an s appended
    assert reg.resolve("gadget.create") == [sys.executable, str(py)]
    assert reg.resolve("gadgets.create") == [sys.executable, str(py)]
    assert reg.resolve("widget.spin") == [str(exe)]
    assert not reg.has("widget.notexec")
    assert {"gadget.create", "widget.spin"} <= set(reg.names())


def test_first_dir_wins(tmp_path: Path):
    first = _write(tmp_path / "a" / "box" / "make.py", "")
    _write(tmp_path / "b" / "box" / "make.py", "")
    _write(tmp_path / "b" / "box" / "only.py", "")
    reg = OpRegistry([tmp_path / "a", tmp_path / "b"])
    assert reg.resolve("box.make")[1] == str(first)
    assert reg.resolve("box.only")[1] == str(tmp_path / "b" / "box" / "only.py")


def test_nushell_op_without_nu_is_a_clear_validation_error(tmp_path: Path):
    _write(tmp_path / "lib" / "taskservs" / "install.nu", "def main [] {}\n")
    reg = OpRegistry([tmp_path / "lib"], nushell_binary="nu-not-installed-here")
    assert reg.has("taskserv.install")
    with pytest.raises(ValidationError) as e:
        reg.resolve("taskserv.install")
    assert "Nushell" in str(e.value) and "install" in str(e.value).lower()
    assert e.value.exit_code == 2


def test_nushell_op_with_nu_runs_through_it(tmp_path: Path):
    fake_nu = _write(tmp_path / "bin" / "nu", "#!/bin/sh\nexit 0\n", 0o755)
    script = _write(tmp_path / "lib" / "taskservs" / "install.nu", "def main [] {}\n")
    reg = OpRegistry([tmp_path / "lib"], nushell_binary=str(fake_nu))
    assert reg.resolve("taskserv.install") == [str(fake_nu), "--stdin", str(script)]


def test_unknown_and_malformed_ops(tmp_path: Path):
    reg = OpRegistry([tmp_path])
    with pytest.raises(ValidationError, match="unknown op 'nothing.here'") as e:
        reg.resolve("nothing.here")
    assert str(tmp_path) in str(e.value)  # the hint lists where it looked
    _write(tmp_path / "etc" / "passwd.py", "")
    for bad in ("../etc.passwd", "a..b", ".hidden.x", "a/b.c", "plain"):
        assert not reg.has(bad), bad


def test_world_writable_files_and_dirs_are_refused(tmp_path: Path):
    lib = tmp_path / "lib"
    f = _write(lib / "gadgets" / "create.py", "")
    f.chmod(0o666)
    with pytest.raises(ValidationError, match="world-writable"):
        OpRegistry([lib]).resolve("gadget.create")
    f.chmod(0o644)
    (lib / "gadgets").chmod(0o777)
    with pytest.raises(ValidationError, match="world-writable"):
        OpRegistry([lib]).resolve("gadget.create")
    (lib / "gadgets").chmod(0o755)
    assert OpRegistry([lib]).resolve("gadget.create")[1] == str(f)


def test_package_lib_dir_comes_before_extension_dirs(tmp_path: Path):
    from provisioning.paths import package_lib_dir

    shipped = sorted(package_lib_dir().glob("*/*.py"))
    assert shipped, f"no business-logic ops shipped in {package_lib_dir()}"
    area, verb = shipped[0].parent.name, shipped[0].stem
    _write(tmp_path / area / f"{verb}.py", "")
    assert OpRegistry([tmp_path]).resolve(f"{area}.{verb}")[1] == str(shipped[0])


def _run_builtin(op: str, params, env=None) -> subprocess.CompletedProcess:
    argv = OpRegistry([]).resolve(op)
    return subprocess.run(argv, input=json.dumps(params).encode(), capture_output=True,
                          timeout=30, env=env)


def test_shell_run_passes_argv_verbatim_without_a_shell(tmp_path: Path):
    marker = tmp_path / "pwned"
    nasty = f"$(touch {marker}); `touch {marker}` && touch {marker} | ; '\" *"
    r = _run_builtin("shell.run", {"argv": ["printf", "%s", nasty]})
    assert r.returncode == 0
    assert r.stdout.decode() == nasty
    assert not marker.exists()


def test_shell_run_exit_code_cwd_and_env(tmp_path: Path):
    r = _run_builtin("shell.run", {"argv": ["sh", "-c", "exit 7"]})
    assert r.returncode == 7
    r = _run_builtin("shell.run", {"argv": ["sh", "-c", 'pwd; echo "$EXTRA"'],
                                   "cwd": str(tmp_path), "env": {"EXTRA": "x y"}})
    assert r.stdout.decode().split("\n")[:2] == [str(tmp_path.resolve()), "x y"]
    r = _run_builtin("shell.run", {"argv": ["definitely-not-a-command-xyz"]})
    assert r.returncode == 127 and b"command not found" in r.stderr


@pytest.mark.parametrize("params", [{}, {"argv": []}, {"argv": "true"}, {"argv": ["a", 1]},
                                    {"argv": ["true"], "env": {"A": 1}}])
def test_shell_run_rejects_bad_params(params):
    r = _run_builtin("shell.run", params)
    assert r.returncode == 2 and b"shell.run:" in r.stderr


def test_noop_succeeds_and_imports_nothing_heavy():
    r = _run_builtin("noop", {"anything": [1, 2]})
    assert r.returncode == 0
    # The built-ins must stay plain scripts: no package imports (fast start).
    for name in ("noop.py", "shell_run.py"):
        text = (BUILTIN_DIR / name).read_text()
        assert "import provisioning" not in text and "from provisioning" not in text
    assert os.access(BUILTIN_DIR / "noop.py", os.R_OK)
