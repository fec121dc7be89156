"""Runs' requests to a tracking server, in flight while a launcher's next jobs run.

To a server far away, each request is a round trip; a job that waits for its run's requests before
the next job starts pays them one after the other. A job of the vectorized launcher may instead hand
its run's requests (create; values and uploads; status: see ``xorexp.job.run_tracked``) to the
launcher's ``Background`` and go on: at most ``RUNS_IN_FLIGHT`` runs are in flight per process
(``submit`` waits for a free slot), their requests overlap, and the launcher ``settle``s them before
it reports its jobs done: each job's final value, or the first ``BaseException`` one of them raised
(e.g. an ``errors.Abort``: the store failed). ``stop`` is for a launcher that stops early (an
interrupt, a failing store): runs not started are dropped, those in flight get ``STOP_WAIT_S`` to
end (one created meanwhile ends with the stop's status). The threads are daemons: a request still
waiting on a dead or slow server after that does not hold the process's exit (the sweep has marked
its unfinished runs KILLED or FAILED by then).
"""

from __future__ import annotations

import contextvars
import functools
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_EXCEPTION, Future, wait

RUNS_IN_FLIGHT = 4  # a process's runs whose requests are in flight at once, at most (with 8 upload threads:
# up to 13 requests at once per process; at 8 runs, 2 workers to one loaded server timed out)
STOP_WAIT_S = 5.0  # how long ``stop`` waits for the runs in flight


class Background:
    """Callables of jobs (one per job key), run on at most ``runs`` daemon threads, settled together."""

    def __init__(self, runs: int = RUNS_IN_FLIGHT) -> None:
        self.runs = runs
        self.queue: queue.SimpleQueue = queue.SimpleQueue()  # (future, work); None: a thread ends
        self.threads: list[threading.Thread] = []  # started on demand, up to ``runs``
        self.slots = threading.BoundedSemaphore(runs)
        self.futures: dict[Hashable, Future] = {}  # in submission order
        self.failures: list[BaseException] = []  # what the work of jobs raised, first first
        self.stop_status: str | None = None  # set by ``stop``: how work that sees it ends its run

    def submit(self, key: Hashable, work: Callable[[], object]) -> None:
        """Run ``work`` for the job ``key`` once a slot is free. Raises at once what an earlier
        job's work raised, also while this one waited for its slot (a failing store stops the
        launcher now, not after its batch)."""
        self._raise_failure()
        self.slots.acquire()  # interruptible: Ctrl-C while waiting goes on up
        try:
            self._raise_failure()
        except BaseException:
            self.slots.release()
            raise
        future: Future = Future()
        future.add_done_callback(self._done)
        work = functools.partial(contextvars.copy_context().run, work)  # e.g. its job's progress sink
        if len(self.threads) < self.runs:
            thread = threading.Thread(target=self._serve, name=f"xorexp-run-{len(self.threads)}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.queue.put((future, work))
        self.futures[key] = future

    def settle(self) -> dict[Hashable, object]:
        """Wait for every job's work; returns key -> what it returned, and forgets them. If any of
        them raised, raises at once the exception of the first submitted among those that did (the
        others may still be in flight: for ``stop``)."""
        futures, self.futures = self.futures, {}
        done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in futures.values() if f in done and f.exception() is not None]
        if failed:
            self.futures = futures
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
        """No more work: idle threads end; one still in a request ends with it, or with the process."""
        for _ in self.threads:
            self.queue.put(None)
        self.threads = []

    def _serve(self) -> None:
        while (item := self.queue.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():  # cancelled by ``stop``
                continue
            try:
                result = work()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.failures.append(future.exception())
        self.slots.release()

    def _raise_failure(self) -> None:
        if self.failures:
            raise self.failures[0]
