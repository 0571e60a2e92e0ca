"""The Python zygote itself: a pre-imported interpreter that forks one child per Python op.

Started by the daemon (engine/zygote.py) as

    python -c "from provisioning.engine.zygote_server import main; main()" SOCK PPID PRELOAD

with a clean environment (no secrets, no token), no inherited fds but its
end of a UNIX SOCK_SEQPACKET socket, and stdout/stderr on the daemon's log.
It imports the package's op modules and the importable modules of PRELOAD
(a JSON list, e.g. boto3), freezes them out of the garbage collector (so a
child's collections do not dirty the shared pages), then serves. It never
starts a thread: a fork copies only the calling thread.

On the socket, one datagram each:
- hello (zygote -> daemon, once): {"pid", "preloaded", "missing", "files",
  "marker"}; `files` are [path, mtime_ns, size] of every module file it
  imported from the package and of each preloaded package's `__init__`,
  taken at import, so the daemon can tell an upgrade on disk;
- spawn (daemon -> zygote): {"argv", "env", "cwd", "key", "marker"} with three fds:
  the task's stdin (read end), its stdout+stderr (write end), and a status
  pipe (write end). Reply {"pid": n} with a pidfd of the child, or
  {"error": "..."};
- retire (daemon -> zygote): {"retire": true}: no more spawns; it exits
  once its last child is reaped.
A zygote whose socket ends without a retire lost its daemon: it exits at
once (Linux also kills it by PR_SET_PDEATHSIG), leaving its children, the
task processes, to the new daemon's recovery, as any orphaned task.

The child becomes a normal task process: its own session, the task's
environment (and the run marker PROVISIONING_TASK_RUN written into its
/proc/<pid>/environ, which a fork cannot otherwise change: see _mark),
params on stdin, the same protocol; the op's script is run as `__main__`
with sys.argv and sys.path[0] as `python script.py` sets them. Exit status:
the zygote reaps the child and writes b"Z" + the wait status to the status
pipe; the child itself writes b"C" + its exit code before it exits, which
is all that is known if the zygote died in between.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys

from provisioning import procinfo

MARKER_ENV = "PROVISIONING_TASK_RUN"  # as engine/proctree.py
MARKER_RESERVE = 128  # bytes kept for a run marker (at most 118: uuid "." 64 "/" 16)
STATUS = struct.Struct("<ci")  # b"Z" wait status (from the zygote) / b"C" exit code (child)
STATUS_FD = 3  # the status pipe in the child
MAX_REQUEST = 1 << 20
# What ops import (the package's business logic, lib/* scripts, built-ins), and what a
# child needs (ctypes: the marker): imported once, here. None reads config or
# the environment at import time, so nothing in them is stale in a child.
ALWAYS = ("provisioning.ops.handlers", "provisioning.ops.protocol", "provisioning.ops.infra",
          "provisioning.ops.servers", "provisioning.ops.state", "provisioning.ops.taskservs",
          "provisioning.ops.installs", "provisioning.ops.clusters", "provisioning.ops.procs",
          "provisioning.ops.providers.local", "provisioning.config", "ctypes", "json")


def main() -> None:
    """The zygote's entry point; in a forked child it runs the op and exits like one."""
    if sys.path and sys.path[0] == "":  # -c put the daemon's cwd first: never import from it
        del sys.path[0]
    sock = socket.socket(fileno=int(sys.argv[1]))
    procinfo.die_with_parent(int(sys.argv[2]))  # else: exit at the end of the socket only
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the daemon stops us: retire or end of socket
    hello = _preload(json.loads(sys.argv[3]))
    hello["marker"] = _marker_works()
    gc.freeze()
    sock.send(json.dumps(hello).encode())
    task = _serve(sock)
    if task is None:
        os._exit(0)  # no finalisation: nothing of ours to flush, children keep their fds
    _run_task(*task)


# -- the zygote -------------------------------------------------------------------------


