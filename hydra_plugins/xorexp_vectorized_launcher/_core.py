"""The vectorized launcher's work.

1. Every job's RunSpec is derived and checked before anything runs (a bad value stops the launch
   in one line).
2. Runs are trained in engine batches ("chunks": same ``hidden_units`` and ``trace_every``).
3. Each job then goes through Hydra's job machinery (job dir, ``.hydra`` files, callbacks, return
   value: ``_hydra_job.run_job``, Hydra's ``run_job`` without its per-job copies) with its config
   made once and its checked spec and result handed over (``xorexp.job.Handover``), so the task
   function logs the result instead of checking and training again. To a tracking server, a job
   leaves its run's remaining requests to the runner's ``Background`` and the next job starts: the
   runs of a batch are in flight together (bounded), and settled before the batch's JobReturns go.

Where that happens depends on the sweep and the backend:
- few runs, or ``n_jobs=1``: all in this process;
- ``backend=local`` (default): each worker process takes chunks of jobs and does all three steps
  for them, Hydra's job machinery and MLflow logging included (the store is an existing one by
  then: the sweep callback created it; sqlite takes a few concurrent writers);
- ``backend=ray`` with a tracking server (``http(s)://``): each Ray task does all three steps for its
  chunk's jobs and logs their runs to the server itself, as a local worker does; what comes back is
  the JobReturns, the jobs' progress events and their job dirs' small files (written here when
  missing: the tasks may run on other machines);
- ``backend=ray`` with any other store (sqlite: one writer): Ray tasks only train chunks and render
  plots; results come back here and only this process runs the jobs and writes to the store.

Failure paths: a chunk whose training raises fails each of its jobs alone (a FAILED run each); a
worker process that dies fails the jobs it had not finished (their records say which); a failing
store (``errors.Abort`` from a job) and Ctrl-C/SIGTERM stop every worker within seconds and go on up
to the entry point, which ends the sweep's runs. Workers ignore Ctrl-C (this process decides) and
exit by themselves when this process is gone (e.g. ``kill -9``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import OmegaConf, open_dict

from xorexp import chunks, parent_run, progress, provenance, train_ahead
from xorexp.background import Background
from xorexp.errors import Abort, fail
from xorexp.job import JOB_RECORD, TERMINAL, Handover, handing_over, leave_stale_runs
from xorexp.params import run_name
from xorexp.subprocesses import SINGLE_THREAD_BLAS, exit_with_parent, quick_teardown, worker_context
from xorexp.tracking.uri import resolve_uri, store_kind
from xorexp.train import RunResult, RunSpec, plan_batches

from . import _hydra_job
from ._compose import Composer, Planned

log = logging.getLogger(__name__)

RENDER_BATCH = 25  # runs per plot-rendering task (ray backend)
MIN_RUNS_FOR_WORKERS = train_ahead.MIN_RUNS  # below: no workers (costs more than it saves), trained ahead
TASKS_PER_WORKER = 4  # local backend: jobs go to workers in about this many chunks per worker
MAX_RETURNED_FILE = 1_000_000  # bytes: a job dir's files a Ray task sends back (yamls, log, record)
STOP_WAIT_S = 3.0  # how long stopped workers get before they are killed
BACKENDS = ("local", "ray")


@dataclass
class Job:
    idx: int
    overrides: list[str]
    planned: Planned

    @property
    def spec(self) -> RunSpec | None:
        """None: not an xorexp run config (then the job runs as the basic launcher would)."""
        return self.planned.spec


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    backend = str(launcher.backend)
    if backend not in BACKENDS:  # also checked before the sweep starts (VectorizedLauncher.check_config)
        fail(f"invalid config: hydra.launcher.backend={backend!r}: must be 'local' or 'ray'")
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs, vectorized")

    composer = Composer(launcher.hydra_context.config_loader, config)
    jobs = [
        Job(initial_job_idx + i, list(overrides), composer.plan(overrides))
        for i, overrides in enumerate(job_overrides)
    ]
    trainable = [job for job in jobs if job.spec is not None]
    chunk_size = max(1, int(launcher.chunk_size))
    n_jobs = int(launcher.n_jobs)
    n_workers = (os.cpu_count() or 1) if n_jobs < 1 else n_jobs

    runner = JobRunner(launcher.hydra_context, launcher.task_function, composer)
    try:
        if backend == "ray":
            returns = _launch_on_ray(launcher, trainable, runner, chunk_size)
        elif n_workers > 1 and len(trainable) >= MIN_RUNS_FOR_WORKERS:
            returns = _launch_on_processes(launcher, trainable, runner, chunk_size, n_workers)
        else:
            returns = {}
            for members in plan_batches([job.spec for job in trainable], chunk_size):
                batch = [trainable[i] for i in members]
                known = train_ahead.take([job.spec for job in batch])
                returns.update(runner.run_all(batch, _train(batch, known)))
        for job in jobs:
            if job.spec is None:
                returns[job.idx] = runner.run_hydra_job(job)
    finally:
        runner.close()
        runner.shutdown()
    return [returns[job.idx] for job in jobs]


def _train(batch: list[Job], known: Sequence[RunResult | None] | None = None) -> list:
    """The chunk's results, or for each job the error that stopped its training. ``known``: results
    there already (trained ahead: ``xorexp.train_ahead``), None where the run is trained here."""
    results = list(known) if known is not None else [None] * len(batch)
    missing = [i for i, result in enumerate(results) if result is None]
    if missing:
        try:
            trained = chunks.train_chunk([batch[i].spec for i in missing])
        except Exception as error:  # its traceback goes with each job's FAILED run
            trained = [_failure("training the chunk failed", error)] * len(missing)
        for i, result in zip(missing, trained, strict=True):
            results[i] = result
    return results


def _failure(what: str, error: BaseException) -> tuple[None, chunks.WorkerError]:
    """What a job gets instead of its result when the launcher's work on it failed."""
    details = "".join(traceback.format_exception(error))
    if isinstance(error, BrokenProcessPool):
        return None, chunks.WorkerError(what, details)
    return None, chunks.WorkerError(f"{what}: {type(error).__name__}: {error}", details)


