"""Install web on a server: check kvstore answers, start the web service detached.

The page itself (srv/web/index.html) was rendered from templates/index.html
before this runs. The last stdout line is {"pids": [...]}.
"""
import json
import os
import socket
import subprocess
import sys
import time

ctx = json.load(sys.stdin)
root, address, port = ctx["root"], ctx["address"], ctx["ports"]["http"]
kv_port = ctx["required_ports"]["kvstore"]["kv"]

try:  # web requires kvstore: record that this server's web is installed
    with socket.create_connection((address, kv_port), timeout=5) as s:
        s.sendall(f"SET web:installed {ctx['hostname']}\n".encode())
        if not s.recv(64).startswith(b"OK"):
            raise OSError("kvstore did not answer OK")
except OSError as e:
    print(f"kvstore at {address}:{kv_port} is not reachable: {e}", file=sys.stderr)
    sys.exit(1)

log_path = os.path.join(root, "log", "web.log")
with open(log_path, "ab") as log:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ctx["dir"], "service.py"), "--host", address,
         "--port", str(port), "--docroot", os.path.join(root, "srv", "web"),
         "--kv-port", str(kv_port), "--hostname", ctx["hostname"]],
        cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True)

deadline = time.monotonic() + 15
while True:
    if proc.poll() is not None:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-400:].strip()
        print(f"web exited at start (code {proc.returncode}): {tail}", file=sys.stderr)
        sys.exit(1)
    try:
        socket.create_connection((address, port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)

print(f"web serving http://{address}:{port}/ (pid {proc.pid})")
print(json.dumps({"pids": [proc.pid]}))
