"""Start-up cost of the zipapp: `provisioning version` from the shiv zipapp vs the venv.

    .venv/bin/python bench/zipapp_start.py [--pyz dist/provisioning] [--runs 20]

Without --pyz it builds one with packaging/build into a temp dir first. The
zipapp's first run (unpacking into a fresh SHIV_ROOT) is reported on its own;
the target is a warm zipapp within 1.5x of the venv entry point. The zipapp
runs under the venv's base interpreter (same Python, none of the venv's
packages), so only the packaging differs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.5


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pyz", help="a built zipapp (default: build one now)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--python", help="interpreter for the zipapp (default: the venv's base)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONING_", "SHIV_"))}
    with tempfile.TemporaryDirectory(prefix="zipapp-bench-") as tmp:
        pyz = Path(args.pyz) if args.pyz else None
        if pyz is None:
            subprocess.run([sys.executable, str(REPO / "packaging" / "build"),
                            "--out", f"{tmp}/dist"], check=True, stdout=subprocess.DEVNULL)
            pyz = Path(tmp) / "dist" / "provisioning"
        venv_entry = Path(sys.executable).parent / "provisioning"
        zenv = {**env, "SHIV_ROOT": f"{tmp}/shiv"}
        # The venv's own interpreter would also see the venv's (editable) packages;
        # its base interpreter is the same Python without them.
        base = args.python or getattr(sys, "_base_executable", sys.executable)
        zipapp_cmd = [base, str(pyz), "version"]
        # what each interpreter costs before any of our code runs (site hooks
        # of the base install, e.g. .pth files, show up here)
        bare = {"zipapp python": [base, "-c", "pass"],
                "venv python": [sys.executable, "-c", "pass"]}
        venv_cmd = [str(venv_entry), "version"]

        first = timed(zipapp_cmd, zenv)
        timed(venv_cmd, env)  # warm the venv's own pyc files too
        zip_times, venv_times = [], []
        bare_times: dict[str, list[float]] = {k: [] for k in bare}
        for _ in range(args.runs):  # interleaved, so load on the host hits both alike
            zip_times.append(timed(zipapp_cmd, zenv))
            venv_times.append(timed(venv_cmd, env))
            for k, argv in bare.items():
                bare_times[k].append(timed(argv, env))
    z, v = statistics.median(zip_times), statistics.median(venv_times)
    ratio = z / v
    print(f"zipapp first run (unpack):  {first * 1000:7.1f} ms")
    print(f"zipapp warm, median of {args.runs}: {z * 1000:7.1f} ms")
    print(f"venv entry, median of {args.runs}:  {v * 1000:7.1f} ms")
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    for k, ts in bare_times.items():
        print(f"{k + ' -c pass':27s}  {statistics.median(ts) * 1000:7.1f} ms")
    print(f"ratio zipapp/venv:           {ratio:7.2f}x  (target <= {TARGET_RATIO}x: {verdict})")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
