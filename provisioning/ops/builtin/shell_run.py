"""Built-in op `shell.run`: run an argv list without a shell.

Params on stdin: {"argv": ["cmd", "arg", ...], "cwd"?: str, "env"?: {str: str}}.
The command replaces this process (exec), so its exit code, signals and
output are the task's own, and nothing stands between it and the executor.
"""

import json
import os
import sys


def _fail(message):
    sys.stderr.write("shell.run: " + message + "\n")
    sys.stderr.flush()
    sys.exit(2)


def main():
    try:
        params = json.loads(sys.stdin.buffer.read() or b"{}")
    except ValueError as e:
        _fail(f"params are not valid JSON: {e}")
    if not isinstance(params, dict):
        _fail("params must be a JSON object")
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        _fail('params.argv must be a non-empty list of strings, e.g. {"argv": ["true"]}')
    env = dict(os.environ)
    extra = params.get("env") or {}
    if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        _fail("params.env must be an object of string values")
    env.update(extra)
    cwd = params.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str):
            _fail("params.cwd must be a string")
        try:
            os.chdir(cwd)
        except OSError as e:
            _fail(f"cannot change to cwd {cwd!r}: {e}")
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - an argv list, no shell
    except FileNotFoundError:
        sys.stderr.write(f"shell.run: command not found: {argv[0]}\n")
        sys.exit(127)
    except OSError as e:
        sys.stderr.write(f"shell.run: cannot run {argv[0]}: {e}\n")
        sys.exit(126)


main()
