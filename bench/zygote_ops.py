"""Figure 9: the Python zygote: an AWS op's start-up, and the memory of each op child.

Every Python op of the daemon is forked from its zygote (engine/zygote.py),
which pre-imports the package and boto3. This measures, through the real
executor (TaskProcess, the daemon's code path), one op at a time:

- AWS op start-up: from the start of the task to its EC2 client being ready
  (`boto3.session.Session(region_name=...)`, its credentials, `.client("ec2")`,
  as the `aws` provider makes it; its own code when the package has it,
  provisioning/ops/providers/aws_api.py), three ways: a plain spawn (the cold
  import: interpreter, package, boto3, botocore's data files), forked from a
  zygote without boto3, and forked from one with boto3 pre-imported (the
  default). No network: dummy keys in the task's environment, and a client is
  made but never called. Target (issue 19): <= 0.1x the cold import.
- memory per op child, read by the op itself from /proc/self/smaps_rollup at
  that point: RSS, and USS (its private pages: for a fork, what it copied or
  allocated; the rest stays shared with the zygote), for a noop op and for the
  AWS op, spawned and forked; and the zygote's own RSS/USS.

Usage: python bench/zygote_ops.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_RATIO = 0.1

MEMORY = '''
def smaps():
    """RSS and USS (private pages) of this process, in MiB."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
    return {"rss_mib": fields["Rss"] / 1024,
            "uss_mib": (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024}
'''

AWS_OP = MEMORY + '''
import json, sys, time
params = json.load(sys.stdin)
try:  # the aws provider's own client, when the package has it
    from provisioning.ops.providers.aws_api import Ec2
    Ec2({"region": params["region"]}, log=lambda m: None).client()
    how = "provider"
except (ImportError, TypeError):  # not in this package, or another interface
    import boto3
    from botocore.config import Config
    session = boto3.session.Session(region_name=params["region"])
    assert session.get_credentials() is not None
    session.client("ec2", config=Config(retries={"total_max_attempts": 1}, connect_timeout=10,
                                        read_timeout=60, user_agent_extra="provisioning"))
    how = "inline"
print("RESULT: " + json.dumps({"ready_at": time.time(), "how": how, **smaps()}))
'''

NOOP_OP = MEMORY + '''
import json, sys, time
sys.stdin.buffer.read()
print("RESULT: " + json.dumps({"ready_at": time.time(), **smaps()}))
'''


def boto3_available() -> str:
    """'' if boto3 imports here, else why not."""
    try:
        import boto3  # noqa: F401 - a probe
    except ImportError as e:
        return f"peer unavailable: boto3 is not installed in this interpreter ({e})"
    return ""


def run_op(script: Path, zygote, root: Path, n: int) -> dict[str, Any]:
    from provisioning.engine.executor import TaskProcess, TaskRun, clean_env

    key = f"00000000-0000-4000-8000-000000000000.z{n}"
    env = clean_env({"PROVISIONING_TASK_ID": key, "AWS_ACCESS_KEY_ID": "bench",
                     "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true"})
    run = TaskRun(key=key, argv=[sys.executable, str(script)], params={"region": "eu-west-1"},
                  env=env, log_path=root / f"op{n}.log", attempt=1, timeout_s=120,
                  kill_grace_s=1)
    t0 = time.time()
    out = TaskProcess(run, on_progress=lambda p, m: None, zygote=zygote).run()
    if not out.succeeded or not isinstance(out.result, dict):
        log = run.log_path.read_text() if run.log_path.exists() else ""
        raise RuntimeError(f"{script.name} failed: {out} {log[-300:]}")
    return {**out.result, "startup_s": out.result["ready_at"] - t0}


def start_zygote(preload: tuple[str, ...]):
    from provisioning.engine import zygote as zm
    from provisioning.engine.executor import clean_env

    z = zm.Zygote(env=clean_env({}), settings=zm.ZygoteSettings(True, preload))
    z.start()
    if not z.started.wait(120) or z.pid is None:
        raise RuntimeError("the zygote did not start")
    return z


def zygote_memory(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_mib": info.rss / 2**20, "uss_mib": info.uss / 2**20}


def measure(runs: int, base_dir: str | None = None) -> dict[str, Any]:
    """`runs` interleaved rounds; lists of samples per row."""
    root = Path(tempfile.mkdtemp(prefix="bench-zygote-", dir=base_dir or "/var/tmp"))
    aws, noop = root / "aws_op.py", root / "noop_op.py"
    aws.write_text(textwrap.dedent(AWS_OP))
    noop.write_text(textwrap.dedent(NOOP_OP))
    samples: dict[str, list[float]] = {}
    res: dict[str, Any] = {"samples": samples, "boto3": boto3_available()}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    plain = start_zygote(())
    full = start_zygote(("boto3",)) if not res["boto3"] else None
    try:
        if full is not None:
            for name, value in zygote_memory(full.pid).items():
                add(f"zygote_{name}", value)
        for i in range(runs):
            cases = [("spawn", None), ("fork_bare", plain)]
            cases += [("fork_boto3", full)] if full is not None else []
            for label, z in cases:
                r = run_op(noop, z, root, i)
                add(f"noop_{label}_rss", r["rss_mib"])
                add(f"noop_{label}_uss", r["uss_mib"])
                if full is None:
                    continue
                r = run_op(aws, z, root, i)
                res["how"] = r["how"]
                add(f"aws_{label}_s", r["startup_s"])
                add(f"aws_{label}_rss", r["rss_mib"])
                add(f"aws_{label}_uss", r["uss_mib"])
    finally:
        plain.close()
        if full is not None:
            full.close()
        shutil.rmtree(root, ignore_errors=True)
    return res


def figure(runs: int, base_dir: str | None, scale: str):
    """The bench suite's figure 9 (bench/__main__.py)."""
    from bench.report import Figure, Row, Target, row_from_samples

    r = measure(runs, base_dir)
    s = r["samples"]
    rows = []
    if r["boto3"]:
        rows.append(Row("AWS op start-up", unavailable=r["boto3"]))
    else:
        ref = "AWS op start-up, plain spawn (cold import)"
        what = ("the aws provider's Ec2.client()" if r.get("how") == "provider"
                else "boto3 Session + credentials + ec2 client, as the aws provider makes it")
        rows += [row_from_samples(ref, [x * 1000 for x in s["aws_spawn_s"]], "ms",
                                  reference=ref, is_reference=True, note=what),
                 row_from_samples("AWS op start-up, forked, boto3 not pre-imported",
                                  [x * 1000 for x in s["aws_fork_bare_s"]], "ms", reference=ref),
                 row_from_samples("AWS op start-up, forked, boto3 pre-imported (default)",
                                  [x * 1000 for x in s["aws_fork_boto3_s"]], "ms",
                                  reference=ref, target=Target("<=", TARGET_RATIO, "ratio"))]
    mem_ref = "noop op child, plain spawn: RSS"
    rows.append(row_from_samples(mem_ref, s["noop_spawn_rss"], "MiB", reference=mem_ref,
                                 is_reference=True))
    labels = [("spawn", "plain spawn"), ("fork_bare", "forked (no boto3 in the zygote)")]
    if not r["boto3"]:
        labels.append(("fork_boto3", "forked (boto3 in the zygote)"))
    for op in ("noop", "aws") if not r["boto3"] else ("noop",):
        for label, text in labels:
            if f"{op}_{label}_rss" not in s:
                continue
            if (op, label) != ("noop", "spawn"):
                rows.append(row_from_samples(f"{op} op child, {text}: RSS", s[f"{op}_{label}_rss"],
                                             "MiB", reference=mem_ref))
            rows.append(row_from_samples(f"{op} op child, {text}: USS", s[f"{op}_{label}_uss"],
                                         "MiB", reference=mem_ref,
                                         note="private pages: the rest is shared"
                                         if label != "spawn" else ""))
    if "zygote_rss_mib" in s:
        rows += [row_from_samples("the zygote itself (boto3 pre-imported): RSS",
                                  s["zygote_rss_mib"], "MiB", reference=mem_ref),
                 row_from_samples("the zygote itself: USS", s["zygote_uss_mib"], "MiB")]
    return Figure(9, "Python zygote", scale, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", help="parent of the temp dir (default /var/tmp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.runs, args.dir)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name, values in res["samples"].items():
            print(f"{name:<24} median {statistics.median(values):9.3f}  "
                  f"min {min(values):9.3f}  max {max(values):9.3f}")
    return res


if __name__ == "__main__":
    main()
