"""One Hydra job of xorexp: config -> RunSpec -> train (unless a launcher did) -> track -> objective.

Kept apart from ``app`` (which holds the ``@hydra.main`` entry point): importing this module has no
effect on Hydra's global state, so launchers and callbacks can use it.

Every job ends as exactly one MLflow run with a terminal status, whatever raised and wherever:
the job's record (``xorexp_job.json`` in its output dir) says which run it is and how far it got,
so a job that is run again (e.g. after its worker process died) finishes that run instead of
making a second one. The record is written just before the run is created (``STARTING``): a job
whose earlier attempt died between the two finds its run in the store by its sweep and job number.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xorexp import parent_run, progress, run_logging
from xorexp.errors import Abort, fail
from xorexp.job_context import JobContext, job_tags, track_args
from xorexp.params import run_name
from xorexp.progress import IterationProgress
from xorexp.tracking import reading, writing
from xorexp.tracking.opened_store import Store
from xorexp.tracking.store import open_store
from xorexp.tracking.tags import TAG_OUTCOME
from xorexp.tracking.uri import StoreError, describe_store_error, resolve_uri, store_kind
from xorexp.train import RunResult, RunSpec, train

if TYPE_CHECKING:
    from xorexp.background import Background

log = logging.getLogger(__name__)
JOB_RECORD = "xorexp_job.json"  # in each job's output dir: what the job did, for the sweep's summary
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# a job's record from just before its run is created to its end: the record names no run until then
# (one write a job): a job run again that finds it looks its run up in the store (``TAG_JOB``)
STARTING = "STARTING"


@dataclass(frozen=True)
class Handover:
    """What a launcher gives the job it runs: the job's checked spec and what it computed for it.

    ``result`` and ``pngs`` (the rendered plots; None: render them in the job) when the launcher
    trained the run; ``error`` when the launcher's work on the run failed (the job ends FAILED with
    it). A handover with only a spec makes the job train the run itself, without checking the spec
    again. ``background``: where a job of a sweep whose store is a server may leave its run's
    remaining requests (see ``run_tracked``); the launcher settles them before it reports its jobs.
    """

    spec: RunSpec
    result: RunResult | None = None
    pngs: dict[str, bytes] | None = None
    error: Exception | None = None
    background: Background | None = None


_handover: ContextVar[Handover | None] = ContextVar("xorexp_handover", default=None)


@contextmanager
def handing_over(handover: Handover) -> Iterator[None]:
    """The launcher's side: while inside, ``current_handover()`` in this context gives ``handover``."""
    token = _handover.set(handover)
    try:
        yield
    finally:
        _handover.reset(token)


def current_handover() -> Handover | None:
    """The job's side (its task function): what the launcher handed over, None for a job run without."""
    return _handover.get()


_marks_stale_runs = True  # whether this process's first opening of a store marks crashed writers' runs


def leave_stale_runs() -> None:
    """This process opens stores without marking the runs of crashed writers KILLED: a Ray task's
    process, whose sibling task retried after its worker died is finishing those very runs (the
    launching process marks them at the sweep's start, the sweep's end ends its orphans)."""
    global _marks_stale_runs
    _marks_stale_runs = False


@functools.cache
def store_for(uri: str | None, experiment: str, launch_dir: str) -> Store:
    """The opened store of a job or sweep (created if new; runs of crashed writers marked KILLED,
    unless ``leave_stale_runs``); an unusable one stops the command in one line (exit 2), before
    anything is created."""
    try:
        return open_store(resolve_uri(uri, launch_dir), experiment, clean_stale=_marks_stale_runs)
    except StoreError as error:
        fail(error)


def job_store(cfg: DictConfig) -> Store:
    """The current job's store (``store_for`` its config and the directory it was launched from)."""
    return store_for(cfg.tracking.uri, cfg.tracking.experiment, HydraConfig.get().runtime.cwd)


def track(
    store: Store,
    run_id: str,
    result: RunResult,
    cfg: DictConfig,
    pngs: dict[str, bytes] | None = None,
    params_logged: bool = True,
    resumed: bool = False,
) -> None:
    """Log one result with its job's config, Hydra files and plots into the started run (``resumed``:
    a run an earlier attempt of the job started, see ``writing.log_result``)."""
    args = track_args(result, cfg, pngs, params_logged)
    run_logging.log_result(store, run_id, result, resumed=resumed, **args)


