"""Python helpers for taskserv services, copied with every taskserv to
<root>/opt/provisioning/taskservs/<name>/lib/provisioning_service.py
(ops/installs.py). Stdlib only: it runs on the server's python3, not ours.
"""

import os


def detach(server, pidfile, log):
    """Serve in the background: bound already (a busy port failed the install), own
    session, output to the log, the child's pid in `pidfile`; the caller returns."""
    pid = os.fork()
    if pid:
        tmp = pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{pid}\n")
        os.replace(tmp, pidfile)
        os._exit(0)
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
