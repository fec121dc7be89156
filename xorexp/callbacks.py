"""Hydra callbacks that make a multirun one tracked sweep.

At the start: check every value the sweep will use, open (create) the store once, mark runs of
crashed processes KILLED, open the parent run and record it in the sweep dir. After each job:
progress. At the end: summary across seeds on the parent, and exit non-zero if a job failed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xorexp import parent_run, progress, report, tracking
from xorexp.config import ConfigError, check_sweep, count_jobs
from xorexp.job import JOB_RECORD, fail, store_for
from xorexp.progress import SweepProgress

log = logging.getLogger(__name__)


def preset_name(config: DictConfig) -> str | None:
    """The sweep preset chosen, None for the default command-line grid."""
    preset = config.hydra.runtime.choices.get("sweep")
    return None if preset in (None, "grid") else preset


def sweep_name(config: DictConfig) -> str:
    """The parent run's name: the sweep preset, or the overrides, plus the time."""
    label = preset_name(config) or " ".join(config.hydra.overrides.task) or "sweep"
    return f"{label[:80]} @ {time.strftime('%Y-%m-%d %H:%M:%S')}"


def job_records(sweep_dir: str | Path, parent_run_id: str) -> list[dict]:
    """What each job of this sweep wrote in its output dir (see app.JOB_RECORD)."""
    records = []
    for path in sorted(Path(sweep_dir).rglob(JOB_RECORD)):
        record = json.loads(path.read_text())
        if record.get("parent_run_id") == parent_run_id:
            records.append(record)
    return records


def job_trace(record: dict) -> tuple[np.ndarray, np.ndarray]:
    values = np.array(record["loss_trace"], dtype=float)
    return np.arange(len(values)) * record["trace_every"], values


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.progress: SweepProgress | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning; SystemExit (from fail) does stop the sweep
        try:
            check_sweep(config)
        except ConfigError as error:
            fail(error)
        # a new store is created and migrated here, once, never by concurrent jobs
        store = store_for(config.tracking.uri, config.tracking.experiment, config.hydra.runtime.cwd)
        stale = tracking.mark_stale_runs(store)
        if stale:
            log.info("marked %d runs of crashed processes KILLED", len(stale))
        tags = {
            tracking.TAG_SWEEP: preset_name(config) or "overrides",
            tracking.TAG_OVERRIDES: " ".join(config.hydra.overrides.task),
        }
        run_id = tracking.start_parent(store, sweep_name(config), tags)
        parent_run.write(config.hydra.sweep.dir, parent_run.ParentRun(run_id, store.uri, store.experiment_id))
        self.progress = progress.ACTIVE = SweepProgress(count_jobs(config))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.progress is None:  # a single run, or a job in another process
            return
        path = Path(config.hydra.runtime.output_dir) / JOB_RECORD
        record = json.loads(path.read_text()) if path.is_file() else {}
        failed = job_return.status == JobStatus.FAILED or record.get("status") == "FAILED"
        self.progress.job_done(record.get("outcome"), failed=failed)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.close()
            progress.ACTIVE = None
        parent = parent_run.read(config.hydra.sweep.dir)
        if parent is None:
            return
        store = store_for(config.tracking.uri, config.tracking.experiment, config.hydra.runtime.cwd)
        jobs = job_records(config.hydra.sweep.dir, parent.run_id)
        reused = [job["run_id"] for job in jobs if job.get("reused")]
        traces = {job["run_id"]: job_trace(job) for job in jobs if "loss_trace" in job}
        failed = report.finish_sweep(store, parent.run_id, reused, traces)
        if failed:
            print(f"xorexp: {failed} job(s) of the sweep failed (listed above)", flush=True)
            raise SystemExit(1)