class JobRecord:
    """The job's record in its output dir: its run, its status and (finished) what the summary needs."""

    def __init__(self, output_dir: str | Path, parent: parent_run.ParentRun | None) -> None:
        self.path = Path(output_dir) / JOB_RECORD
        self.parent_run_id = parent.run_id if parent else None

    def read(self) -> dict | None:
        """This sweep's earlier record of the job (None if none, or another sweep's)."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("parent_run_id") == self.parent_run_id else None

    def write(self, **record: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"parent_run_id": self.parent_run_id, **record}))
        tmp.replace(self.path)  # a reader never sees half a record


def reuse_finished(store: Store, spec: RunSpec, record: JobRecord) -> float | None:
    """With tracking.skip_finished: the final loss of a FINISHED run of this config, else None."""
    found = reading.find_finished(store, spec)
    if found is None:
        return None
    run = reading.get_run(store, found)
    record.write(run_id=found, reused=True, status="FINISHED")
    log.info("%s: reused FINISHED run %s (tracking.skip_finished)", run_name(spec), found)
    progress.job_ended(run.data.tags.get(TAG_OUTCOME), failed=False)
    return run.data.metrics.get("final_loss", math.inf)


def _store_abort(store: Store, error: BaseException) -> Abort | None:
    """The Abort that stops the command when ``error`` means the store itself failed."""
    problem = describe_store_error(error, store.uri)
    return Abort(problem) if problem else None


def run_tracked(cfg: DictConfig, spec: RunSpec, handover: Handover | None = None) -> float:
    """Train (unless the launcher's ``handover`` has the result) and log one job; returns the
    objective, final_loss. ``spec`` is the job's checked spec (the handover's, or ``to_run_spec``'s).

    A job that raises is logged as a FAILED run (created then if it had none) with its traceback
    and reported in one line. In a multirun it returns NaN so the other jobs go on (the sweep's end
    counts it and exits 1); a single run exits 1. A failing store stops the command (``Abort``);
    an interrupt marks the run KILLED and goes on up.

    A job of a sweep to a tracking server whose result the launcher computed, given a
    ``handover.background``, renders its plots and leaves its run's requests (create; values and
    uploads; the status) and its ending (record, log lines, progress) to that background: it
    returns the final loss at once, and the launcher settles the job's value (NaN if its run
    failed) when the run's requests are over. Its failures end as above, in the background thread;
    a run created after the launcher began to stop ends KILLED (FAILED for a failing store) there.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job = JobContext.current()
    store = job_store(cfg)
    parent = parent_run.read(hc.sweep.dir) if multirun else None
    record = JobRecord(hc.runtime.output_dir, parent)
    earlier = record.read() if multirun else None
    if earlier is not None and earlier.get("status") in TERMINAL:  # this job ran before, in a worker
        return earlier.get("final_loss", math.nan) if earlier["status"] == "FINISHED" else math.nan
    if cfg.tracking.skip_finished:
        reused = reuse_finished(store, spec, record)
        if reused is not None:
            return reused
    run_id = earlier.get("run_id") if earlier else None
    parent_id = parent.run_id if parent else None
    try:
        if earlier is not None and run_id is None and parent_id is not None:
            # an earlier attempt (a retried Ray task, a dead worker's job) was creating its run
            found = reading.job_run(store, parent_id, hc.job.num)
            if found is not None and found.info.status in TERMINAL:  # and ended it, unrecorded
                return _ended_unrecorded(record, found, job)
            run_id = found.info.run_id if found is not None else None
        resumed = run_id is not None  # an earlier attempt of this job started its run
        if handover is not None and handover.error is not None:  # the launcher's work on it failed
            raise handover.error
        if handover is None or handover.result is None:  # train here, the run RUNNING meanwhile
            if run_id is None:
                run_id = _start_run(record, store, spec, tags=job_tags(cfg), parent_run_id=parent_id)
            iterations = IterationProgress() if not multirun else None
            [result] = train([spec], progress=iterations)
            if iterations is not None:
                iterations.close()
            # a resumed run's params may not have landed (its creation's second request)
            track(store, run_id, result, cfg, params_logged=not resumed, resumed=resumed)
        else:  # trained by the launcher
            result = handover.result
            background = handover.background
            if run_id is None and background is not None and multirun and store_kind(store.uri) == "server":
                run = functools.partial(
                    _run_in_background,
                    background,
                    store,
                    result,
                    job_tags(cfg),
                    parent_id,
                    track_args(result, cfg, handover.pngs, params_logged=False),  # plots rendered here
                    record,
                    JobContext.current(detached=True),
                )
                background.submit(hc.job.num, run)
                return result.final_loss  # for now: the launcher settles it with the run's end
            if run_id is None:
                run_id = _start_run(
                    record, store, spec, tags=job_tags(cfg), parent_run_id=parent_id, with_params=False
                )
            track(store, run_id, result, cfg, handover.pngs, params_logged=False, resumed=resumed)
    except KeyboardInterrupt as interrupt:
        if run_id is not None:
            _end_quietly(store, run_id, "KILLED", record)
            interrupt.killed_run_id = run_id  # for the entry point's one line
        raise
    except Abort:
        raise
    except Exception as error:
        return _failed(store, spec, record, run_id, parent_id, error, job, job_tags(cfg))
    _finished(record, run_id, result, job)
    if not multirun:
        name = run_name(spec)
        print(f"{name}: {result.outcome}, final loss {result.final_loss:.6g} (run {run_id})")
    return result.final_loss


