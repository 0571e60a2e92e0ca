"""The `aws` provider against moto's server (the one mock: AWS; tests/aws_fixture.py).

Real daemon, real CLI, real boto3 over HTTP to 127.0.0.1. Cases: three servers
created in parallel, created again (no new instance), a daemon killed with -9
while RunInstances' answers are lost then restarted (exactly one instance per
hostname), deleted twice, bad image/plan, missing and refused credentials,
throttling retried, drift both ways, plans before and after, a stopped
instance, and a planted secret found in no file, output or record (and
blanked when a task prints it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for

pytest.importorskip("boto3")
pytest.importorskip("moto")

from tests.aws_fixture import SECRET, Moto, Proxy, aws_env, instances, write_infra  # noqa: E402


@pytest.fixture(scope="module")
def moto():
    m = Moto()
    yield m
    m.stop()


@pytest.fixture
def aws(moto, tmp_path, monkeypatch):
    moto.reset()
    for k, v in aws_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    return moto


def assert_no_secret(tmp_path: Path, *outputs: str) -> None:
    for text in outputs:
        assert SECRET not in text
    for f in tmp_path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert SECRET.encode() not in f.read_bytes(), f"secret found in {f}"


def task_logs(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "data").rglob("*.log")))


def test_create_parallel_again_and_delete_twice_through_the_daemon(aws, tmp_path):
    from tests.daemon_fixture import start_daemon

    infra = write_infra(tmp_path / "ws", "cloud", aws.url)
    ec2 = aws.ec2()
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 4})
    outputs = []
    try:
        common = ("--config", str(d.config_file), "--endpoint", d.url)
        r = run_cli(*common, "--orchestrated", "server", "create", "--infra", str(infra),
                    "--wait", timeout=120)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"web-1: \d+% web-1 \(i-[0-9a-f]+\) is running", r.stdout)
        found = instances(ec2, "cloud")
        assert sorted(found) == ["web-1", "web-2", "web-3"]
        assert all(len(ids) == 1 for ids in found.values())
        views = json.loads(run_cli(*common, "server", "list", "--json").stdout)
        assert {v["hostname"]: v["status"] for v in views} == dict.fromkeys(found, "running")
        record = json.loads((Path(d.data_dir) / "state/infras/cloud/servers/web-1.json")
                            .read_text())
        assert record["instance_id"] == found["web-1"][0] and record["ssh_user"] == "ubuntu"
        assert record["address"] and record["private_ip"].startswith("10.42.1.")
        # the token went to the provider state before the call
        token = json.loads((Path(d.data_dir) / "state/aws/cloud/web-1.json").read_text())
        assert token["client_token"].startswith("prov-") and token["generation"] == 1

        r = run_cli(*common, "--orchestrated", "server", "create", "--infra", str(infra),
                    "--wait", timeout=120)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0 and r.stdout.count("found by its tags") == 3, r.stdout
        assert instances(ec2, "cloud") == found  # no new instance

        for _attempt in (1, 2):
            r = run_cli(*common, "--orchestrated", "server", "delete", "web-1", "--infra",
                        str(infra), "--wait", timeout=120)
            outputs.append(r.stdout + r.stderr)
            assert r.returncode == 0, r.stdout + r.stderr
        assert "web-1 does not exist in infra cloud; nothing to delete" in r.stdout
        assert sorted(instances(ec2, "cloud")) == ["web-2", "web-3"]
        token = json.loads((Path(d.data_dir) / "state/aws/cloud/web-1.json").read_text())
        assert token == {"generation": 2}  # a re-create is a new request
        config = run_cli(*common, "config", "show")
        outputs.append(config.stdout + config.stderr)
        events = d.request("GET", "/workflows?limit=50")[1]
        outputs.append(json.dumps(events))
    finally:
        d.stop()
    outputs.append((Path(d.data_dir) / "logs").as_posix())
    assert_no_secret(tmp_path, *outputs)


def test_kill_9_of_the_daemon_mid_create_makes_one_instance_per_hostname(aws, tmp_path):
    from tests.daemon_fixture import start_daemon

    proxy = Proxy(aws.url)
    proxy.hold_run = True
    infra = write_infra(tmp_path / "ws", "crash", proxy.url)
    ec2 = aws.ec2()
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 4})
    try:
        common = ("--config", str(d.config_file), "--endpoint", d.url)
        r = run_cli(*common, "--orchestrated", "--json", "server", "create", "--infra",
                    str(infra))
        assert r.returncode == 0, r.stdout + r.stderr
        workflow_id = json.loads(r.stdout)["workflow_id"]
        # every RunInstances reached AWS (the machines exist) and no answer came back
        wait_for(lambda: proxy.held == 3, timeout=60, what="three held RunInstances")
        assert sorted(instances(ec2, "crash")) == ["web-1", "web-2", "web-3"]
        d.kill()
        proxy.hold_run = False
        proxy.released.set()
        d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 4})
        view = d.wait_workflow(workflow_id, timeout=120)
        assert view["status"] == "succeeded", view
        found = instances(ec2, "crash")
        assert sorted(found) == ["web-1", "web-2", "web-3"]
        assert all(len(ids) == 1 for ids in found.values()), found
        views = json.loads(run_cli(*common[:2], "--endpoint", d.url, "server", "list",
                                   "--json").stdout)
        assert {v["hostname"]: v["status"] for v in views} == dict.fromkeys(found, "running")
    finally:
        d.stop()
        proxy.stop()


def test_throttled_run_instances_is_retried_with_backoff(aws, tmp_path):
    proxy = Proxy(aws.url)
    proxy.throttle = 2
    try:
        infra = write_infra(tmp_path / "ws", "slow", proxy.url, hosts=("web-1",))
        r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert proxy.throttled == 2
        assert len(instances(aws.ec2(), "slow")["web-1"]) == 1
        logs = task_logs(tmp_path)
        assert "aws run_instances: RequestLimitExceeded, retry 2 in" in logs
    finally:
        proxy.stop()


def test_throttling_that_never_lifts_fails_within_the_retry_budget(aws, monkeypatch):
    """Capped, jittered and bounded (MAX_ATTEMPTS, RETRY_BUDGET_S): then the throttling
    error is the task's failure, with the AWS code."""
    from provisioning.errors import ProvisioningError
    from provisioning.ops.providers import aws_api

    proxy = Proxy(aws.url)
    proxy.throttle = 1000
    waits: list[float] = []
    monkeypatch.setattr(aws_api.time, "sleep", waits.append)  # the backoff only, not moto
    try:
        ec2 = aws_api.Ec2({"region": "eu-west-1", "endpoint_url": proxy.url})
        with pytest.raises(ProvisioningError, match="RequestLimitExceeded"):
            ec2.call("run_instances", ImageId="ami-03cf127a", InstanceType="t3.small",
                     MinCount=1, MaxCount=1)  # the call the proxy throttles
    finally:
        proxy.stop()
    assert len(waits) == aws_api.MAX_ATTEMPTS - 1 == proxy.throttled - 1
    assert all(0 < w <= aws_api.RETRY_MAX_S for w in waits), waits
    assert sum(waits) < aws_api.RETRY_BUDGET_S and waits[-1] > waits[0]


