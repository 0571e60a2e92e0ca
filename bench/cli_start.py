"""CLI start-up: `provisioning version` vs `python -c pass`, same interpreter, same run.

Target (issue 2): median within 3x of `python -c pass`.
Usage: python bench/cli_start.py [--runs N] [--zipapp PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, print_row, summary, time_command  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--zipapp", help="also time this zipapp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-cli-")
    env = {"PROVISIONING_STORAGE_DATA_DIR": tmp, "PROVISIONING_USER_CONFIG_DIR": tmp}
    rows = {}
    rows["python -c pass"] = summary(time_command([sys.executable, "-c", "pass"], args.runs))
    rows["provisioning version (venv)"] = summary(
        time_command([str(BIN / "provisioning"), "version"], args.runs, env))
    try:
        rows["provisioning server list (venv)"] = summary(
            time_command([str(BIN / "provisioning"), "server", "list"], args.runs, env))
    except subprocess.CalledProcessError as e:
        print(f"server list unavailable (exit {e.returncode})", file=sys.stderr)
    if args.zipapp:
        rows["provisioning version (zipapp)"] = summary(
            time_command([args.zipapp, "version"], args.runs, env))
    ref = rows["python -c pass"]
    print(f"{'benchmark':<44} {'median':>9} {'min':>9} {'max':>9}     ratio")
    for name, s in rows.items():
        print_row(name, s, ref)
    result = {name: {**s, "ratio": s["median"] / ref["median"]} for name, s in rows.items()}
    return result


if __name__ == "__main__":
    result = main()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
