"""One Hydra job of xorexp: config -> RunSpec -> train (unless a launcher did) -> track -> objective.

Kept apart from ``app`` (which holds the ``@hydra.main`` entry point): importing this module has no
effect on Hydra's global state, so launchers and callbacks can use it."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xorexp import parent_run, tracking
from xorexp.chunks import render_run_plots
from xorexp.progress import IterationProgress
from xorexp.train import RunResult, RunSpec, train

log = logging.getLogger(__name__)
JOB_RECORD = "xorexp_job.json"  # in each job's output dir: what the job did, for the sweep's summary
# Results a launcher trained (and plots it rendered) ahead of the jobs: a job whose spec is here
# logs that result instead of training. Same spec, same bits: the store cannot tell the difference.
PRECOMPUTED: dict[RunSpec, tuple[RunResult | None, dict[str, bytes] | Exception | None]] = {}


def fail(error: Exception) -> NoReturn:
    """Report bad input (or an unusable store) in one line and stop with status 2."""
    print(f"xorexp: {error}", file=sys.stderr)
    raise SystemExit(2)


@functools.cache
def store_for(uri: str | None, experiment: str, launch_dir: str) -> tracking.Store:
    """The opened store of a job or sweep (created if new; runs of crashed writers marked KILLED);
    an unusable one stops the command in one line (exit 2), before anything is created."""
    try:
        return tracking.open_store(tracking.resolve_uri(uri, launch_dir), experiment, clean_stale=True)
    except tracking.StoreError as error:
        fail(error)


def job_store(cfg: DictConfig) -> tracking.Store:
    return store_for(cfg.tracking.uri, cfg.tracking.experiment, HydraConfig.get().runtime.cwd)


def job_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {tracking.TAG_OVERRIDES: " ".join(HydraConfig.get().overrides.task)}
    if cfg.tracking.trial is not None:
        tags[tracking.TAG_TRIAL] = str(cfg.tracking.trial)
    return tags


def track(
    store: tracking.Store,
    run_id: str,
    result: RunResult,
    cfg: DictConfig,
    pngs: dict[str, bytes] | None = None,
    params_logged: bool = True,
) -> None:
    """Log one result with its job's config, Hydra files and plots into the started run."""
    hc = HydraConfig.get()
    if pngs is None:
        pngs = render_run_plots(result, tracking.run_name(result.spec))
    dirs = {}
    if hc.output_subdir:
        dirs[".hydra"] = Path(hc.runtime.output_dir) / hc.output_subdir
    tracking.log_result(
        store,
        run_id,
        result,
        blobs=pngs,
        files={"config.yaml": OmegaConf.to_yaml(cfg, resolve=True)},
        dirs=dirs,
        params_logged=params_logged,
        model=hc.mode != RunMode.MULTIRUN,  # a sweep's best run gets its model at the sweep's end
    )


def write_job_record(parent: parent_run.ParentRun | None, **record: object) -> None:
    hc = HydraConfig.get()
    path = Path(hc.runtime.output_dir) / JOB_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"parent_run_id": parent.run_id if parent else None, **record}))


def reuse_finished(store: tracking.Store, spec: RunSpec, parent: parent_run.ParentRun | None) -> float | None:
    """With tracking.skip_finished: the final loss of a FINISHED run of this config, else None."""
    found = tracking.find_finished(store, spec)
    if found is None:
        return None
    run = store.client.get_run(found)
    write_job_record(parent, run_id=found, reused=True, status="FINISHED")
    log.info("%s: reused FINISHED run %s (tracking.skip_finished)", tracking.run_name(spec), found)
    return run.data.metrics.get("final_loss", math.inf)


def run_job(cfg: DictConfig, spec: RunSpec) -> float:
    """Train (unless a launcher did already) and log one job; returns the objective, final_loss.

    In a multirun, a job that raises is logged as a FAILED run with its traceback, reported in one
    line, and returns NaN so the other jobs go on; the sweep's end reports it and exits non-zero.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    store = job_store(cfg)
    parent = parent_run.read(hc.sweep.dir) if multirun else None
    if cfg.tracking.skip_finished:
        reused = reuse_finished(store, spec, parent)
        if reused is not None:
            return reused
    run_id = None
    parent_id = parent.run_id if parent else None
    try:
        precomputed = PRECOMPUTED.get(spec)
        if precomputed is None:  # train here, the run RUNNING meanwhile
            run_id = tracking.start_run(store, spec, tags=job_tags(cfg), parent_run_id=parent_id)
            iterations = IterationProgress() if not multirun else None
            [result] = train([spec], progress=iterations)
            if iterations is not None:
                iterations.close()
            track(store, run_id, result, cfg)
        else:  # trained by the launcher
            result, pngs = precomputed
            if isinstance(pngs, Exception):  # the launcher's worker failed on this run
                raise pngs
            assert result is not None
            run_id = tracking.start_run(
                store, spec, tags=job_tags(cfg), parent_run_id=parent_id, with_params=False
            )
            track(store, run_id, result, cfg, pngs, params_logged=False)
    except Exception as error:
        log.error("job failed", exc_info=True)  # the full traceback goes to the job's log file
        if run_id is not None:
            tracking.log_failure(store, run_id, spec, traceback.format_exc())
        write_job_record(parent, run_id=run_id, reused=False, status="FAILED")
        where = Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
        print(
            f"xorexp: job #{hc.job.num} ({' '.join(hc.overrides.task)}) failed: "
            f"{type(error).__name__}: {error} (full log: {where})",
            file=sys.stderr,
        )
        if multirun:
            return math.nan
        raise
    write_job_record(
        parent,
        run_id=run_id,
        reused=False,
        status="FINISHED",
        outcome=result.outcome,
        trace_every=result.spec.trace_every,
        loss_trace=result.loss_trace.tolist(),  # for the sweep's loss-curve plot, without store queries
    )
    log.info(
        "%s: %s, final_loss %.6g, run %s", tracking.run_name(spec), result.outcome, result.final_loss, run_id
    )
    return result.final_loss