class JobRunner:
    """Runs the launcher's jobs in one process (the launching one, or a worker) through Hydra's job
    machinery: xorexp jobs with ``_hydra_job.run_job`` and their handover, other jobs with Hydra's
    own ``run_job``. Job logging is configured once for all the jobs it runs (``close`` puts the
    launcher's logging back)."""

    def __init__(self, hydra_context, task_function, composer: Composer) -> None:
        _hydra_job.memoize_interpolation_parsing()
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.composer = composer
        self.logs = _hydra_job.JobLogs()
        self.background = Background()
        self.output_dir: str | None = None  # of the last xorexp job run
        self.output_dirs: dict[int, str | None] = {}  # of the jobs of the last ``run_all``

    def run_all(
        self,
        batch: list[Job],
        results: list,
        out: dict[int, JobReturn] | None = None,
        feeds: dict[int, progress.Sink] | None = None,
    ) -> dict[int, JobReturn]:
        """Run jobs whose results (or per-run errors) are known: ``results[i]`` is a RunResult,
        ``(RunResult, plots)`` or ``(None, the error)``. Returns once every job's run has ended
        (those left to the background too: a job whose run failed there returns NaN, as one that
        failed in its own thread); what stops the batch (an interrupt, a failing store) stops the
        runs in flight first (``Background.stop``), then goes on up; what one job raised outside its
        run's handling goes on up once the runs already handed over have ended. The JobReturns go into ``out``
        as the jobs return (a caller's dict keeps them when the batch is stopped; the values of runs
        still in the background are settled only at the end); a job whose index is in ``feeds``
        reports its end there (from the background too)."""
        out = {} if out is None else out
        self.output_dirs = {}
        try:
            for job, precomputed in zip(batch, results, strict=True):
                result, extra = precomputed if isinstance(precomputed, tuple) else (precomputed, None)
                if isinstance(extra, Exception):
                    handover = Handover(job.spec, error=extra)
                else:
                    handover = Handover(job.spec, result=result, pngs=extra, background=self.background)
                sink = feeds.get(job.idx) if feeds is not None else None
                with progress.feeding(sink) if sink is not None else contextlib.nullcontext():
                    out[job.idx] = self.run(job, handover)
                self.output_dirs[job.idx] = self.output_dir
            for idx, value in self.background.settle().items():
                out[idx].return_value = value
        except Abort as error:
            self._stop_background(error)
            raise
        except Exception:
            # one job failed outside its run's handling: the runs handed over before it are other
            # jobs', they end as they would have (unless the store fails or an interrupt comes)
            try:
                for idx, value in self.background.settle().items():
                    out[idx].return_value = value
            except BaseException as later:
                self._stop_background(later)
                raise
            raise
        except BaseException as error:
            self._stop_background(error)
            raise
        return out

    def _stop_background(self, error: BaseException) -> None:
        """Stop the runs in flight (KILLED on an interrupt, else FAILED); a stopped Background stays
        stopped: the runner's next batch (a Ray worker's next task) gets a fresh one."""
        stopped, self.background = self.background, Background()
        with _signals_ignored():  # a second Ctrl-C must not cut the stop short
            stopped.stop("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        stopped.close()

    def run(self, job: Job, handover: Handover) -> JobReturn:
        log.debug(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")
        configs = self.composer.job_configs(job.planned, job.idx)
        self.output_dir = None
        with handing_over(handover):
            ret = _hydra_job.run_job(self.hydra_context, self.task_function, configs, self.logs)
        self.output_dir = str(configs.config.hydra.runtime.output_dir)
        # A sweep keeps every job's JobReturn until it ends (up to config.MAX_JOBS of them): with its
        # two configs, ~250 kB each (a 10,000-run sweep's launching process peaked at 2.8 GB). An
        # xorexp job's configs are in its job dir (.hydra/) and its run already, and its callbacks have
        # had them (on_job_end ran); sweepers read its status and return value.
        ret.cfg = None
        ret.hydra_cfg = None
        return ret

    def run_hydra_job(self, job: Job) -> JobReturn:
        """A job that is not an xorexp run, exactly as the basic launcher runs it."""
        log.debug(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")
        cfg = job.planned.cfg if job.planned.cfg is not None else self.composer.full(job.overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{job.idx}"
            cfg.hydra.job.num = job.idx
        self.logs.reset()
        ret = run_job(  # sets HydraConfig itself
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        self.close()
        return ret

    def close(self) -> None:
        """The launcher's own logging again (Hydra's launchers do the same after each job)."""
        master = self.composer.master_config
        configure_log(master.hydra.hydra_logging, master.hydra.verbose)
        self.logs.reset()

    def shutdown(self) -> None:
        """No more jobs: the background's threads go."""
        self.background.close()


# ---- backend "local": whole jobs in worker processes -------------------------------------------


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


_worker_runner: tuple[bytes, JobRunner] | None = None  # a worker's context and its runner


def run_jobs_in_worker(context: bytes, batch: list[Job], known: list | None = None) -> bytes:
    """Worker side: train the chunk (its runs not ``known`` already), then run its jobs through Hydra's
    job machinery.

    ``context`` is the cloudpickled (Hydra singletons, hydra context, task function, composer with
    its templates): as in Hydra's joblib launcher, which ships the same through loky; plain pickle
    cannot carry the resolvers OmegaConf registers as local functions. A worker unpickles a context
    once and keeps its runner (and so its logging) for the next chunks of the same launch. The
    returned JobReturns go back the same way (cloudpickled list of (job index, JobReturn)).
    """
    runner = _runner_for(context)
    returns = runner.run_all(batch, _train(batch, known))
    return cloudpickle.dumps(list(returns.items()))


def _runner_for(context: bytes) -> JobRunner:
    """The worker's runner of the launch whose context this is (made at its first chunk)."""
    global _worker_runner
    if _worker_runner is None or _worker_runner[0] != context:
        singleton_state, hydra_context, task_function, composer = cloudpickle.loads(context)
        setup_globals()
        Singleton.set_state(singleton_state)
        master = composer.master_config
        configure_log(master.hydra.hydra_logging, master.hydra.verbose)
        _worker_runner = (context, JobRunner(hydra_context, task_function, composer))
    return _worker_runner[1]


def _launch_on_processes(
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
                    why = _failure(what, error)
                    returns.update(runner.run_all(batch, [why] * len(batch)))
    finally:
        with _signals_ignored():  # a second Ctrl-C must not cut the workers' stop short
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


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _relay(events) -> None:
    """Job ends reported by the workers, into this process's progress (and its failure lines)."""
    while True:
        event = events.get()
        if event is None:
            return
        progress.job_ended(event[0], failed=event[1], message=event[2])


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down; workers still busy (an interrupt, a failing store) are stopped in seconds.

    ProcessPoolExecutor has no public way to stop busy workers: its ``_processes`` are terminated
    (SIGTERM), then killed if still there after ``STOP_WAIT_S``. A run a worker was writing stays
    RUNNING in the store; the sweep's abort (or the next command) ends it.
    """
    processes = list((pool._processes or {}).values())
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


# ---- backend "ray": tasks run whole jobs (a server), or compute while this process logs (sqlite) ---


def _launch_on_ray(launcher, jobs: list[Job], runner: JobRunner, chunk_size: int) -> dict[int, JobReturn]:
    from ._ray_backend import RayExecutor

    executor = RayExecutor(launcher.ray)
    stopped = True  # until the launch ends normally: tasks still running are cancelled
    try:
        if _logs_in_tasks(runner.composer.master_config):
            returns = _jobs_on_ray(executor, launcher, jobs, runner, chunk_size)
        else:
            returns = _chunks_on_ray(executor, jobs, runner, chunk_size)
        stopped = False
        return returns
    finally:
        with _signals_ignored() if stopped else contextlib.nullcontext():  # a second Ctrl-C: no cut stop
            executor.shutdown(cancel=stopped)


def _store_uri(master) -> str | None:
    """The sweep's store (the parent run's record has it, as opened), None if there is none."""
    parent = parent_run.read(str(master.hydra.sweep.dir))
    if parent is not None:
        return parent.tracking_uri
    uri = OmegaConf.select(master, "tracking.uri", default=None)
    return resolve_uri(uri, str(master.hydra.runtime.cwd)) if "tracking" in master else None


def _logs_in_tasks(master) -> bool:
    """Whether Ray tasks log their own runs: with a tracking server (many writers at once). With
    sqlite (one writer at a time) and direct databases (artifacts on the launching machine's disk),
    this process logs them."""
    uri = _store_uri(master)
    return uri is not None and store_kind(uri) == "server"


def _chunks_on_ray(executor, jobs: list[Job], runner: JobRunner, chunk_size: int) -> dict[int, JobReturn]:
    """Tasks train the chunks and render the plots; this process runs every job and logs."""
    plan = plan_batches([job.spec for job in jobs], chunk_size)
    returns: dict[int, JobReturn] = {}
    trained = [executor.submit(chunks.train_chunk, [jobs[i].spec for i in members]) for members in plan]
    for members, future in zip(plan, trained, strict=True):
        batch = [jobs[i] for i in members]
        try:
            results = future.result()
        except Exception as error:  # retries exhausted: each job of the chunk fails alone
            results = [_failure("training the chunk failed", error)] * len(batch)
        else:
            results = list(zip(results, _render_on_ray(executor, results), strict=True))
        returns.update(runner.run_all(batch, results))
    return returns


@dataclass(frozen=True)
class TaskSetup:
    """What a Ray task needs besides the context: the launching process's working dir (relative
    sweep dirs are relative to it), its command (the runs' ``xorexp.command``) and the sweep's
    parent record (written in the sweep dir when the task's machine has none)."""

    cwd: str
    command: str
    sweep_dir: str
    parent_record: str | None


def _jobs_on_ray(
    executor, launcher, jobs: list[Job], runner: JobRunner, chunk_size: int
) -> dict[int, JobReturn]:
    """Each task trains its chunk and runs its jobs, logging included (``run_jobs_in_task``)."""
    master = runner.composer.master_config
    n_workers = executor.cpus()
    task_size = max(MIN_RUNS_FOR_WORKERS, math.ceil(len(jobs) / (n_workers * TASKS_PER_WORKER)))
    plan = plan_batches([job.spec for job in jobs], min(chunk_size, task_size))
    sweep_dir = str(master.hydra.sweep.dir)
    record = Path(sweep_dir) / parent_run.FILE_NAME
    setup = TaskSetup(
        cwd=os.getcwd(),
        command=provenance.process_command(),
        sweep_dir=sweep_dir,
        parent_record=record.read_text() if record.is_file() else None,
    )
    context = executor.put(cloudpickle.dumps(
        (Singleton.get_state(), launcher.hydra_context, launcher.task_function, runner.composer)
    ))
    batches: dict[Future, list[Job]] = {}
    for members in plan:
        batch = [jobs[i] for i in members]
        batches[executor.submit(run_jobs_in_task, context, setup, batch)] = batch
    returns: dict[int, JobReturn] = {}
    pending = set(batches)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        # every task that ended is taken in (its jobs' files, their progress) before a store failure
        # one of them met stops the sweep, and before the jobs a task did not end fail here
        outcomes = {future: _task_outcome(future) for future in done}
        for future, (ended, _, _) in outcomes.items():
            _take_ended(batches[future], ended, returns)
        for _, abort, _ in outcomes.values():
            if abort is not None:  # the store failed in the task: stop the sweep
                raise Abort(*abort)
        for future, (_, _, raised) in outcomes.items():
            if raised is not None:  # here, each job the task did not end ends FAILED
                _fail_the_rest(batches[future], raised, runner, returns)
    return returns


def _task_outcome(future: Future) -> tuple[list, tuple | None, chunks.WorkerError | None]:
    """What a finished Ray task returned (see ``run_jobs_in_task``), or, when it failed outside a job
    (or its worker died too often), no job ended and what it raised."""
    from ._ray_backend import task_error

    try:
        return future.result()
    except Exception as error:
        return [], None, _failure("its Ray task failed", task_error(error))[1]


def _take_ended(batch: list[Job], ended: list, returns: dict[int, JobReturn]) -> None:
    """The jobs a task ended, into ``returns``: their files written here if missing, their ends reported."""
    by_idx = {job.idx: job for job in batch}
    for idx, ret, events, output_dir, files in ended:
        _write_missing(output_dir, files)
        _report(by_idx[idx], events, output_dir)
        returns[idx] = ret


def _fail_the_rest(batch: list[Job], raised, runner: JobRunner, returns: dict[int, JobReturn]) -> None:
    """Each job of ``batch`` its task did not end, ended here as FAILED with what stopped the task."""
    for job in batch:
        if job.idx in returns:
            continue
        events: list = []
        with progress.feeding(lambda *event, into=events: into.append(event)):
            returns[job.idx] = runner.run(job, Handover(job.spec, error=raised))
        _report(job, events, runner.output_dir)


def run_jobs_in_task(
    context: bytes, setup: TaskSetup, batch: list[Job]
) -> tuple[list, tuple | None, chunks.WorkerError | None]:
    """Ray task side: train the chunk, run its jobs through Hydra's job machinery and log their runs,
    in the launching process's working dir. Returns, per job that ended, (job index, JobReturn,
    its progress events, its output dir, its job dir's small files); the (message, status) of an
    ``Abort`` (the store failed) that stopped the task, else None; and what a job raised that
    stopped the task (as a ``WorkerError``: the launching process ends the task's other jobs with
    it; those that ended here stay as they are, their records may be on this machine only), else None.

    Run again by Ray when its worker died (``max_retries``): a job whose record (``xorexp_job.json``
    in its job dir) says its run ended returns at once, one that had started its run finishes that
    run (``job.run_tracked``), so a job never gets a second run on the same machine.

    The task's jobs run as a local worker's do (``JobRunner.run_all``): to a tracking server, the
    requests of several runs are in flight at once (``xorexp.background``), each job's end reported
    to its own list of events. When the task is stopped, the values of runs still in the background
    were not settled: a job counts as ended if it reported its end (NaN if its run failed) or its
    record says its run ended (an earlier attempt's run, or one the stop ended: its record's value).
    """
    provenance.adopt_command(setup.command)
    leave_stale_runs()  # a retried sibling task may be finishing a dead worker's runs right now
    previous = os.getcwd()
    Path(setup.cwd).mkdir(parents=True, exist_ok=True)
    os.chdir(setup.cwd)
    try:
        runner = _runner_for(context)
        if setup.parent_record is not None:
            record = Path(setup.sweep_dir) / parent_run.FILE_NAME
            if not record.is_file():  # another machine: the jobs find their parent run there
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(setup.parent_record)
        results = _train(batch)
        events: dict[int, list] = {job.idx: [] for job in batch}
        feeds = {idx: functools.partial(_append_event, into) for idx, into in events.items()}
        returns: dict[int, JobReturn] = {}
        abort, raised = None, None
        try:
            runner.run_all(batch, results, out=returns, feeds=feeds)
        except Abort as stop:
            abort = (stop.message, stop.status)
        except Exception as error:
            raised = _failure("its Ray task failed", error)[1]
        stopped = abort is not None or raised is not None
        ended = []
        for idx, ret in returns.items():
            output_dir = runner.output_dirs.get(idx)
            if stopped:
                value = _value_when_stopped(events[idx], output_dir, ret.return_value)
                if value is None:
                    continue
                ret.return_value = value
            ended.append((idx, ret, events[idx], output_dir, _small_files(output_dir)))
    finally:
        os.chdir(previous)
    return ended, abort, raised


def _value_when_stopped(events: list, output_dir: str | None, returned: float) -> float | None:
    """A job's value when its task was stopped before the background's values were settled: what it
    returned if it reported its end (NaN if it failed), else from its record if its run ended; None
    if neither (dropped, or still in flight)."""
    if events:
        return math.nan if events[-1][1] else returned
    record = _job_record(output_dir)
    if record.get("status") not in TERMINAL:
        return None
    value = record.get("final_loss") if record["status"] == "FINISHED" else None
    return math.nan if value is None else value


def _append_event(into: list, outcome: str | None, failed: bool, message: str | None) -> None:
    into.append((outcome, failed, message))


def _small_files(output_dir: str | None) -> dict[str, bytes]:
    """A job dir's files (``.hydra/*.yaml``, the job log, the job record) by relative path."""
    if output_dir is None:
        return {}
    root = Path(output_dir)
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.stat().st_size <= MAX_RETURNED_FILE
    }


def _write_missing(output_dir: str | None, files: dict[str, bytes]) -> None:
    """A task's job dir files that this machine lacks (the task ran on another one)."""
    if output_dir is None:
        return
    for relative, data in files.items():
        path = Path(output_dir) / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def _job_record(output_dir: str | None) -> dict:
    """The job's record in its dir (``xorexp.job.JobRecord``); empty if it has none (or unreadable)."""
    if output_dir is None:
        return {}
    try:
        record = json.loads((Path(output_dir) / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _report(job: Job, events: list, output_dir: str | None) -> None:
    """The job's end into this process's progress: its events, or (none: an earlier attempt of its
    task ended it, and those events were lost with that attempt) what its job record says."""
    for outcome, failed, message in events:
        progress.job_ended(outcome, failed=failed, message=message)
    if events or output_dir is None:
        return
    record = _job_record(output_dir)
    failed = record.get("status") != "FINISHED"
    message = None
    if failed:
        message = f"job #{job.idx} failed (run {record.get('run_id')}; full log in {output_dir})"
    progress.job_ended(record.get("outcome"), failed=failed, message=message)


def _render_on_ray(executor, results: list) -> list:
    """The runs' plots rendered by Ray tasks; None for those whose task failed (rendered in the job)."""
    renders = [
        executor.submit(
            chunks.render_many,
            [(r, run_name(r.spec)) for r in results[s : s + RENDER_BATCH]],
        )
        for s in range(0, len(results), RENDER_BATCH)
    ]
    plots: list = []
    for render in renders:
        try:
            plots += render.result()
        except Exception:  # render in the job instead
            plots += [None] * RENDER_BATCH
    return plots[: len(results)]