def _preload(extra: list[str]) -> dict:
    preloaded, missing = [], {}
    if extra:  # SDKs from an installed providers bundle too (ops/providers/sdk.py)
        try:
            # lazy: reads the config (lib dirs), needed only when an SDK is preloaded
            from provisioning.ops.providers.sdk import providers_dirs
            sys.path.extend(str(d) for d in providers_dirs() if str(d) not in sys.path)
        except Exception as e:  # noqa: BLE001 - unreadable config: the plain imports still run
            missing["providers bundle"] = f"{type(e).__name__}: {e}"
    for name in dict.fromkeys((*ALWAYS, *extra)):
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as e:  # noqa: BLE001 - not installed or broken: ops import it then
            missing[name] = f"{type(e).__name__}: {e}"
    if "boto3" in preloaded:
        try:
            _warm_boto3()
        except Exception as e:  # noqa: BLE001 - another botocore: children load it themselves
            missing["boto3 warm-up"] = f"{type(e).__name__}: {e}"
    return {"pid": os.getpid(), "preloaded": preloaded, "missing": missing,
            "files": _module_files(preloaded)}


def _warm_boto3() -> None:
    """Make a boto3 client cheap in a child: botocore's data files (service models,
    endpoints: ~0.3 s to read and parse for EC2) loaded once into one Loader that every
    botocore session of the process then uses when AWS_DATA_PATH is not set (as one
    session reused would), and botocore's operation-name cache filled. Pure data: no
    config file, no credentials, no network, nothing a task's environment changes."""
    import botocore.loaders
    import botocore.session
    from botocore import xform_name

    shared = botocore.loaders.create_loader()
    make_loader = botocore.session.create_loader

    def create_loader(search_path_string: str | None = None):
        return shared if search_path_string is None else make_loader(search_path_string)

    botocore.session.create_loader = create_loader  # what Session._register_data_loader calls
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        shared.load_data(name)
    model = shared.load_service_model("ec2", "service-2")
    shared.load_service_model("ec2", "endpoint-rule-set-1")
    for operation in model["operations"]:
        xform_name(operation)
    # One throwaway client (its own session, explicit region and dummy keys: no credential
    # chain, no network) fills the module-level caches a client creation uses.
    import boto3.session

    boto3.session.Session(aws_access_key_id="zygote", aws_secret_access_key="zygote",
                          region_name="us-east-1").client("ec2")


def _module_files(preloaded: list[str]) -> list[list]:
    tops = {name.partition(".")[0] for name in preloaded}
    files = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not (name.startswith("provisioning.") or name in tops):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append([path, st.st_mtime_ns, st.st_size])
    return files


def _marker_works() -> bool:
    """Can a forked child show its task key in /proc/<pid>/environ? (a probe child)"""
    if not sys.platform.startswith("linux"):
        return False
    pid = os.fork()
    if pid == 0:
        try:
            ok = _mark("probe.probe/0") and \
                b"\0" + MARKER_ENV.encode() + b"=probe.probe/0\0" in _read("/proc/self/environ")
        except BaseException:  # noqa: BLE001 - a probe: any failure means no
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return b"\0" + f.read()


def _serve(sock: socket.socket):
    """Fork a child per spawn request until retired; returns only in a child."""
    children: dict[int, int] = {}  # pid -> its status pipe
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd is written
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    accepting = True
    while accepting or children:
        for fd, _ in poller.poll():
            if fd == wake_r:
                _drain(wake_r)
                _reap(children)
                continue
            if not accepting:
                continue
            msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 3)
            if not msg:  # the daemon is gone: leave at once, like the daemon did
                for f in fds:
                    os.close(f)
                return None
            request = json.loads(msg)
            if request.get("retire"):
                accepting = False
                poller.unregister(sock)
                continue
            pid = _fork(sock, request, fds, children)
            if pid == 0:
                own = [sock.detach(), wake_r, wake_w, *children.values()]
                return request, fds, own
    return None


