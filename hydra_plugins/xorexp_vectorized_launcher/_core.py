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

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, setup_globals

from xorexp import train_ahead
from xorexp.errors import fail
from xorexp.train import plan_batches

from ._compose import Composer
from ._job_runner import MIN_RUNS_FOR_WORKERS, Job, JobRunner, train_batch

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


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
            from ._ray_tasks import launch_on_ray

            returns = launch_on_ray(launcher, trainable, runner, chunk_size)
        elif n_workers > 1 and len(trainable) >= MIN_RUNS_FOR_WORKERS:
            from ._local_pool import launch_on_processes

            returns = launch_on_processes(launcher, trainable, runner, chunk_size, n_workers)
        else:
            returns = {}
            for members in plan_batches([job.spec for job in trainable], chunk_size):
                batch = [trainable[i] for i in members]
                known = train_ahead.collect([job.spec for job in batch])
                returns.update(runner.run_all(batch, train_batch(batch, known)))
        for job in jobs:
            if job.spec is None:
                returns[job.idx] = runner.run_hydra_job(job)
    finally:
        runner.close()
        runner.shutdown()
    return [returns[job.idx] for job in jobs]
