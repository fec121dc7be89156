"""The local backend: worker processes that each train chunks of jobs and run them whole (Hydra's
job machinery and MLflow logging included); they ignore Ctrl-C, are stopped by this process, and
exit by themselves when it is gone."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn

from xorexp import chunks, progress, train_ahead
from xorexp.compat.futures import pool_processes
from xorexp.subprocesses import SINGLE_THREAD_BLAS, exit_with_parent, quick_teardown, worker_context
from xorexp.train import plan_batches

from ._job_runner import (
    MIN_RUNS_FOR_WORKERS,
    TASKS_PER_WORKER,
    Job,
    JobRunner,
    failure,
    runner_for,
    signals_ignored,
    train_batch,
)

STOP_WAIT_S = 3.0  # how long stopped workers get before they are killed


def _init_worker(events, parent_pid: int) -> None:
    """In each worker: Ctrl-C is the launching process's to handle, SIGTERM (``_stop``) ends it (a
    forked worker would otherwise inherit the launching process's handler); job ends go to its
    progress; the worker exits by itself when the launching process is gone, and quickly when told to
    (a forked one leaves with ``os._exit``, as multiprocessing's forked children do)."""
    quick_teardown()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    progress.feed(progress.queue_sink(events))  # for the worker's whole life

    exit_with_parent(parent_pid)


def run_jobs_in_worker(context: bytes, batch: list[Job], known: list | None = None) -> bytes:
    """Worker side: train the chunk (its runs not ``known`` already), then run its jobs through Hydra's
    job machinery.

    ``context`` is the cloudpickled (Hydra singletons, hydra context, task function, composer with
    its templates): as in Hydra's joblib launcher, which ships the same through loky; plain pickle
    cannot carry the resolvers OmegaConf registers as local functions. A worker unpickles a context
    once and keeps its runner (and so its logging) for the next chunks of the same launch. The
    returned JobReturns go back the same way (cloudpickled list of (job index, JobReturn)).
    """
    runner = runner_for(context)
    returns = runner.run_all(batch, train_batch(batch, known))
    return cloudpickle.dumps(list(returns.items()))


def launch_on_processes(
    launcher, jobs: list[Job], runner: JobRunner, chunk_size: int, n_workers: int
) -> dict[int, JobReturn]:
    task_size = max(MIN_RUNS_FOR_WORKERS, math.ceil(len(jobs) / (n_workers * TASKS_PER_WORKER)))
    plan = plan_batches([job.spec for job in jobs], min(chunk_size, task_size))
    context = cloudpickle.dumps(
        (Singleton.get_state(), launcher.hydra_context, launcher.task_function, runner.composer)
    )
    returns: dict[int, JobReturn] = {}
    ahead = train_ahead.ready()
    # the workers render the plots the child training ahead did not: forked, they start with the
    # plotter (set up while the child goes on rendering); otherwise only the sweep's end needs it,
    # and it is set up while the workers work
    rendered = all(isinstance(ahead.get(job.spec), tuple) for job in jobs)
    if not rendered:
        chunks.warm_up()
        ahead = train_ahead.ready()
    train_ahead.stop()  # its core is the workers' now: they train the runs it has not sent
    start = worker_context()
    events = start.SimpleQueue()
    pool = ProcessPoolExecutor(
        n_workers, mp_context=start, initializer=_init_worker, initargs=(events, os.getpid())
    )
    relay = threading.Thread(target=_relay, args=(events,), name="xorexp-progress", daemon=True)
    batches: dict[Future, list[Job]] = {}
    try:
        # the workers start at the first submission (forked: all at once, before any thread here)
        with _thread_env(**SINGLE_THREAD_BLAS):
            for members in plan:
                batch = [jobs[i] for i in members]
                known = [ahead.get(job.spec) for job in batch]
                batches[pool.submit(run_jobs_in_worker, context, batch, known)] = batch
        relay.start()
        if rendered:
            chunks.warm_up()
        pending = set(batches)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    returns.update(cloudpickle.loads(future.result()))
                except Exception as error:  # the worker died (or its result could not come back)
                    batch = batches[future]
                    what = "its worker process died (killed, or out of memory)" if isinstance(
                        error, BrokenProcessPool
                    ) else "its worker process failed"
                    why = failure(what, error)
                    returns.update(runner.run_all(batch, [why] * len(batch)))
    finally:
        with signals_ignored():  # a second Ctrl-C must not cut the workers' stop short
            _stop(pool)
            # the relay's end, after every event of the workers. Not from this thread: a worker killed
            # while one of its threads was putting an event (a job's run ending in the background)
            # leaves the queue's lock held for good, and this put would wait forever
            if relay.is_alive():
                threading.Thread(
                    target=events.put, args=(None,), name="xorexp-progress-end", daemon=True
                ).start()
                relay.join(timeout=STOP_WAIT_S)
    return returns


def _relay(events) -> None:
    """Job ends reported by the workers, into this process's progress (and its failure lines)."""
    while True:
        event = events.get()
        if event is None:
            return
        progress.job_ended(event[0], failed=event[1], message=event[2])


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down; workers still busy (an interrupt, a failing store) are stopped in seconds.

    ProcessPoolExecutor has no public way to stop busy workers: its processes
    (``compat.futures.pool_processes``) are terminated (SIGTERM), then killed if still there after
    ``STOP_WAIT_S``. A run a worker was writing stays
    RUNNING in the store; the sweep's abort (or the next command) ends it.
    """
    processes = pool_processes(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    busy = [process for process in processes if process.is_alive()]
    for process in busy:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for process in busy:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


@contextlib.contextmanager
def _thread_env(**values: str) -> Iterator[None]:
    """Environment for worker processes started inside (spawned children copy it at start)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
