"""Workflow loader: formats, round-trip, and one precise message per mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.engine.loader import load_workflow_file, parse_workflow
from provisioning.errors import UsageError, ValidationError
from provisioning.model import TaskSpec, WorkflowSpec
from provisioning.ops.registry import OpRegistry

TOML = """
[workflow]
name = "multi-cloud-deployment"
max_parallel = 5
description = "two servers and a cluster"

[[tasks]]
id = "web-1"
op = "shell.run"
params = { argv = ["echo", "web-1"] }
priority = "high"
retries = 2
timeout_s = 600

[[tasks]]
id = "k8s"
op = "noop"
params = { infra = "wuji", taskserv = "kubernetes" }
depends_on = ["web-1"]
"""


def _doc(*tasks, **head):
    return {"workflow": {"name": "w", **head}, "tasks": list(tasks)}


def _err(data, registry=None, source="wf.toml") -> str:
    with pytest.raises(ValidationError) as e:
        parse_workflow(data, source=source, registry=registry)
    assert e.value.exit_code == 2
    return str(e.value)


def test_toml_file(tmp_path: Path):
    f = tmp_path / "deploy.toml"
    f.write_text(TOML)
    spec = load_workflow_file(f, registry=OpRegistry([]))
    assert spec.name == "multi-cloud-deployment" and spec.max_parallel == 5
    assert spec.tasks[0] == TaskSpec(id="web-1", op="shell.run",
                                     params={"argv": ["echo", "web-1"]}, priority="high",
                                     retries=2, timeout_s=600)
    assert spec.tasks[1].depends_on == ("web-1",)


def test_json_file_and_default_name(tmp_path: Path):
    f = tmp_path / "batch-7.json"
    f.write_text(json.dumps({"tasks": [{"id": "a", "op": "noop"}]}))
    spec = load_workflow_file(f)
    assert spec.name == "batch-7" and spec.kind == "workflow"


def test_round_trip_of_to_dict_keeps_kind_and_nulls():
    spec = WorkflowSpec(name="srv", kind="server.create", max_parallel=None, tasks=(
        TaskSpec(id="a", op="noop"), TaskSpec(id="b", op="noop", depends_on=("a",),
                                              priority="critical", retries=3, timeout_s=9)))
    again = parse_workflow(json.loads(json.dumps(spec.to_dict())), source="api")
    assert again == spec


def test_file_errors(tmp_path: Path):
    with pytest.raises(UsageError, match="not found"):
        load_workflow_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[workflow\nname=1")
    with pytest.raises(ValidationError, match=r"bad.toml: invalid TOML"):
        load_workflow_file(bad)
    badj = tmp_path / "bad.json"
    badj.write_text('{"tasks": [}')
    with pytest.raises(ValidationError, match=r"bad.json:1:\d+: invalid JSON"):
        load_workflow_file(badj)
    yml = tmp_path / "w.yaml"
    yml.write_text("x")
    with pytest.raises(UsageError, match="unsupported"):
        load_workflow_file(yml)


def test_unknown_op_names_source_task_and_field(tmp_path: Path):
    msg = _err(_doc({"id": "a", "op": "noop"}, {"id": "web", "op": "server.teleport"}),
               registry=OpRegistry([tmp_path]))
    assert "wf.toml: task 'web' field 'op': unknown op 'server.teleport'" in msg


def test_duplicate_id():
    msg = _err(_doc({"id": "a", "op": "noop"}, {"id": "a", "op": "noop"}))
    assert "task 'a' field 'id': duplicate id (tasks #1 and #2)" in msg


def test_missing_dependency():
    msg = _err(_doc({"id": "a", "op": "noop", "depends_on": ["ghost"]}))
    assert "task 'a' field 'depends_on': depends on 'ghost', which is not a task" in msg


def test_cycle_is_printed():
    msg = _err(_doc({"id": "a", "op": "noop", "depends_on": ["b"]},
                    {"id": "b", "op": "noop", "depends_on": ["c"]},
                    {"id": "c", "op": "noop", "depends_on": ["a"]},
                    {"id": "free", "op": "noop"}))
    assert "dependency cycle: a -> b -> c -> a" in msg
    assert "dependency cycle: x -> x" in _err(_doc({"id": "x", "op": "noop",
                                                    "depends_on": ["x"]}))


def test_long_chain_and_long_cycle_need_no_recursion():
    n = 20_000
    chain = [{"id": f"t{i}", "op": "noop", "depends_on": [f"t{i - 1}"] if i else []}
             for i in range(n)]
    assert len(parse_workflow(_doc(*chain), source="big").tasks) == n
    chain[0]["depends_on"] = [f"t{n - 1}"]
    assert "dependency cycle: t0 -> t19999 -> t19998" in _err(_doc(*chain))


@pytest.mark.parametrize("task, expected", [
    ({"id": "a", "op": "noop", "retries": -1}, "field 'retries': must be an integer from 0"),
    ({"id": "a", "op": "noop", "retries": "2"}, "field 'retries'"),
    ({"id": "a", "op": "noop", "priority": "urgent"},
     "field 'priority': must be one of low, normal, high, critical, got \"urgent\""),
    ({"id": "a", "op": "noop", "timeout_s": 0}, "field 'timeout_s'"),
    ({"id": "a", "op": "noop", "params": "x=1"}, "field 'params': must be a table, got a string"),
    ({"id": "a", "op": "noop", "depends_on": [1]}, "field 'depends_on': must be a list"),
    ({"id": "a", "op": 5}, "field 'op': must be an op name string, got an integer"),
    ({"id": "a", "op": "noop", "colour": "red"}, "task 'a' field 'colour': unknown field"),
    ({"id": "web.1", "op": "noop"}, "is not a valid task id"),
    ({"id": "-x", "op": "noop"}, "is not a valid task id"),
    ({"id": "a" * 65, "op": "noop"}, "is not a valid task id"),
    ({"op": "noop"}, "task #1 field 'id': missing"),
    ({"id": "a", "op": "shell.run", "params": {"argv": []}}, "shell.run needs \"argv\""),
    ({"id": "a", "op": "shell.run", "params": {"argv": "ls -l"}}, "shell.run needs \"argv\""),
])
def test_field_errors(task, expected):
    assert expected in _err(_doc(task))


def test_workflow_level_errors():
    assert "empty workflow" in _err({"workflow": {"name": "w"}, "tasks": []})
    assert "empty workflow" in _err({"workflow": {"name": "w"}})
    assert "[workflow] field 'max_parallel': must be an integer >= 1, got 0" in _err(
        _doc({"id": "a", "op": "noop"}, max_parallel=0))
    assert "[workflow] field 'owner': unknown field" in _err(
        _doc({"id": "a", "op": "noop"}, owner="me"))
    assert "top-level key 'task'" in _err({"workflow": {}, "task": [], "tasks": [
        {"id": "a", "op": "noop"}]})
    assert "must be a table/object" in _err([1, 2])


def test_all_problems_are_reported_at_once():
    msg = _err(_doc({"id": "a", "op": "noop", "retries": -1},
                    {"id": "b", "op": "noop", "priority": "meh"}))
    assert msg.startswith("2 problems") and "'a'" in msg and "'b'" in msg


def test_field_graph_and_op_problems_come_in_one_report():
    doc = {"workflow": {"name": "many"}, "tasks": [
        {"id": "a", "op": "noop", "retries": "three"},        # a field problem
        {"id": "b", "op": "no.such.op", "depends_on": ["a"]},  # a: given, though broken
        {"id": "b", "op": "noop"},                             # duplicate id
        {"id": "c", "op": "noop", "depends_on": ["ghost"]},    # missing dependency
    ]}
    with pytest.raises(ValidationError) as caught:
        parse_workflow(doc, source="many.toml", registry=OpRegistry([]))
    text = str(caught.value)
    assert text.startswith("4 problems:")
    assert "task 'a' field 'retries'" in text
    assert "task 'b' field 'id': duplicate id (tasks #2 and #3)" in text
    assert "task 'c' field 'depends_on': depends on 'ghost'" in text
    assert "task 'b' field 'op'" in text and "no.such.op" in text
    assert "depends on 'a'" not in text  # a task with a broken field still exists
