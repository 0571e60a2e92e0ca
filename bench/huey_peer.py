"""Peer reference: huey's file storage running the same subprocesses.

Run inside a venv that has huey (bench/__main__.py creates one). Prints one
JSON object: {"seconds": wall time from first enqueue to last result}.
Usage: python bench/huey_peer.py N PARALLEL DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def main() -> None:
    n, parallel, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    from huey import FileHuey

    huey = FileHuey("bench", path=path, results=True)

    @huey.task()
    def run_true() -> int:
        return subprocess.run(["true"], check=False).returncode

    # Tuned for speed, not huey's defaults (0.1 s initial poll, backoff to 10 s):
    # the fairest fast configuration of the peer.
    consumer = huey.create_consumer(workers=parallel, worker_type="thread", periodic=False,
                                    initial_delay=0.001, backoff=1.0, max_delay=0.001,
                                    check_worker_health=False)
    consumer.start()
    t0 = time.perf_counter()
    results = [run_true() for _ in range(n)]
    codes = [r.get(blocking=True, timeout=120) for r in results]
    elapsed = time.perf_counter() - t0
    consumer.stop(graceful=True)
    assert codes == [0] * n, codes
    print(json.dumps({"seconds": elapsed}))


if __name__ == "__main__":
    main()
