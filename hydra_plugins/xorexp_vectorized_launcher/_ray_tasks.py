"""The ray backend's orchestration: with a tracking server, Ray tasks run whole jobs and log their
runs themselves (what comes back: JobReturns, progress events, job dirs' small files); with any
other store, tasks only train chunks and render plots, and this process runs the jobs and logs."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from xorexp import chunks, parent_run, progress, provenance
from xorexp.errors import Abort
from xorexp.job import JOB_RECORD, TERMINAL, Handover, leave_stale_runs
from xorexp.params import run_name
from xorexp.tracking.uri import resolve_uri, store_kind
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

RENDER_BATCH = 25  # runs per plot-rendering task
MAX_RETURNED_FILE = 1_000_000  # bytes: a job dir's files a Ray task sends back (yamls, log, record)


def launch_on_ray(launcher, jobs: list[Job], runner: JobRunner, chunk_size: int) -> dict[int, JobReturn]:
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
        with signals_ignored() if stopped else contextlib.nullcontext():  # a second Ctrl-C: no cut stop
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
            results = [failure("training the chunk failed", error)] * len(batch)
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
        return [], None, failure("its Ray task failed", task_error(error))[1]


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
        runner = runner_for(context)
        if setup.parent_record is not None:
            record = Path(setup.sweep_dir) / parent_run.FILE_NAME
            if not record.is_file():  # another machine: the jobs find their parent run there
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(setup.parent_record)
        results = train_batch(batch)
        events: dict[int, list] = {job.idx: [] for job in batch}
        feeds = {idx: functools.partial(_append_event, into) for idx, into in events.items()}
        returns: dict[int, JobReturn] = {}
        abort, raised = None, None
        try:
            runner.run_all(batch, results, out=returns, feeds=feeds)
        except Abort as stop:
            abort = (stop.message, stop.status)
        except Exception as error:
            raised = failure("its Ray task failed", error)[1]
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