def _fork(sock: socket.socket, request: dict, fds: list[int], children: dict[int, int]) -> int:
    """Fork the task's child; in the zygote reply with its pid and pidfd. 0 in the child."""
    marker = request.get("marker") or request.get("key", "")
    if len(fds) != 3 or len(marker.encode()) >= MARKER_RESERVE:
        for f in fds:
            os.close(f)
        sock.send(json.dumps({"error": "bad spawn request"}).encode())
        return -1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as e:
        for f in fds:
            os.close(f)
        sock.send(json.dumps({"error": f"fork: {e}"}).encode())
        return -1
    if pid == 0:
        return 0
    os.close(fds[0])
    os.close(fds[1])
    children[pid] = fds[2]
    pidfd = os.pidfd_open(pid)  # before any reap: it is this child, not a reused pid
    try:
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
    finally:
        os.close(pidfd)
    return pid


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is None:
            continue
        try:
            os.write(fd, STATUS.pack(b"Z", status))
        except OSError:  # the daemon closed it: nobody waits any more
            pass
        os.close(fd)


# -- the child: becomes the task's process ---------------------------------------------


def _run_task(request: dict, fds: list[int], own: list[int]) -> None:
    """Set the child up as `python script.py` would be, run the op, exit with its code."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin_fd, out_fd, status_fd = fds
    os.dup2(stdin_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    if status_fd != STATUS_FD:
        os.dup2(status_fd, STATUS_FD, inheritable=False)
    os.set_inheritable(STATUS_FD, False)  # a program the op runs must not hold it
    for fd in {stdin_fd, out_fd, status_fd, *own} - {0, 1, 2, STATUS_FD}:
        os.close(fd)
    _mark(request.get("marker") or request["key"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    _fresh_stdio()
    script = request["argv"][1]
    sys.argv = list(request["argv"][1:])
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    code = _run_script(script)
    _finish()
    try:
        os.write(STATUS_FD, STATUS.pack(b"C", code))
        os.close(STATUS_FD)  # from now on only the zygote holds the pipe (children.py)
    except OSError:
        pass
    os._exit(code)


def _finish() -> None:
    """What an interpreter does at exit that an op may rely on: wait for its non-daemon
    threads, run its atexit handlers, flush stdout and stderr. Not the rest (tearing
    down every module): that would write to every shared page, copying the zygote's
    whole heap into this child for nothing."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own exit step
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _run_script(script: str) -> int:
    """Run the script as `python script.py` does: compiled from its source, in a fresh
    `__main__` module. (runpy.run_path would do too, but imports pkgutil on its first
    call: 17 ms per child, a zygote's fork costs less than that.)"""
    import types

    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec", dont_inherit=True)
        exec(code, main.__dict__)  # noqa: S102 - the op's own script, as python would run it
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - as the interpreter does: traceback, exit 1
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _mark(marker: str) -> bool:
    """Write the run marker over the placeholder value of MARKER_ENV in the memory of the
    environment this process was started with: /proc/<pid>/environ shows that memory,
    and recovery (engine/proctree.py) finds task processes by it. The rest of the
    placeholder becomes a string without '=' (psutil skips it)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_void_p
    where = libc.getenv(MARKER_ENV.encode())
    value = marker.encode()
    if not where or len(value) >= MARKER_RESERVE:
        return False
    filler = value + b"\0" + b"_" * (MARKER_RESERVE - len(value) - 1)
    ctypes.memmove(where, filler, MARKER_RESERVE)
    return True


def _fresh_stdio() -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, buffered as a fresh interpreter's would be
    (the zygote's were made for its own stdio: a log file, maybe a terminal)."""
    enc, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = open(0, encoding=enc, errors=errors, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=enc, errors=errors,  # noqa: SIM115
                                       closefd=False, buffering=-1)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=enc,  # noqa: SIM115
                                       errors="backslashreplace", closefd=False, buffering=1)
