"""Install the example node agent: serve srv/kubernetes/ (node.json, rendered from
templates/node.json before this runs) on the node's api port, detached.
Context JSON on stdin; the last stdout line is {"pids": [...]}."""
import json
import os
import subprocess
import sys

ctx = json.load(sys.stdin)
root, address, port = ctx["root"], ctx["address"], ctx["ports"]["api"]
with open(os.path.join(root, "log", "kubernetes.log"), "ab") as log:
    # own session, no stdin, output to the log: it must not hold the task's pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", address, "--directory",
         os.path.join(root, "srv", "kubernetes"), str(port)],
        cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True)
print(f"kubernetes node agent on http://{address}:{port}/node.json (pid {proc.pid})")
print(json.dumps({"pids": [proc.pid]}))