def _run_in_background(
    background: Background,
    store: Store,
    result: RunResult,
    tags: dict[str, str],
    parent_id: str | None,
    args: dict,
    record: JobRecord,
    job: JobContext,
) -> float:
    """A launcher-trained job's run from its creation to its end, in the background; the job's value."""
    run_id = None
    try:
        run_id = _start_run(record, store, result.spec, tags=tags, parent_run_id=parent_id, with_params=False)
        if background.stop_status is not None:  # the launcher is stopping: no more of this run
            _end_quietly(store, run_id, background.stop_status, record)
            return math.nan
        run_logging.log_result(store, run_id, result, **args)
    except Exception as error:
        return _failed(store, result.spec, record, run_id, parent_id, error, job, tags)
    return _finished(record, run_id, result, job)


def _start_run(record: JobRecord, store: Store, spec: RunSpec, **kwargs) -> str:
    """The job's run created (``run_logging.start_run``), its record saying ``STARTING`` just before:
    an attempt that dies in between leaves its successor a record to look the run up by."""
    record.write(status=STARTING)
    return run_logging.start_run(store, spec, **kwargs)


def _ended_unrecorded(record: JobRecord, run, job: JobContext) -> float:
    """The job's run, found in the store, ended in an earlier attempt that died before recording it
    (and before reporting the job's end): the record and the progress say so now; its final loss
    (NaN unless FINISHED)."""
    run_id, status = run.info.run_id, run.info.status
    value = run.data.metrics.get("final_loss", math.nan) if status == "FINISHED" else math.nan
    record.write(run_id=run_id, reused=False, status=status, final_loss=writing.finite_or_none(value))
    job.info("%s: its run %s ended %s in an earlier attempt", run.info.run_name, run_id, status)
    failed = status != "FINISHED"
    line = f"{job.label} ended {status} in an earlier attempt (run {run_id}; full log: {job.log_file})"
    progress.job_ended(run.data.tags.get(TAG_OUTCOME), failed=failed, message=line if failed else None)
    return value


def _finished(record: JobRecord, run_id: str, result: RunResult, job: JobContext) -> float:
    record.write(
        run_id=run_id,
        reused=False,
        status="FINISHED",
        outcome=result.outcome,
        final_loss=writing.finite_or_none(result.final_loss),
        trace_every=result.spec.trace_every,
        loss_trace=result.loss_trace.tolist(),  # for the sweep's loss-curve plot, without store queries
    )
    name = run_name(result.spec)
    job.info("%s: %s, final_loss %.6g, run %s", name, result.outcome, result.final_loss, run_id)
    progress.job_ended(result.outcome, failed=False)
    return result.final_loss


def _failed(
    store, spec, record: JobRecord, run_id, parent_id, error: Exception, job: JobContext, tags: dict[str, str]
) -> float:
    """The job raised: its run ends FAILED with the traceback (created with ``tags`` if it has none
    yet); one line says so."""
    text = traceback.format_exc() + getattr(error, "details", "")
    job.info("job failed:\n%s", text)  # to the job's log file only (the terminal shows warnings)
    abort = _store_abort(store, error)
    try:
        if run_id is None:
            run_id = _start_run(record, store, spec, tags=tags, parent_run_id=parent_id)
        writing.log_failure(store, run_id, spec, text)
    except Exception as second:  # the store refuses the failure too
        job.info("could not record the failure", exc_info=True)
        abort = abort or _store_abort(store, second) or Abort(f"could not record a failed run: {second}")
    record.write(run_id=run_id, reused=False, status="FAILED")
    if abort is not None:
        raise abort
    line = f"{job.label} failed: {type(error).__name__}: {error} (run {run_id}; full log: {job.log_file})"
    if job.multirun:
        progress.job_ended(None, failed=True, message=line)
        return math.nan
    raise Abort(line)


def _end_quietly(store: Store, run_id: str, status: str, record: JobRecord) -> None:
    """The run and the job's record end with ``status`` (a store that refuses: a warning)."""
    try:
        writing.finish_run(store, run_id, status)
    except Exception:
        log.warning("could not mark run %s %s", run_id, status, exc_info=True)
    record.write(run_id=run_id, status=status)
