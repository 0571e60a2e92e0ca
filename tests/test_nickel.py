"""Nickel files (DESIGN.md 14): the loader, the shipped contracts, the bounds, the
fallbacks. Evaluation is real: py-nickel in its child process, or (for the binary
path) a stand-in `nickel` executable, since no nickel binary can be installed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning import nickel
from provisioning.engine.loader import TASK_KEYS, WORKFLOW_KEYS, load_workflow_file
from provisioning.errors import UsageError, ValidationError
from provisioning.ops import infra as infra_mod
from provisioning.ops.infra import load_infra
from provisioning.planner.build import resolve_infra_params
from tests.conftest import REPO

needs_library = pytest.mark.skipif(not nickel.library_available(),
                                   reason="py-nickel is not installed (extra provisioning[nickel], "
                                   "Python >= 3.11)")
pytestmark = needs_library

HEAD = 'let P = import "provisioning/workflow.ncl" in\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        load_workflow_file(path)
    assert e.value.exit_code == 2
    return e.value


def test_generated_tasks_with_std_array_map(tmp_path: Path):
    f = write(tmp_path / "gen.ncl", HEAD + """{
  workflow = { name = "generated", max_parallel = 4 },
  tasks = std.array.map (fun i => {
      id = "t-%{std.to_string i}",
      op = "noop",
      priority = if i == 0 then 'critical else 'low,
      depends_on = if i == 0 then [] else ["t-0"],
    }) (std.array.range 0 20),
} | P.Workflow
""")
    spec = load_workflow_file(f)
    assert spec.name == "generated" and spec.max_parallel == 4
    assert [t.id for t in spec.tasks] == [f"t-{i}" for i in range(20)]
    assert spec.tasks[0].priority == "critical" and spec.tasks[5].priority == "low"
    assert spec.tasks[7].depends_on == ("t-0",)


def test_imports_between_files_resolve_from_the_importing_file(tmp_path: Path):
    # The workflow is read from another directory (the test's cwd is tmp_path/work).
    write(tmp_path / "wf" / "lib" / "servers.ncl",
          'let common = import "../common.ncl" in\n'
          '{ names = ["web-1", "web-2"], retries = common.retries }\n')
    write(tmp_path / "wf" / "common.ncl", "{ retries = 3 }\n")
    f = write(tmp_path / "wf" / "main.ncl", HEAD + """let servers = import "lib/servers.ncl" in
{
  tasks = std.array.map (fun n => { id = n, op = "noop", retries = servers.retries })
    servers.names,
} | P.Workflow
""")
    spec = load_workflow_file(Path(os.path.relpath(f)))
    assert spec.name == "main"  # the file's stem, as for TOML
    assert [(t.id, t.retries) for t in spec.tasks] == [("web-1", 3), ("web-2", 3)]


def test_contract_violation_names_file_line_column_field_and_every_problem(tmp_path: Path):
    f = write(tmp_path / "bad.ncl", HEAD + """{
  tasks = [
    { id = "a", op = "noop" },
    { id = "b", op = "noop",
      priority = 'urgent },
    { id = "c", op = "shell.run" },
  ],
} | P.Workflow
""")
    e = refused(f)
    text = str(e)
    first = text.splitlines()[0]
    assert first == (f"{f}:6:18: contract broken by the value of `priority`: "
                     "priority must be one of 'low, 'normal, 'high, 'critical"), text
    assert "for example priority = 'high" in text  # the fix
    # The Python validation, run on the export without contracts, lists every problem,
    # also one that only the loader checks (shell.run's params).
    assert "every problem of the file, checked without the contracts:" in text
    assert f"{f}: task 'b' field 'priority': must be one of low, normal, high, critical" in text
    assert f"{f}: task 'c' field 'params': shell.run needs \"argv\"" in text  # no contract
    assert "\x1b[" not in text  # no colours off a terminal
    assert "\x1b[" in e.render(color=True) and e.render(color=True).startswith(first)


def test_unknown_field_and_syntax_error_are_located(tmp_path: Path):
    f = write(tmp_path / "typo.ncl", HEAD + '{ tasks = [ { id = "a", op = "noop", retires = 2 } ] }'
              " | P.Workflow\n")
    text = str(refused(f))
    assert text.startswith(f"{f}:2:13: contract broken by the value of `tasks`: extra field "
                           "`retires`"), text
    assert "Have you misspelled a field?" in text
    assert "task 'a' field 'retires': unknown field" in text
    g = write(tmp_path / "syntax.ncl", '{ tasks = [ { id = "a" op = "noop" } ] }\n')
    assert str(refused(g)).startswith(f"{g}:1:27: unexpected token")


def test_self_reference_in_a_record_gets_the_fix(tmp_path: Path):
    f = write(tmp_path / "rec.ncl", HEAD + """let task = fun server => { id = server, op = "noop",
  params = { server = server } } in
{ tasks = [task "a"] } | P.Workflow
""")
    e = refused(f)
    assert str(e).startswith(f"{f}:3:23: infinite recursion")
    assert "rename the variable" in (e.hint or "")


def test_python_checks_run_after_the_export(tmp_path: Path):
    # Graph checks are the loader's: the contracts pass, the loader names the cycle.
    f = write(tmp_path / "cycle.ncl", HEAD + """{ tasks = [
  { id = "a", op = "noop", depends_on = ["b"] },
  { id = "b", op = "noop", depends_on = ["a"] },
] } | P.Workflow
""")
    assert "dependency cycle: a -> b -> a" in str(refused(f))


def test_a_file_without_the_contracts_gets_the_python_report(tmp_path: Path):
    f = write(tmp_path / "plain.ncl", '{ tasks = [ { id = "a", op = "noop", retries = -1 },'
              ' { id = "b" } ] }\n')
    text = str(refused(f))
    assert text.startswith("2 problems:"), text
    assert "task 'b' field 'op'" in text and "task 'a' field 'retries'" in text


def test_non_terminating_file_is_stopped_by_the_time_bound(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(nickel.TIMEOUT_ENV, "1")
    # exponential, not deep: little memory, so the deadline is what stops it
    f = write(tmp_path / "slow.ncl", "let rec fib = fun n => if n < 2 then n else "
              "fib (n - 1) + fib (n - 2) in { tasks = [], n = fib 60 }\n")
    e = refused(f)
    assert f"{f}: Nickel evaluation did not finish within 1 s and was stopped" in str(e)
    assert nickel.TIMEOUT_ENV in (e.hint or "")


def test_runaway_recursion_is_stopped_by_the_memory_bound(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(nickel.MEMORY_ENV, "300")
    monkeypatch.setenv(nickel.TIMEOUT_ENV, "60")
    f = write(tmp_path / "deep.ncl", "let rec f = fun x => 1 + f (x + 1) in { tasks = [], "
              "n = f 0 }\n")
    e = refused(f)
    assert f"{f}: Nickel evaluation was stopped" in str(e)
    assert "300 MiB of memory or stack" in str(e) and nickel.MEMORY_ENV in (e.hint or "")


def test_awkward_file_names_are_imported_verbatim(tmp_path: Path):
    f = write(tmp_path / 'we"ird %{x} \\dir' / "w.ncl", '{ tasks = [ { id = "a", op = "noop" } ] }')
    assert [t.id for t in load_workflow_file(f).tasks] == ["a"]


def test_bad_bound_settings_are_usage_errors(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(nickel.TIMEOUT_ENV, "soon")
    with pytest.raises(UsageError, match=nickel.TIMEOUT_ENV):
        load_workflow_file(write(tmp_path / "w.ncl", "{}"))


# -- the contracts say what the Python validation says ------------------------

GOOD_TASK = {"id": "a", "op": "noop", "params": {"k": 1}, "depends_on": [], "priority": "high",
             "retries": 2, "timeout_s": 5}
GOOD_HEAD = {"name": "w", "max_parallel": 2, "kind": "batch", "description": "d"}
BAD_VALUES = [("task", "id", "a.b"), ("task", "id", ""), ("task", "op", ""), ("task", "op", 3),
              ("task", "params", [1]), ("task", "depends_on", [1]),
              ("task", "priority", "urgent"), ("task", "retries", 101),
              ("task", "retries", -1), ("task", "retries", 1.5), ("task", "timeout_s", 0),
              ("workflow", "name", ""), ("workflow", "max_parallel", 0),
              ("workflow", "kind", ""), ("workflow", "description", 5),
              ("task", "colour", "red"), ("workflow", "colour", "red")]


def _nickel_doc(tmp_path: Path, doc: dict, contract: str = "P.Workflow") -> Path:
    write(tmp_path / "doc.json", json.dumps(doc))
    return write(tmp_path / "doc.ncl", HEAD + f'(import "doc.json") | {contract}\n')


def test_every_field_python_accepts_the_contract_accepts(tmp_path: Path):
    assert set(GOOD_TASK) == set(TASK_KEYS) and set(GOOD_HEAD) == set(WORKFLOW_KEYS)
    spec = load_workflow_file(_nickel_doc(tmp_path, {"workflow": GOOD_HEAD, "tasks": [GOOD_TASK]}))
    assert spec.tasks[0].timeout_s == 5 and spec.kind == "batch"


@pytest.mark.parametrize(("where", "key", "value"), BAD_VALUES)
def test_what_python_refuses_the_contract_refuses_at_its_line(tmp_path: Path, where, key, value):
    task, head = dict(GOOD_TASK), dict(GOOD_HEAD)
    (task if where == "task" else head)[key] = value
    e = refused(_nickel_doc(tmp_path, {"workflow": head, "tasks": [task]}))
    assert isinstance(e, nickel.NickelError) and "contract broken" in e.headline, str(e)
    assert e.headline.startswith(f"{tmp_path / 'doc.json'}:1:"), e.headline  # the value's place
    assert e.problems and f"field '{key}'" in e.problems  # and Python agrees


def test_lenient_stand_ins_define_the_same_names(tmp_path: Path):
    for name in ("workflow", "infra"):
        fields = []
        for contracts in (nickel.CONTRACTS_DIR, nickel.LENIENT_DIR):
            target = contracts / "provisioning" / f"{name}.ncl"
            probe = write(tmp_path / f"{name}-{contracts.name}.ncl",
                          f'std.record.fields (import "{target}")\n')
            fields.append(nickel.export(probe))
        assert fields[0] == fields[1] and len(fields[0]) > 3, fields


# -- infra settings.ncl ------------------------------------------------------

INFRA_HEAD = 'let I = import "provisioning/infra.ncl" in\n'


def test_example_nickel_infra_loads_like_a_toml_one():
    infra = load_infra(REPO / "examples" / "infra" / "multicloud")
    assert infra.name == "multicloud" and infra.provider == "local"
    assert [s.hostname for s in infra.servers] == [f"node-{i}" for i in range(1, 6)]
    assert infra.server("node-1").labels == {"role": "control-plane"}
    assert infra.taskserv_plan("node-3") == ["kubernetes", "app"]
    assert infra.file.name == "settings.ncl"


def test_infra_contract_error_is_located_and_python_agrees(tmp_path: Path):
    d = tmp_path / "ws" / "infra" / "bad"
    write(d / "settings.ncl", INFRA_HEAD + """{
  infra = { name = "bad", provider = "local" },
  servers = [ { hostname = "web_1" } ],
} | I.Infra
""")
    with pytest.raises(ValidationError) as e:
        load_infra(d)
    text = str(e.value)
    assert text.startswith(f"{d / 'settings.ncl'}:4:28: contract broken by the value of "
                           "`hostname`: a hostname is 1-63 letters"), text
    assert "servers[0].hostname 'web_1' is not a valid hostname" in text


SERVER_SAMPLE = {str: "x", list: [], dict: {}, int: 22}


def test_infra_contract_accepts_every_key_python_accepts(tmp_path: Path):
    server = {k: SERVER_SAMPLE[t] for k, t in infra_mod.SERVER_KEYS.items()}
    server.update(hostname="web-1", taskservs=[])
    doc = {"infra": {"name": "ok", "provider": "local", "description": "d"},
           "provider": {}, "settings": {"a": 1}, "taskservs": {}, "servers": [server],
           "clusters": {"all": {"servers": ["web-1"], "description": "d"}}}
    assert set(doc) == infra_mod.TOP_KEYS and set(doc["infra"]) == set(infra_mod.INFRA_KEYS)
    assert set(doc["clusters"]["all"]) == set(infra_mod.CLUSTER_KEYS)
    d = tmp_path / "ws" / "infra" / "ok"
    write(d / "doc.json", json.dumps(doc))
    write(d / "settings.ncl", INFRA_HEAD + '(import "doc.json") | I.Infra\n')
    assert load_infra(d).server("web-1").hostname == "web-1", (
        "update provisioning/ncl/provisioning/infra.ncl with the keys ops/infra.py accepts")


# -- without the library: the binary, then neither (real subprocesses) --------

def _site_without_nickel(tmp_path: Path) -> Path:
    """The venv's site-packages as symlinks, less py-nickel: a Python run with -S
    and this on PYTHONPATH really cannot import nickel."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    out = tmp_path / "site-no-nickel"
    if out.is_dir():
        return out
    out.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("nickel", "py_nickel")) or entry.suffix == ".pth":
            continue
        (out / entry.name).symlink_to(entry)
    return out


