"""The vectorized launcher's work.

1. Every job's RunSpec is derived and checked before anything runs (a bad value stops the launch
   in one line).
2. Runs are trained in engine batches ("chunks": same ``hidden_units`` and ``trace_every``).
3. Each job then goes through Hydra's own ``run_job`` (job dir, ``.hydra`` files, callbacks, return
   value) with its result precomputed, so the task function logs it instead of training.

Where that happens depends on the sweep and the backend:
- few runs, or ``n_jobs=1``: all in this process;
- ``backend=local`` (default): each worker process takes chunks of jobs and does all three steps
  for them, Hydra's job machinery and MLflow logging included (the store is an existing one by
  then: the sweep callback created it; sqlite takes a few concurrent writers);
- ``backend=ray``: Ray tasks only train chunks and render plots; results come back here and only
  this process runs the jobs and writes to the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

from xorexp import chunks, progress, tracking
from xorexp.config import ConfigError
from xorexp.job import JOB_RECORD, PRECOMPUTED, fail
from xorexp.train import RunSpec, plan_batches

from ._compose import Composer

log = logging.getLogger(__name__)

RENDER_BATCH = 25  # runs per plot-rendering task (ray backend)
MIN_RUNS_FOR_WORKERS = 16  # below this, starting worker processes costs more than it saves
TASKS_PER_WORKER = 4  # local backend: jobs go to workers in about this many chunks per worker


@dataclass
class Job:
    idx: int
    overrides: list[str]
    spec: RunSpec | None  # None: not an xorexp run config (then the job runs as the basic launcher would)


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs, vectorized")

    composer = Composer(launcher.hydra_context.config_loader, config)
    jobs = [
        Job(initial_job_idx + i, list(overrides), composer.spec_of(overrides))
        for i, overrides in enumerate(job_overrides)
    ]
    trainable = [job for job in jobs if job.spec is not None]
    chunk_size = max(1, int(launcher.chunk_size))
    n_jobs = int(launcher.n_jobs)
    n_workers = (os.cpu_count() or 1) if n_jobs < 1 else n_jobs
    backend = str(launcher.backend)

    if backend == "ray":
        returns = _launch_on_ray(launcher, trainable, composer, chunk_size)
    elif backend != "local":
        fail(ConfigError(f"invalid config: hydra.launcher.backend={backend!r}: must be 'local' or 'ray'"))
    elif n_workers > 1 and len(trainable) >= MIN_RUNS_FOR_WORKERS:
        returns = _launch_on_processes(launcher, trainable, chunk_size, n_workers)
    else:
        returns = {}
        for members in plan_batches([job.spec for job in trainable], chunk_size):
            batch = [trainable[i] for i in members]
            results = chunks.train_chunk([job.spec for job in batch])
            returns.update(
                _run_jobs(launcher.hydra_context, launcher.task_function, composer, batch, results)
            )
    for job in jobs:
        if job.spec is None:
            returns[job.idx] = _run_job(launcher.hydra_context, launcher.task_function, composer, job)
    return [returns[job.idx] for job in jobs]


def _run_job(hydra_context, task_function, composer: Composer, job: Job) -> JobReturn:
    """One job through Hydra's own job machinery, as the basic launcher runs it."""
    log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")
    cfg = composer.compose(job.overrides)
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{job.idx}"
        cfg.hydra.job.num = job.idx
    ret = run_job(  # sets HydraConfig itself
        hydra_context=hydra_context,
        task_function=task_function,
        config=cfg,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    master = composer.master_config
    configure_log(master.hydra.hydra_logging, master.hydra.verbose)
    return ret


def _run_jobs(
    hydra_context, task_function, composer: Composer, batch: list[Job], results
) -> dict[int, JobReturn]:
    """Run jobs whose results (or per-run worker errors) are known: results[i] = (result, plots)."""
    out = {}
    for job, precomputed in zip(batch, results, strict=True):
        PRECOMPUTED[job.spec] = precomputed if isinstance(precomputed, tuple) else (precomputed, None)
        try:
            out[job.idx] = _run_job(hydra_context, task_function, composer, job)
        finally:
            PRECOMPUTED.pop(job.spec, None)
    return out


# ---- backend "local": whole jobs in worker processes -------------------------------------------


def run_jobs_in_worker(context: bytes, batch: list[Job]) -> bytes:
    """Worker side: train the chunk, then run its jobs through Hydra's job machinery.

    ``context`` is the cloudpickled (Hydra singletons, hydra context, task function, master config):
    as in Hydra's joblib launcher, which ships the same through loky; plain pickle cannot carry the
    resolvers OmegaConf registers as local functions. The returned JobReturns go back the same way
    (cloudpickled list of (job index, JobReturn)).
    """
    singleton_state, hydra_context, task_function, master_config = cloudpickle.loads(context)
    setup_globals()
    Singleton.set_state(singleton_state)
    configure_log(master_config.hydra.hydra_logging, master_config.hydra.verbose)
    composer = Composer(hydra_context.config_loader, master_config)
    try:
        results = chunks.train_chunk([job.spec for job in batch])
    except Exception as error:  # each job of the chunk then fails alone, recorded as FAILED
        failure = chunks.WorkerError(f"training the chunk failed: {type(error).__name__}: {error}")
        results = [(None, failure)] * len(batch)
    return cloudpickle.dumps(list(_run_jobs(hydra_context, task_function, composer, batch, results).items()))


def _launch_on_processes(launcher, jobs: list[Job], chunk_size: int, n_workers: int) -> dict[int, JobReturn]:
    task_size = max(MIN_RUNS_FOR_WORKERS, math.ceil(len(jobs) / (n_workers * TASKS_PER_WORKER)))
    plan = plan_batches([job.spec for job in jobs], min(chunk_size, task_size))
    context = cloudpickle.dumps(
        (Singleton.get_state(), launcher.hydra_context, launcher.task_function, launcher.config)
    )
    returns: dict[int, JobReturn] = {}
    with _thread_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
        pool = ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"))
    with pool:
        futures = [
            pool.submit(run_jobs_in_worker, context, [jobs[i] for i in members])
            for members in plan
        ]
        for future in as_completed(futures):
            for idx, ret in cloudpickle.loads(future.result()):
                returns[idx] = ret
                _report_progress(ret)
    return returns


def _report_progress(ret: JobReturn) -> None:
    """Jobs run in workers: their callbacks ran there, so count them here for the sweep's progress."""
    if progress.ACTIVE is None or ret.hydra_cfg is None:
        return
    record_path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / JOB_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    progress.ACTIVE.job_done(record.get("outcome"), failed=record.get("status") != "FINISHED")


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


# ---- backend "ray": tasks compute, this process runs the jobs and logs ----------------------------


def _launch_on_ray(launcher, jobs: list[Job], composer: Composer, chunk_size: int) -> dict[int, JobReturn]:
    from ._ray_backend import RayExecutor

    plan = plan_batches([job.spec for job in jobs], chunk_size)
    returns: dict[int, JobReturn] = {}
    executor = RayExecutor(launcher.ray)
    try:
        trained = [executor.submit(chunks.train_chunk, [jobs[i].spec for i in members]) for members in plan]
        for members, future in zip(plan, trained, strict=True):
            batch = [jobs[i] for i in members]
            try:
                results = future.result()
            except Exception as error:  # retries exhausted: each job of the chunk fails alone
                failure = chunks.WorkerError(f"training the chunk failed: {type(error).__name__}: {error}")
                returns.update(
                    _run_jobs(
                        launcher.hydra_context,
                        launcher.task_function,
                        composer,
                        batch,
                        [(None, failure)] * len(batch),
                    )
                )
                continue
            renders = [
                executor.submit(
                    chunks.render_many,
                    [(r, tracking.run_name(r.spec)) for r in results[s : s + RENDER_BATCH]],
                )
                for s in range(0, len(results), RENDER_BATCH)
            ]
            plots: list = []
            for render in renders:
                try:
                    plots += render.result()
                except Exception:  # render here instead
                    plots += [None] * RENDER_BATCH
            precomputed = list(zip(results, plots[: len(results)], strict=True))
            returns.update(
                _run_jobs(launcher.hydra_context, launcher.task_function, composer, batch, precomputed)
            )
    finally:
        executor.shutdown()
    return returns
