"""Task threads that are reused: one per running task, kept for the next one.

Each running task needs a thread of its own (it blocks on its process's pipe
and exit). Starting a thread per task cost the scheduler a thread start
(which waits for the new thread to run) under the engine lock for every
task: at hundreds of short tasks a second that was a large part of the
per-task overhead. So threads stay and take the next task.

Like concurrent.futures.ThreadPoolExecutor, a new thread is started only
when none is idle, so a task never waits behind another one; unlike it, the
threads are daemon threads: a task thread still waiting on a process must
never keep the interpreter from exiting (the engine's shutdown kills and
reaps the processes first; a CLI interrupted with Ctrl-C must still exit).

A job handed over by a task thread itself (a task that ended starts the
next ready ones) is the end of that thread's own job: the first such job
is run next by that same thread rather than woken up in another one, which
saves a thread hand-off per task (~10-20% of a trivial task's wall time on
2 busy cores); any further ones go to idle threads as usual.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("provisioning.engine")


class TaskThreads:
    def __init__(self, name: str = "task") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one count per thread waiting for a job
        self._count = 0
        self._lock = threading.Lock()
        self._mine = threading.local()  # .next: the job this task thread runs next

    def run(self, job: Callable[[], None]) -> None:
        """Run `job` in an idle thread, or in a new one if none is idle (or next in
        the calling task thread, which is finishing its own job: see the docstring)."""
        mine = self._mine
        if getattr(mine, "worker", False) and mine.next is None:
            mine.next = job
            return
        if not self._idle.acquire(blocking=False):
            with self._lock:
                self._count += 1
                number = self._count
            threading.Thread(target=self._work, name=f"{self._name}-{number}",
                             daemon=True).start()
        self._jobs.put(job)

    def _work(self) -> None:
        mine = self._mine
        mine.worker, mine.next = True, None
        while True:
            job = self._jobs.get()
            while job is not None:
                try:
                    job()
                except Exception:  # a bug in one job must not lose the thread's next jobs
                    log.exception("task thread error")
                job, mine.next = mine.next, None  # no reference to a finished task while idle
            self._idle.release()
