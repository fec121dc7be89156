"""Runs' requests to a tracking server, in flight while a launcher's next jobs run.

To a server far away, each request is a round trip; a job that waits for its run's requests before
the next job starts pays them one after the other. A job of the vectorized launcher may instead hand
its run's requests (create; values and uploads; status: see ``xorexp.job.run_tracked``) to the
launcher's ``Background`` and go on: at most ``RUNS_IN_FLIGHT`` runs are in flight per process
(``submit`` waits for a free slot), their requests overlap, and the launcher ``settle``s them before
it reports its jobs done: each job's final value, or the first ``BaseException`` one of them raised
(e.g. an ``errors.Abort``: the store failed). ``stop`` is for a launcher that stops early (an
interrupt, a failing store): runs not started are dropped, those in flight get ``STOP_WAIT_S`` to
end (one created meanwhile ends with the stop's status).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

RUNS_IN_FLIGHT = 4  # a process's runs whose requests are in flight at once, at most (with 8 upload threads:
# up to 13 requests at once per process; at 8 runs, 2 workers to one loaded server timed out)
STOP_WAIT_S = 5.0  # how long ``stop`` waits for the runs in flight


class Background:
    """Callables of jobs (one per job key), run on at most ``runs`` threads, settled together."""

    def __init__(self, runs: int = RUNS_IN_FLIGHT) -> None:
        self.runs = runs
        self.pool: ThreadPoolExecutor | None = None  # made on first use
        self.slots = threading.BoundedSemaphore(runs)
        self.futures: dict[Hashable, Future] = {}
        self.failures: list[BaseException] = []  # what the work of jobs raised, first first
        self.stop_status: str | None = None  # set by ``stop``: how work that sees it ends its run

    def submit(self, key: Hashable, work: Callable[[], object]) -> None:
        """Run ``work`` for the job ``key`` once a slot is free. Raises at once what an earlier
        job's work raised (a failing store stops the launcher now, not after its batch)."""
        self._raise_failure()
        self.slots.acquire()  # interruptible: Ctrl-C while waiting goes on up
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.runs, thread_name_prefix="xorexp-run")
        try:
            future = self.pool.submit(work)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(self._done)
        self.futures[key] = future

    def settle(self) -> dict[Hashable, object]:
        """Wait for every job's work; returns key -> what it returned, and forgets them. The first
        exception raised by any of them is raised (after the others ended or ``stop`` is called)."""
        futures, self.futures = self.futures, {}
        done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        failed = [future.exception() for future in done if future.exception() is not None]
        if failed:
            self.futures = futures  # some may still be in flight: for ``stop``
            raise failed[0]
        return {key: future.result() for key, future in futures.items()}

    def stop(self, status: str) -> None:
        """The launcher stops early: drop the work not started, give the rest ``STOP_WAIT_S``; work
        that checks ``stop_status`` from now on ends its run with ``status`` (KILLED, FAILED). A
        stopped Background stays stopped."""
        self.stop_status = status
        futures, self.futures = list(self.futures.values()), {}
        for future in futures:
            future.cancel()
        wait(futures, timeout=STOP_WAIT_S)
        self.failures = []

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def _done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.failures.append(future.exception())
        self.slots.release()

    def _raise_failure(self) -> None:
        if self.failures:
            raise self.failures[0]