def _cli_without_library(tmp_path: Path, *args: str, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{_site_without_nickel(tmp_path)}",
           "PATH": path}
    code = "import sys; from provisioning.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-S", "-c", code, *args], capture_output=True,
                          text=True, env=env, timeout=60)


STAND_IN = '''#!{python}
"""A stand-in for the nickel CLI, which cannot be installed here: it speaks only
`nickel export --format json [--import-path DIR]... FILE`, evaluating with py-nickel."""
import re, sys
import nickel
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:3] != ["export", "--format", "json"]:
    sys.exit("stand-in: unexpected arguments " + " ".join(args))
paths, rest = [], args[3:]
while rest and rest[0] == "--import-path":
    paths, rest = paths + [rest[1]], rest[2:]
try:
    sys.stdout.write(nickel.run('import "%s"' % rest[0], import_paths=paths))
except nickel.NickelException as e:
    sys.stderr.write(re.sub(r"\\x1b\\[[0-9;]*m", "", str(e)))  # the CLI's colour=auto
    sys.exit(1)
'''


def test_without_the_library_the_nickel_binary_on_path_is_used(tmp_path: Path):
    bindir, log = tmp_path / "bin", tmp_path / "nickel-argv.log"
    write(bindir / "nickel", STAND_IN.format(python=sys.executable, log=str(log)))
    (bindir / "nickel").chmod(0o755)
    good = write(tmp_path / "good.ncl", HEAD + '{ tasks = [ { id = "a", op = "noop" } ] } '
                 "| P.Workflow\n")
    r = _cli_without_library(tmp_path, "config", "validate", str(good),
                             path=f"{bindir}{os.pathsep}{os.defpath}")
    assert r.returncode == 0, r.stderr
    assert f"ok: {good} is a valid workflow (1 task)" in r.stdout
    assert log.read_text().split() == ["export", "--format", "json", "--import-path",
                                       str(nickel.CONTRACTS_DIR), str(good.resolve())]
    bad = write(tmp_path / "bad.ncl", HEAD + '{ tasks = [ { id = "a", op = "noop",\n'
                "  priority = 'urgent } ] } | P.Workflow\n")
    r = _cli_without_library(tmp_path, "config", "validate", str(bad),
                             path=f"{bindir}{os.pathsep}{os.defpath}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {bad}:3:14: contract broken by the value of `priority`")


