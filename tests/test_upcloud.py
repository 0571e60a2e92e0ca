"""The `upcloud` provider against a fake UpCloud API (tests/fake_upcloud.py, a mock of
the cloud only): real CLI, real daemon, real task processes, real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from provisioning.errors import ValidationError
from provisioning.ops.infra import load_infra
from provisioning.ops.providers.upcloud import UpCloudProvider, label_problem
from provisioning.ops.state import StateStore
from tests.conftest import REPO, run_cli, wait_for
from tests.daemon_fixture import start_daemon
from tests.fake_upcloud import FakeUpCloud

HOSTS = ("web-1", "web-2", "db-1")
CRED_VARS = ("UPCLOUD_TOKEN", "UPCLOUD_USERNAME", "UPCLOUD_PASSWORD")


@pytest.fixture
def password() -> str:
    return f"planted-{uuid.uuid4().hex}"


@pytest.fixture
def fake(password):
    f = FakeUpCloud(username="ops", password=password).start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def no_outer_credentials(monkeypatch):
    for name in CRED_VARS:
        monkeypatch.delenv(name, raising=False)


def write_infra(tmp_path: Path, fake: FakeUpCloud, **provider: str) -> Path:
    d = tmp_path / "ws" / "infra" / "updemo"
    d.mkdir(parents=True, exist_ok=True)
    settings = {"zone": "fi-hel1", "template": "Ubuntu Server 24.04 LTS (Noble Numbat)",
                "plan": "1xCPU-1GB", "endpoint_url": fake.url, **provider}
    lines = ['[infra]', 'name = "updemo"', 'provider = "upcloud"', '[provider]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ['ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test"]']
    for h in HOSTS:
        lines += ["[[servers]]", f'hostname = "{h}"']
    (d / "settings.toml").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture
def infra(tmp_path, fake) -> Path:
    return write_infra(tmp_path, fake)


@pytest.fixture
def creds(password) -> dict[str, str]:
    return {"UPCLOUD_USERNAME": "ops", "UPCLOUD_PASSWORD": password}


def direct(*args: str, env: dict[str, str], timeout: float = 90):
    return run_cli("--direct", *args, env=env, timeout=timeout)


def direct_logs(isolated) -> str:
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    return "\n".join(p.read_text() for p in sorted(data.glob("direct/logs/*/*.log")))


def assert_one_started_server_per_host(fake: FakeUpCloud, hosts=HOSTS) -> dict[str, dict]:
    found = fake.by_hostname()
    assert sorted(found) == sorted(hosts), found
    for host, servers in found.items():
        assert len(servers) == 1, (host, servers)
        labels = {i["key"]: i["value"] for i in servers[0]["labels"]["label"]}
        assert labels["provisioning:infra"] == "updemo"
        assert labels["provisioning:server"] == host
        assert servers[0]["state"] == "started"
    return {h: s[0] for h, s in found.items()}


def recorded(isolated, host: str) -> dict | None:
    f = (Path(isolated["PROVISIONING_STORAGE_DATA_DIR"]) / "state" / "infras" / "updemo"
         / "servers" / f"{host}.json")
    return json.loads(f.read_text()) if f.exists() else None


def test_create_three_again_list_delete_twice_through_the_daemon_and_no_secret_leaks(
        tmp_path, fake, infra, creds, password, isolated):
    d = start_daemon(tmp_path, env=creds)
    common = ("--config", str(d.config_file), "--endpoint", d.url, "--orchestrated")
    try:
        r = run_cli(*common, "server", "create", "--infra", str(infra), "--wait", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        servers = assert_one_started_server_per_host(fake)
        assert fake.count("create") == 3
        for host, server in servers.items():
            rec = recorded(isolated, host)
            assert rec["id"] == server["uuid"] and rec["ssh_user"] == "root"
            assert rec["address"].startswith("203.0.113.")  # the public IPv4
        views = json.loads(run_cli("server", "list", "--json", env=creds).stdout)
        assert {(v["hostname"], v["status"]) for v in views} == {(h, "running") for h in HOSTS}

        again = run_cli(*common, "server", "create", "--infra", str(infra), "--wait",
                        timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("already exists") == 3
        assert fake.count("create") == 3  # no new machine
        assert_one_started_server_per_host(fake)

        gone = servers["web-1"]["uuid"]
        r = run_cli(*common, "server", "delete", "web-1", "--infra", str(infra), "--wait",
                    timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert gone in fake.deleted and "web-1" not in fake.by_hostname()
        assert ("DELETE", f"/1.3/server/{gone}?storages=1") in fake.requests
        assert recorded(isolated, "web-1") is None
        r = run_cli(*common, "server", "delete", "web-1", "--infra", str(infra), "--wait",
                    timeout=120)
        assert r.returncode == 0 and "nothing to delete" in r.stdout, r.stdout + r.stderr

        # a task that is not a cloud op never sees the credentials
        status, body = d.request("POST", "/workflows", {"tasks": [
            {"id": "env", "op": "shell.run", "params": {"argv": ["env"]}}]})
        assert status == 202, body
        assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        shown = run_cli("--config", str(d.config_file), "config", "show", env=creds)
        assert shown.returncode == 0, shown.stderr
        status, listing = d.request("GET", "/workflows")
        assert status == 200
    finally:
        d.stop()
    basic = base64.b64encode(f"ops:{password}".encode()).decode()
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file()
             and (password.encode() in p.read_bytes() or basic.encode() in p.read_bytes())]
    assert leaks == []
    logs = "\n".join(p.read_text() for p in d.data_dir.glob("logs/*/env.log"))
    assert "PATH=" in logs and "UPCLOUD" not in logs
    for text in (shown.stdout + shown.stderr, json.dumps(listing)):
        assert password not in text and basic not in text


def test_daemon_killed_mid_create_then_restarted_makes_exactly_one_server_per_host(
        tmp_path, fake, infra, creds, isolated):
    fake.hold = True  # every server stays in `maintenance`: the tasks are mid-create
    d = start_daemon(tmp_path, env=creds)
    r = run_cli("--config", str(d.config_file), "--endpoint", d.url, "--orchestrated",
                "server", "create", "--infra", str(infra), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
    wait_for(lambda: fake.count("create") == 3, timeout=60, what="three create requests")
    assert all(recorded(isolated, h) is None for h in HOSTS)  # the answer is not recorded
    d.kill()
    fake.hold = False
    d = start_daemon(tmp_path, env=creds)  # recovery kills the old tasks, runs them again
    try:
        view = d.wait_workflow(wid, timeout=120)
        assert view["status"] == "succeeded", [t.get("error") for t in view["tasks"]]
    finally:
        d.stop()
    servers = assert_one_started_server_per_host(fake)
    assert fake.count("create") == 3
    for host, server in servers.items():
        assert recorded(isolated, host)["id"] == server["uuid"]


def test_delete_retries_server_state_illegal_while_the_stop_lands(
        tmp_path, fake, infra, creds, isolated):
    r = direct("server", "create", "web-1", "--infra", str(infra), env=creds)
    assert r.returncode == 0, r.stdout + r.stderr
    fake.illegal_deletes = 2
    fake.polls_to_stop = 3
    r = direct("server", "delete", "web-1", "--infra", str(infra), env=creds)
    assert r.returncode == 0, r.stdout + r.stderr + direct_logs(isolated)
    assert fake.count("illegal") == 2 and fake.by_hostname() == {}
    assert "SERVER_STATE_ILLEGAL (attempt 2), trying again" in direct_logs(isolated)


def test_rate_limit_is_retried_with_backoff_inside_the_task(tmp_path, fake, infra, creds,
                                                              isolated):
    fake.throttle = 3
    r = direct("server", "create", "db-1", "--infra", str(infra), env=creds)
    assert r.returncode == 0, r.stdout + r.stderr + direct_logs(isolated)
    assert fake.count("429") == 3
    assert_one_started_server_per_host(fake, ["db-1"])
    assert direct_logs(isolated).count("UpCloud rate limit (HTTP 429)") == 3


def test_a_rate_limit_that_never_lifts_fails_after_the_retry_budget(fake, password):
    """Capped, jittered, bounded: RETRY_ATTEMPTS retries, no wait over the cap, then a
    task failure naming the code; nothing else was sent meanwhile."""
    from provisioning.ops.providers import upcloud_api

    fake.throttle = 1000
    waits: list[float] = []
    auth = "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()
    api = upcloud_api.UpCloudAPI(fake.url, auth=auth, log=lambda m: None, sleep=waits.append)
    with pytest.raises(upcloud_api.UpCloudError) as e:
        api.list_servers({"provisioning_infra": "x"})
    assert e.value.code == "TOO_MANY_REQUESTS" and e.value.status == 429
    assert f"after {upcloud_api.RETRY_ATTEMPTS} retries" in e.value.message
    assert len(waits) == upcloud_api.RETRY_ATTEMPTS == fake.count("429") - 1
    assert all(0 < w <= upcloud_api.RETRY_CAP_S for w in waits), waits
    assert waits[-1] > waits[0]  # backing off


def test_refused_credentials_fail_with_the_code_and_where_they_came_from(
        tmp_path, fake, infra, isolated):
    wrong = f"wrong-{uuid.uuid4().hex}"
    r = direct("server", "create", "web-1", "--infra", str(infra),
               env={"UPCLOUD_USERNAME": "ops", "UPCLOUD_PASSWORD": wrong})
    assert r.returncode == 1
    logs = direct_logs(isolated)
    assert "AUTHENTICATION_FAILED (HTTP 401): UpCloud refused the credentials" in logs
    assert "credentials from UPCLOUD_USERNAME/UPCLOUD_PASSWORD" in logs
    assert wrong not in logs and fake.servers == {}


def test_token_auth_is_a_bearer_token(tmp_path, fake, infra, isolated):
    fake.token = f"tok-{uuid.uuid4().hex}"
    r = direct("server", "create", "web-2", "--infra", str(infra),
               env={"UPCLOUD_TOKEN": fake.token})
    assert r.returncode == 0, r.stdout + r.stderr + direct_logs(isolated)
    assert_one_started_server_per_host(fake, ["web-2"])


def test_missing_credentials_name_the_variables_looked_for(tmp_path, fake, infra, isolated):
    r = direct("server", "create", "web-1", "--infra", str(infra), env={})
    assert r.returncode == 1
    logs = direct_logs(isolated)
    assert ("no UpCloud credentials: looked for UPCLOUD_TOKEN, or UPCLOUD_USERNAME and "
            "UPCLOUD_PASSWORD") in logs
    assert fake.requests == []  # nothing was sent without credentials


@pytest.mark.parametrize("setting, expected", [
    ({"plan": "64xCPU-1TB"}, "PLAN_INVALID (HTTP 400): unknown plan"),
    ({"zone": "xx-nowhere1"}, "ZONE_NOT_FOUND (HTTP 404): unknown zone"),
    ({"template": "Windows 3.11"}, "unknown UpCloud template 'Windows 3.11'"),
])
def test_bad_plan_zone_or_template_fail_with_the_cloud_reason(
        tmp_path, fake, creds, isolated, setting, expected):
    infra = write_infra(tmp_path, fake, **setting)
    r = direct("server", "create", "web-1", "--infra", str(infra), env=creds)
    assert r.returncode == 1
    assert expected in direct_logs(isolated)
    assert fake.servers == {}


def test_settings_refuse_credentials_and_plain_http_off_loopback(tmp_path, fake):
    infra = write_infra(tmp_path, fake, password="x")
    with pytest.raises(ValidationError, match="credentials never go in the infra file"):
        load_infra(infra)
    problems = UpCloudProvider.validate_settings(
        {"template": "t", "endpoint_url": "http://api.example.com"})
    assert any("only over https" in p for p in problems)
    assert UpCloudProvider.validate_settings({"zone": "fi-hel1"}) == [
        "template is required (a template title or storage UUID)"]
    assert label_problem("provisioning:infra", "updemo") is None
    assert label_problem("_system", "x") and label_problem("k", "x")
    assert label_problem("key", "v" * 256)


def test_loading_the_provider_does_not_import_the_http_client():
    code = ("import sys, provisioning.ops.providers.upcloud as u; "
            "u.UpCloudProvider.validate_settings({'template': 't'}); "
            "print('urllib.request' in sys.modules, 'ssl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_example_infra_creates_and_deletes_against_the_fake(tmp_path, fake, creds,
                                                                 isolated):
    d = tmp_path / "ws" / "infra" / "upcloud-demo"
    d.mkdir(parents=True)
    text = (REPO / "examples" / "infra" / "upcloud-demo" / "settings.toml").read_text()
    assert 'endpoint_url = ""' in text and "UPCLOUD_PASSWORD" not in text.split("[infra]")[1]
    (d / "settings.toml").write_text(text.replace('endpoint_url = ""',
                                                  f'endpoint_url = "{fake.url}"'))
    r = direct("server", "create", "--infra", str(d), env=creds)
    assert r.returncode == 0, r.stdout + r.stderr + direct_logs(isolated)
    found = fake.by_hostname()
    assert {h: (s[0]["zone"], s[0]["plan"]) for h, s in found.items()} == {
        "web-1": ("fi-hel1", "1xCPU-1GB"), "web-2": ("de-fra1", "1xCPU-2GB")}
    labels = {i["key"]: i["value"] for i in found["web-1"][0]["labels"]["label"]}
    assert labels == {"role": "web", "provisioning:infra": "upcloud-demo",
                      "provisioning:server": "web-1"}
    for host in ("web-1", "web-2"):
        r = direct("server", "delete", host, "--infra", str(d), env=creds)
        assert r.returncode == 0, r.stdout + r.stderr
    assert fake.by_hostname() == {}


def test_reads_and_a_create_that_starts_a_server_stopped_by_hand(
        tmp_path, fake, infra, creds, isolated, monkeypatch):
    assert direct("server", "create", "web-1", "--infra", str(infra), env=creds).returncode == 0
    with fake.lock:
        (server,) = fake.servers.values()
        server["state"] = "stopped"
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    provider = UpCloudProvider(infra="updemo", settings=load_infra(infra).provider_settings,
                               state=StateStore())
    assert provider.status("web-1") == "stopped" and provider.status("db-1") == "missing"
    assert provider.find_server("web-1") == {
        "hostname": "web-1", "state": "stopped", "id": server["uuid"],
        "address": server["ip_addresses"]["ip_address"][1]["address"], "zone": "fi-hel1",
        "plan": "1xCPU-1GB"}
    assert provider.find_server("db-1") is None
    assert [(s["hostname"], s["id"]) for s in provider.list_found()] == [
        ("web-1", server["uuid"])]
    conn = provider.connection(recorded(isolated, "web-1"))
    assert (conn["address"], conn["port"], conn["user"]) == (
        provider.find_server("web-1")["address"], 22, "root")
    r = direct("server", "create", "web-1", "--infra", str(infra), env=creds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake.count("create") == 1 and server["state"] == "started"
    assert f"starting web-1 ({server['uuid']})" in direct_logs(isolated)


def test_a_redirect_is_not_followed_with_the_credentials(tmp_path, fake, infra, creds,
                                                         isolated):
    elsewhere = FakeUpCloud(username="ops", password=creds["UPCLOUD_PASSWORD"]).start()
    try:
        fake.redirect = f"{elsewhere.url}/1.3/server"
        r = direct("server", "create", "web-1", "--infra", str(infra), env=creds)
        assert r.returncode == 1
        assert "HTTP_302 (HTTP 302): redirected elsewhere; not followed" in direct_logs(isolated)
        assert elsewhere.requests == [] and fake.servers == {}
    finally:
        elsewhere.stop()
