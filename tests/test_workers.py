"""Task threads (engine/workers.py): reused, never a job waiting behind another,
and the first job a finishing task thread hands over runs next in that thread."""

from __future__ import annotations

import threading

from provisioning.engine.workers import TaskThreads
from tests.conftest import wait_for


def test_a_finishing_job_runs_the_first_job_it_starts_itself_and_the_rest_elsewhere():
    pool = TaskThreads("t")
    seen: dict[str, str] = {}
    other_started = threading.Event()
    done = threading.Semaphore(0)

    def next_job():  # blocks until `other` runs: `other` must not wait behind it
        seen["next"] = threading.current_thread().name
        assert other_started.wait(10)
        done.release()

    def other_job():
        seen["other"] = threading.current_thread().name
        other_started.set()
        done.release()

    def first():
        seen["first"] = threading.current_thread().name
        pool.run(next_job)  # runs after `first`, in this thread
        pool.run(other_job)  # in another thread, at once
        done.release()

    pool.run(first)
    for _ in range(3):
        assert done.acquire(timeout=10)
    assert seen["next"] == seen["first"] != seen["other"]


def test_jobs_from_outside_run_at_once_in_parallel_and_threads_are_reused():
    pool = TaskThreads("t")
    gate = threading.Barrier(3, timeout=10)
    names = []
    for _ in range(3):  # all three must run at the same time to pass the barrier
        pool.run(lambda: names.append((gate.wait(), threading.current_thread().name)))
    wait_for(lambda: len(names) == 3, timeout=10, what="three parallel jobs")
    before = {n for _, n in names}
    wait_for(lambda: pool._idle._value == 3, timeout=10, what="the threads to be idle")
    again = []
    pool.run(lambda: again.append(threading.current_thread().name))
    wait_for(lambda: again, timeout=10, what="a reused thread")
    assert again[0] in before and len(before) == 3
