"""Install kvstore on a server: start its service, detached, and report its pid.

Context JSON on stdin (hostname, address, root, ports, dir, ...). The last
stdout line is {"pids": [...]}: the processes `taskserv delete` will stop.
"""
import json
import os
import socket
import subprocess
import sys
import time

ctx = json.load(sys.stdin)
root, address, port = ctx["root"], ctx["address"], ctx["ports"]["kv"]
data_dir = os.path.join(root, "var", "kvstore")
os.makedirs(data_dir, mode=0o700, exist_ok=True)
log_path = os.path.join(root, "log", "kvstore.log")

with open(log_path, "ab") as log:
    # New session, stdin from /dev/null, output to the log file, no inherited
    # descriptors: the service must not hold the task's output pipe open.
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ctx["dir"], "service.py"), "--host", address,
         "--port", str(port), "--data", os.path.join(data_dir, "data.json")],
        cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True)

deadline = time.monotonic() + 15
while True:  # fail fast if it cannot start (port taken...) instead of at health-check time
    if proc.poll() is not None:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-400:].strip()
        print(f"kvstore exited at start (code {proc.returncode}): {tail}", file=sys.stderr)
        sys.exit(1)
    try:
        socket.create_connection((address, port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            break  # leave the verdict to the health check
        time.sleep(0.1)

print(f"kvstore listening on {address}:{port} (pid {proc.pid})")
print(json.dumps({"pids": [proc.pid]}))
