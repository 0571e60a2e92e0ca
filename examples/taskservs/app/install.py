"""Deploy the example application on a node: check the node agent answers, then
serve srv/app/ (index.html, rendered from templates/) on the http port, detached.
Context JSON on stdin; the last stdout line is {"pids": [...]}."""
import json
import os
import subprocess
import sys
import urllib.request

ctx = json.load(sys.stdin)
root, address, port = ctx["root"], ctx["address"], ctx["ports"]["http"]
agent = f"http://{address}:{ctx['required_ports']['kubernetes']['api']}/node.json"
try:  # the app runs on a Ready node only
    with urllib.request.urlopen(agent, timeout=10) as r:
        status = json.load(r).get("status")
except (OSError, ValueError) as e:
    sys.exit(f"node agent {agent} does not answer: {e}")
if status != "Ready":
    sys.exit(f"node {ctx['hostname']} is {status!r}, not Ready")
with open(os.path.join(root, "log", "app.log"), "ab") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", address, "--directory",
         os.path.join(root, "srv", "app"), str(port)],
        cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True)
print(f"app on http://{address}:{port}/ (pid {proc.pid})")
print(json.dumps({"pids": [proc.pid]}))
