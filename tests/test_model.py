"""provisioning.model: the vocabulary (states as str enums), id rules, and the
one record constructor that engine and store share."""

from __future__ import annotations

import json
import uuid

from provisioning import model
from provisioning.model import TaskSpec, TaskStatus, WorkflowSpec, WorkflowStatus

SPEC = WorkflowSpec(name="w", tasks=(TaskSpec(id="a", op="noop", params={"x": 1}),
                                     TaskSpec(id="b", op="noop", depends_on=("a",),
                                              priority="high", retries=2, timeout_s=9)))


def test_states_behave_exactly_like_their_strings():
    assert TaskStatus.QUEUED == "queued" and "queued" in model.UNFINISHED_TASK
    assert {"running": 1}[TaskStatus.RUNNING] == 1  # same hash as the plain string
    assert f"{WorkflowStatus.FAILED:<8}|" == "failed  |" and str(TaskStatus.SKIPPED) == "skipped"
    assert json.dumps({"s": TaskStatus.CANCELLED}) == '{"s": "cancelled"}'
    assert model.FINISHED_TASK == {"succeeded", "failed", "cancelled", "skipped"}
    assert model.FINISHED_WORKFLOW == {"succeeded", "failed", "cancelled"}
    assert [s.value for s in model.WORKFLOW_STATUSES] == [
        "queued", "running", "succeeded", "failed", "cancelled"]


def test_id_rules():
    wid = str(uuid.uuid4())
    assert model.valid_workflow_id(wid) and not model.valid_workflow_id(wid.upper())
    assert model.valid_task_key(model.task_key(wid, "web-1"))
    for bad in ("web.1", "-x", "", "x" * 65, None):
        assert not model.valid_task_id(bad)
    assert not model.valid_task_key(f"{wid}.") and not model.valid_task_key("nope.t")
    assert model.split_task_key(f"{wid}.t") == (wid, "t")


def test_a_task_id_made_of_parts_is_valid_readable_and_unique():
    assert model.task_id_from("install", "web-1", "nginx") == "install-web-1-nginx"
    exact = model.task_id_from("x" * 60, "abc")  # 64: kept as it is
    assert exact == "x" * 60 + "-abc"
    long_a = model.task_id_from("install", "h" * 40, "a" * 40)
    long_b = model.task_id_from("install", "h" * 40, "a" * 39 + "b")
    assert len(long_a) == model.TASK_ID_MAX and long_a.startswith("install-hhh")
    assert long_a != long_b  # the hash of the whole keeps them apart
    assert all(model.valid_task_id(t) for t in (exact, long_a, long_b))


def test_a_submission_is_numbered_tasks_first_then_its_workflow():
    wid = str(uuid.uuid4())
    workflow, tasks = model.new_submission(wid, SPEC, last_seq=10, now=123.0)
    assert [t["seq"] for t in tasks] == [11, 12] and workflow["seq"] == 13
    assert workflow["status"] == "queued" and workflow["task_ids"] == ["a", "b"]
    assert workflow["spec"] == SPEC.to_dict() and workflow["cancel_requested"] is False
    b = tasks[1]
    assert (b["key"], b["depends_on"], b["priority"], b["retries"], b["timeout_s"]) == (
        f"{wid}.b", ["a"], "high", 2, 9)
    assert b["status"] == "queued" and b["attempts"] == 0 and b["created_at"] == 123.0


def test_a_rebuilt_task_record_is_the_one_the_submission_made():
    workflow, tasks = model.new_submission(str(uuid.uuid4()), SPEC, last_seq=0, now=5.0)
    on_disk = json.loads(json.dumps(workflow))  # what a store reads back
    assert json.loads(json.dumps(model.first_task_records(on_disk))) == json.loads(
        json.dumps(tasks))
    assert [t["id"] for t in model.first_task_records(on_disk, ["b"])] == ["b"]


def test_rerun_and_history():
    _, (task, _) = model.new_submission(str(uuid.uuid4()), SPEC, last_seq=0, now=1.0)
    task.update(status="failed", attempts=3, error="boom", result=1)
    model.reset_for_rerun(task, 2.0)
    assert (task["status"], task["attempt_base"], task["error"], task["result"]) == (
        "queued", 3, None, None)
    for n in range(model.HISTORY_LIMIT + 5):
        model.add_history(task, {"attempt": n})
    assert len(task["history"]) == model.HISTORY_LIMIT and task["history"][-1]["attempt"] == 54