def test_neither_library_nor_binary_exits_2_naming_both(tmp_path: Path):
    f = write(tmp_path / "w.ncl", '{ tasks = [ { id = "a", op = "noop" } ] }')
    r = _cli_without_library(tmp_path, "workflow", "submit", "--direct", str(f),
                             path=str(tmp_path / "empty"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "needs the Nickel library or the `nickel` binary, and neither is installed" in r.stderr
    assert "pip install 'provisioning[nickel]'" in r.stderr and "binary on PATH" in r.stderr


def test_commands_without_nickel_files_do_not_import_the_loader():
    # start-up (bench/cli_start.py): the Nickel loader is imported by the first .ncl file only
    code = ("import sys; import provisioning.engine.loader, provisioning.ops.infra, "
            "provisioning.cli.workflow, provisioning.cli.config_cmd; "
            "sys.exit('provisioning.nickel' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def test_relative_infra_params_resolve_next_to_the_workflow_file(tmp_path: Path):
    ws = tmp_path / "ws"
    write(ws / "infra" / "demo" / "settings.toml", '[infra]\nprovider = "local"\n')
    f = write(ws / "flows" / "w.ncl", '{ tasks = [ { id = "a", op = "server.create", '
              'params = { infra = "demo" } }, { id = "b", op = "noop" } ] }')
    spec = resolve_infra_params(load_workflow_file(f), f.parent, source=str(f))
    assert spec.tasks[0].params == {"infra": str((ws / "infra" / "demo").resolve())}
    bad = write(ws / "flows" / "bad.ncl", '{ tasks = [ { id = "a", op = "server.create", '
                'params = { infra = "nope" } } ] }')
    with pytest.raises(ValidationError, match=r"bad.ncl: task 'a' params.infra: unknown infra "
                                              r"'nope'"):
        resolve_infra_params(load_workflow_file(bad), bad.parent, source=str(bad))
