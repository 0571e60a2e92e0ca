"""AWS mocked with moto's server on 127.0.0.1 (real boto3 over HTTP), and a proxy.

The only mock in these tests is AWS itself. `moto_server` runs as its own
process on a free port with moto's image and instance-type validation on
(MOTO_ENABLE_AMI_VALIDATION, MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION: what
moto rejects is what these tests can show being rejected). `Proxy` sits in
front of it for two cases moto cannot produce: a RunInstances whose answer
is lost (forwarded to moto, then held until the connection is dropped) and
throttling (a 503 RequestLimitExceeded, as EC2 answers it, N times).

`Proxy.public_ips` (a test-only knob, because moto picks an instance's public IP
itself and has no call to set it): a queue of addresses; each public IP moto
hands out is, from its first sight in an answer on, shown as the next one of
them in every answer. The mock's address then points at a REAL machine, a
namespaced sshd test host (tests/hosts.py), so the taskservs that go on the
instance over SSH are real; only the EC2 API in front of it is faked.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port, wait_for

BIN = Path(sys.executable).parent
SECRET = "planted-SECRET-wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
PUBLIC_IP = re.compile(rb"<(ipAddress|publicIp)>([0-9.]+)</(ipAddress|publicIp)>")
THROTTLED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
             b'<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>'
             b'</Error></Errors><RequestID>test</RequestID></Response>')


class Moto:
    """`moto_server` on a free port; `env` adds moto settings (INITIAL_NO_AUTH_ACTION_COUNT
    = "0": every request's access key is checked against moto's IAM, so ours are refused)."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, MOTO_ENABLE_AMI_VALIDATION="true",
                   MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true", **env)
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                                      str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._answers, timeout=30, what="moto_server")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/moto-api/", timeout=2).read()
            return True
        except (OSError, urllib.error.URLError):
            return self.proc.poll() is not None  # died: fail below, not hang

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset",
                                                      method="POST"), timeout=10).read()

    def ec2(self):
        import boto3

        return boto3.client("ec2", region_name="eu-north-1", endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


class Proxy:
    """HTTP pass-through to moto; `hold_run` and `throttle` bend RunInstances."""

    def __init__(self, target: str):
        self.target = target
        self.hold_run = False
        self.released = threading.Event()
        self.held = 0
        self.throttle = 0  # answer this many RunInstances with 503 RequestLimitExceeded
        self.throttled = 0
        self.public_ips: list[str] = []  # moto's public IPs shown as these (test hosts)
        self.ip_map: dict[str, str] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                run = b"Action=RunInstances" in body
                if run and proxy.throttle > proxy.throttled:
                    proxy.throttled += 1
                    self._answer(503, THROTTLED)
                    return
                req = urllib.request.Request(proxy.target + self.path, data=body,
                                             method="POST",
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                if run and proxy.hold_run:  # the machine exists; its answer never comes
                    proxy.held += 1
                    proxy.released.wait(60)
                    self.close_connection = True
                    return
                self._answer(status, proxy.rewrite(data))

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rewrite(self, data: bytes) -> bytes:
        """Show moto's public IPs as the queued test hosts' addresses (public_ips)."""
        def sub(m: re.Match) -> bytes:
            ip = m.group(2).decode()
            with self.lock:
                if ip not in self.ip_map and self.public_ips:
                    self.ip_map[ip] = self.public_ips.pop(0)
                shown = self.ip_map.get(ip, ip)
            return b"<%s>%s</%s>" % (m.group(1), shown.encode(), m.group(1))

        return PUBLIC_IP.sub(sub, data) if self.public_ips or self.ip_map else data

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def aws_env(tmp_path: Path, *, secret: str = SECRET) -> dict[str, str]:
    """Fake credentials for boto3's chain; no ~/.aws of the user, no metadata endpoint."""
    return {"AWS_ACCESS_KEY_ID": "AKIATESTINGPROVISION", "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def write_infra(ws: Path, name: str, endpoint: str, *, hosts=("web-1", "web-2", "web-3"),
                image: str = "ami-03cf127a", plan: str = "t3.small", extra: str = "") -> Path:
    d = ws / "infra" / name
    d.mkdir(parents=True, exist_ok=True)
    servers = "".join(f'\n[[servers]]\nhostname = "{h}"\nplan = "{plan}"\n' for h in hosts)
    (d / "settings.toml").write_text(
        f'[infra]\nname = "{name}"\nprovider = "aws"\n\n[provider]\n'
        f'region = "eu-north-1"\nimage = "{image}"\nssh_user = "ubuntu"\n'
        f'endpoint_url = "{endpoint}"\nvpc_cidr = "10.42.0.0/16"\n'
        f'subnet_cidr = "10.42.1.0/24"\nssh_cidrs = ["203.0.113.0/24"]\n'
        f'wait_timeout_s = 30\n{extra}{servers}')
    return d


def instances(ec2, infra: str) -> dict[str, list[str]]:
    """Live instances of an infra by hostname tag (what AWS has, read directly)."""
    out: dict[str, list[str]] = {}
    pages = ec2.describe_instances(Filters=[
        {"Name": "tag:provisioning:infra", "Values": [infra]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}])
    for r in pages["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            out.setdefault(tags["provisioning:server"], []).append(i["InstanceId"])
    return out