@pytest.mark.parametrize("image, plan, code", [
    ("ami-00000000", "t3.small", "InvalidAMIID.NotFound"),
    ("ami-03cf127a", "zz.huge", "InvalidInstanceType"),
])
def test_bad_image_or_plan_fails_with_the_aws_code(aws, tmp_path, image, plan, code):
    # moto validates these only with its validation switches on (aws_fixture.Moto)
    infra = write_infra(tmp_path / "ws", "bad", aws.url, hosts=("web-1",), image=image,
                        plan=plan)
    r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
    assert r.returncode != 0
    out = task_logs(tmp_path)
    assert f"error: aws run_instances failed: {code}" in out, out
    assert instances(aws.ec2(), "bad") == {}
    assert "Traceback" not in out + r.stdout + r.stderr


def test_missing_credentials_fail_the_task_saying_where_boto3_looked(aws, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    infra = write_infra(tmp_path / "ws", "nocreds", aws.url, hosts=("web-1",))
    r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
    out = task_logs(tmp_path)
    assert r.returncode != 0
    assert "aws: no credentials found (boto3 looked in: environment" in out, out
    assert str(tmp_path / "aws-credentials") in out and "not set" in out
    assert instances(aws.ec2(), "nocreds") == {}


def test_refused_credentials_fail_with_the_aws_code_and_their_source(aws, tmp_path):
    strict = Moto(INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        infra = write_infra(tmp_path / "ws", "refused", strict.url, hosts=("web-1",))
        r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
        out = task_logs(tmp_path)
        assert r.returncode != 0
        assert "AuthFailure: AWS refused the credentials" in out, out
        assert "the credentials came from boto3's 'env' source" in out
        assert SECRET not in out + r.stdout + r.stderr
    finally:
        strict.stop()


def test_credentials_reach_only_the_tasks_of_an_aws_infra(aws, tmp_path):
    wf = tmp_path / "wf.toml"
    wf.write_text('[workflow]\nname = "env"\n[[tasks]]\nid = "show"\nop = "shell.run"\n'
                  f'params = {{ argv = ["{sys.executable}", "-c", '
                  '"import os; print(sorted(k for k in os.environ if k.startswith(\'AWS\')))"]'
                  ' }\n')
    r = run_cli("--direct", "workflow", "submit", str(wf))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = task_logs(tmp_path)
    assert "[]" in logs and SECRET not in logs

    from provisioning.ops.providers import credential_env

    aws_infra = write_infra(tmp_path / "ws", "c", aws.url)
    local = tmp_path / "ws" / "infra" / "l"
    local.mkdir()
    (local / "settings.toml").write_text('[infra]\nname = "l"\nprovider = "local"\n')
    env = {"AWS_SECRET_ACCESS_KEY": "x", "AWS_PROFILE": "p", "PATH": "/bin"}
    data = tmp_path / "data"
    assert credential_env("server.create", {"infra": str(aws_infra)}, data, env) == {
        "AWS_SECRET_ACCESS_KEY": "x", "AWS_PROFILE": "p"}
    assert credential_env("server.create", {"infra": str(local)}, data, env) == {}
    assert credential_env("shell.run", {"infra": str(aws_infra)}, data, env) == {}


def test_the_cli_never_imports_boto3_to_start_or_to_load_an_aws_infra(aws, tmp_path):
    infra = write_infra(tmp_path / "ws", "light", aws.url)
    code = ("import sys\nfrom provisioning.ops.infra import load_infra\n"
            f"load_infra({str(infra)!r})\n"
            "from provisioning.cli import main\nsys.argv = ['provisioning', 'version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('BOTO3', 'boto3' in sys.modules, 'botocore' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert "BOTO3 False False" in r.stdout, r.stdout + r.stderr


def plan_actions(*args: str) -> dict[str, str]:
    r = run_cli("--json", *args, "--plan")
    assert r.returncode == 0, r.stdout + r.stderr
    return {t["id"]: t["action"] for t in json.loads(r.stdout)["tasks"]}


def test_plan_before_and_after_and_drift_both_ways(aws, tmp_path):
    infra = write_infra(tmp_path / "ws", "drift", aws.url, hosts=("web-1", "web-2"))
    ec2 = aws.ec2()
    assert plan_actions("server", "create", "--infra", str(infra)) == {
        "create-web-1": "create", "create-web-2": "create"}
    assert plan_actions("server", "delete", "web-1", "--infra", str(infra)) == {
        "delete-web-1": "absent"}
    assert instances(ec2, "drift") == {} and not (tmp_path / "data" / "state").exists()

    r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    before = instances(ec2, "drift")
    assert plan_actions("server", "create", "--infra", str(infra)) == {
        "create-web-1": "exists", "create-web-2": "exists"}
    assert plan_actions("server", "delete", "web-1", "--infra", str(infra)) == {
        "delete-web-1": "delete"}
    assert instances(ec2, "drift") == before  # a plan changes nothing

    # drift: web-1 terminated behind our back; a machine tagged for the infra that it
    # does not declare; web-2 dropped from the infra file
    ec2.terminate_instances(InstanceIds=before["web-1"])
    ec2.run_instances(ImageId="ami-03cf127a", InstanceType="t3.small", MinCount=1, MaxCount=1,
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [
                          {"Key": "provisioning:infra", "Value": "drift"},
                          {"Key": "provisioning:server", "Value": "stray"}]}])
    text = (infra / "settings.toml").read_text()
    (infra / "settings.toml").write_text(text.replace('hostname = "web-2"', 'hostname = "web-3"'))
    views = json.loads(run_cli("--json", "server", "list", "--infra", str(infra)).stdout)
    by = {v["hostname"]: v for v in views}
    assert (by["web-1"]["status"], by["web-1"]["drift"]) == ("missing", "missing")
    assert (by["web-2"]["status"], by["web-2"]["drift"]) == ("running", "orphan")
    assert (by["stray"]["status"], by["stray"]["drift"]) == ("running", "orphan")
    assert by["stray"]["id"].startswith("i-") and "web-3" not in by
    table = run_cli("server", "list", "--infra", str(infra)).stdout
    assert re.search(r"stray\s+drift\s+aws\s+\S+\s+running\s+orphan", table), table
    assert plan_actions("server", "create", "--infra", str(infra)) == {
        "create-web-1": "create", "create-web-3": "create"}

    # no credentials in the CLI: the list still answers, status unknown, and says why
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    r = run_cli("--json", "server", "list", "--infra", str(infra), env=env)
    assert r.returncode == 0 and "warning: provider not read" in r.stderr, r.stderr
    assert {v["status"] for v in json.loads(r.stdout)} == {"unknown"}

    # deleting the missing one: its record goes, nothing else is touched
    r = run_cli("--direct", "server", "delete", "web-1", "--infra", str(infra), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "web-1 deleted (it was already gone at the provider" in r.stdout
    assert sorted(instances(ec2, "drift")) == ["stray", "web-2"]


def test_a_secret_printed_by_a_task_is_blanked_from_its_log_progress_and_result(
        aws, tmp_path):
    """The executor redacts the credential values it passed (ops/redact.py)."""
    lib = tmp_path / "lib" / "servers"
    lib.mkdir(parents=True)
    (lib / "leak.py").write_text(
        "import os, sys, json\nsecret = os.environ['AWS_SECRET_ACCESS_KEY']\n"
        "sys.stdout.write('PROGRESS: 50 key=' + secret + '\\n')\n"
        "sys.stdout.write('half ' + secret[:20]); sys.stdout.flush()\n"
        "sys.stdout.write(secret[20:] + ' done\\n')\n"
        "print('RESULT: ' + json.dumps({'key': secret}))\n")
    infra = write_infra(tmp_path / "ws", "leaky", aws.url, hosts=("web-1",))
    wf = tmp_path / "wf.toml"
    wf.write_text('[[tasks]]\nid = "leak"\nop = "server.leak"\n'
                  f'params = {{ infra = "{infra}" }}\n')
    env = {"PROVISIONING_LIB": str(tmp_path / "lib")}
    r = run_cli("--direct", "--json", "workflow", "submit", str(wf), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    workflow_id = json.loads(r.stdout)["workflow_id"]
    status = run_cli("--json", "workflow", "status", workflow_id, env=env)
    logs = task_logs(tmp_path)
    assert "key=***" in logs and "half *** done" in logs, logs
    task = json.loads(status.stdout)["tasks"][0]
    assert task["result"] == {"key": "***"}, task
    assert_no_secret(tmp_path, r.stdout, r.stderr, status.stdout, status.stderr)


def test_a_stopped_server_shows_stopped_and_create_starts_it(aws, tmp_path):
    infra = write_infra(tmp_path / "ws", "stop", aws.url, hosts=("web-1",))
    ec2 = aws.ec2()
    r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (iid,) = instances(ec2, "stop")["web-1"]
    ec2.stop_instances(InstanceIds=[iid])
    views = json.loads(run_cli("--json", "server", "list", "--infra", str(infra)).stdout)
    assert [(v["status"], v["provider_state"], v["drift"]) for v in views] == [
        ("stopped", "stopped", None)]
    assert plan_actions("server", "create", "--infra", str(infra)) == {"create-web-1": "exists"}
    r = run_cli("--direct", "server", "create", "--infra", str(infra), timeout=120)
    assert r.returncode == 0 and f"starting web-1 ({iid}): it was stopped" in r.stdout, r.stdout
    assert instances(ec2, "stop") == {"web-1": [iid]}
    views = json.loads(run_cli("--json", "server", "list", "--infra", str(infra)).stdout)
    assert [v["status"] for v in views] == ["running"]
