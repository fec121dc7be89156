"""A running multirun as one tracked sweep, from its checks to its terminal status.

``Sweep.start`` (called by the sweep callback before the first job) checks everything it can,
claims the sweep directory, opens the store, opens the parent run and the sweep's progress.
``Sweep.finish`` (after the last job) logs the summary on the parent and ends it. If the command
stops early (Ctrl-C, SIGTERM, a failing store, any error), the entry point calls ``Sweep.abort``:
the sweep's unfinished runs and its parent end KILLED (interrupt) or FAILED, and the user is told
how to resume. The running sweep of this process is ``current()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import get_class
from omegaconf import DictConfig

from xorexp import parent_run, progress, run_logging, sweep_end, sweep_text, train_ahead
from xorexp.config import check_sweep, count_jobs
from xorexp.errors import Abort, ConfigError, fail
from xorexp.job import JOB_RECORD, store_for
from xorexp.subprocesses import launching_only
from xorexp.tracking import reading, writing
from xorexp.tracking.opened_store import Store
from xorexp.tracking.tags import TAG_ORPHAN, TAG_OVERRIDES, TAG_SWEEP
from xorexp.tracking.uri import describe_store_error, redact, store_kind

log = logging.getLogger(__name__)

LOCK_FILE = ".xorexp.lock"  # held by the launching process for the sweep's whole life
LOG_FILE = "xorexp.log"  # the launching process's log of the sweep (job logs are in the job dirs)
# A sweep stopped early on a tracking server: requests its stopped workers had sent (a run's create
# among them) may still reach the server after the sweep has ended the runs it found RUNNING; it looks
# again for this long (the next command ends later ones: their writer process is gone)
LATE_REQUESTS_S = 2.0
LATE_POLL_S = 0.25

_current: Sweep | None = None


def current() -> Sweep | None:
    """The sweep this process is running, if any."""
    return _current


def preset_name(config: DictConfig) -> str | None:
    """The sweep preset chosen, None for the default command-line grid."""
    preset = config.hydra.runtime.choices.get("sweep")
    return None if preset in (None, "grid") else preset


def sweep_name(config: DictConfig) -> str:
    """The parent run's name: the sweep preset, or the overrides, plus the time."""
    label = preset_name(config) or " ".join(config.hydra.overrides.task) or "sweep"
    return f"{redact(label)[:80]} @ {time.strftime('%Y-%m-%d %H:%M:%S')}"


def check_plugins(config: DictConfig) -> None:
    """The launcher's and sweeper's own settings, checked by the plugin class (``check_config``)."""
    for node in (config.hydra.launcher, config.hydra.sweeper):
        target = node.get("_target_")
        try:
            plugin = get_class(target) if target else None
        except Exception:  # Hydra reports an unknown plugin itself
            plugin = None
        check = getattr(plugin, "check_config", None)
        if check is not None:
            check(node)


def job_records(sweep_dir: str | Path, parent_run_id: str) -> list[dict]:
    """What each job of this sweep wrote in its output dir (see job.JOB_RECORD)."""
    records = []
    for path in sorted(Path(sweep_dir).rglob(JOB_RECORD)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("parent_run_id") == parent_run_id:
            records.append(record)
    return records


def job_trace(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the loss trace a job's record holds."""
    values = np.array(record["loss_trace"], dtype=float)
    return np.arange(len(values)) * record["trace_every"], values


def resume_command() -> str:
    """This command again, reusing the runs that finished (``tracking.skip_finished=true``)."""
    args = [arg for arg in sys.argv[1:] if not arg.startswith("tracking.skip_finished=")]
    return redact(shlex.join(["python", "-m", "xorexp", *args, "tracking.skip_finished=true"]))


class Sweep:
    """The running sweep: its config, store, parent run, progress and what it holds open."""

    def __init__(self, config: DictConfig, store: Store, parent: parent_run.ParentRun) -> None:
        self.config = config
        self.store = store
        self.parent = parent
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.total = count_jobs(config)
        self.progress = progress.SweepProgress(self.total)
        self.resources = ExitStack()

    @classmethod
    def start(cls, config: DictConfig) -> Sweep:
        global _current
        try:  # everything checkable, before any directory, store or run exists
            check_sweep(config)
            check_plugins(config)
        except ConfigError as error:
            fail(error)
        resources = ExitStack()
        claim = _claim(Path(config.hydra.sweep.dir))
        try:
            resources.enter_context(claim)
            # the sweep trains in a child process while the store opens (stopped however the sweep ends)
            resources.callback(train_ahead.stop)
            train_ahead.start(config)
            # a new store is created and migrated here, once, never by concurrent jobs
            store = store_for(config.tracking.uri, config.tracking.experiment, config.hydra.runtime.cwd)
            tags = {
                TAG_SWEEP: preset_name(config) or "overrides",
                TAG_OVERRIDES: redact(" ".join(config.hydra.overrides.task)),
            }
            run_id = run_logging.start_parent(store, sweep_name(config), tags)
            writing.log_to_run(store, run_id, params=sweep_text.sweep_params(config))
        except BaseException:
            claim.abandon()  # a refused sweep leaves no directory behind
            resources.close()
            raise
        parent = parent_run.ParentRun(run_id, store.uri, store.experiment_id)
        parent_run.write(config.hydra.sweep.dir, parent)
        sweep = cls(config, store, parent)
        sweep.resources = resources
        resources.enter_context(_log_file(sweep.sweep_dir / LOG_FILE))
        resources.enter_context(progress.feeding(sweep.progress))
        _current = sweep
        return sweep

    def _close(self) -> None:
        global _current
        self.progress.close()
        self.resources.close()
        _current = None

    def records(self) -> list[dict]:
        return job_records(self.sweep_dir, self.parent.run_id)

    def finish(self) -> None:
        """Summary on the parent, which ends FINISHED, or FAILED (exit 1) if any job failed."""
        self.progress.close()
        jobs = self.records()
        self._end_orphans(jobs)
        reused = [job["run_id"] for job in jobs if job.get("reused")]
        traces = {job["run_id"]: job_trace(job) for job in jobs if "loss_trace" in job}
        lost = 0  # a grid's jobs that left no record at all (a search sweeper may stop early: not counted)
        if self.total is not None and self.config.hydra.sweeper.get("n_trials") is None:
            lost = max(0, self.total - len(jobs))
        try:
            failed = sweep_end.finish_sweep(self.store, self.parent.run_id, reused, traces, lost=lost)
        except Exception as error:
            problem = describe_store_error(error, self.store.uri)
            log.error("the sweep's summary failed", exc_info=True)
            self._end_parent("FAILED")
            self._close()
            raise Abort(problem or f"the sweep's summary failed: {type(error).__name__}: {error}") from error
        self._close()
        for line in sweep_text.ui_hint(self.store, self.parent.run_id):
            print(line, flush=True)
        if failed:
            raise Abort(f"{failed} job(s) of the sweep failed (listed above); resume: {resume_command()}")

    def _end_orphans(self, jobs: list[dict]) -> None:
        """Runs of the sweep still RUNNING that no job's record names: every job has ended, so nobody
        would end them. Such a run is a job's ``create_run`` that a tracking server committed, answered
        too late, and got again from MLflow's client (it retries after a timeout). They end FAILED,
        tagged ``xorexp.orphan``, out of the summary (their job has its own run); one warning says so."""
        owned = {job.get("run_id") for job in jobs}
        try:
            running = reading.running_children(self.store, self.parent.run_id)
            orphans = [run.info.run_id for run in running if run.info.run_id not in owned]
            for run_id in orphans:  # its terminal status first, should the store fail between the two
                writing.finish_run(self.store, run_id, "FAILED")
                writing.set_tag(self.store, run_id, TAG_ORPHAN, "no job owns this run")
        except Exception:  # the summary will say what is wrong with the store, if anything
            log.debug("could not look for the sweep's orphan runs", exc_info=True)
            return
        if orphans:
            log.warning(
                "%d run(s) of the sweep that no job owns (a create request sent twice?) marked FAILED and "
                "tagged %s; not in the summary: %s", len(orphans), TAG_ORPHAN, ", ".join(orphans)
            )

    def abort(self, error: BaseException) -> str:
        """The command stops early: unfinished runs and the parent end; returns what to tell the user."""
        interrupted = isinstance(error, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        self.progress.close()
        done = sum(record.get("status") in ("FINISHED", "FAILED") for record in self.records())
        ended = None
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # a dead server: one try per call, not minutes
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
        try:
            count = self._end_running(status)
            if store_kind(self.store.uri) == "server":  # a stopped worker's last requests may land still
                deadline = time.monotonic() + LATE_REQUESTS_S
                while time.monotonic() < deadline:
                    time.sleep(LATE_POLL_S)
                    count += self._end_running(status)
            writing.finish_run(self.store, self.parent.run_id, status)
            ended = count
        except Exception:
            log.warning("could not end the sweep's runs", exc_info=True)
        self._close()
        of = f" of {self.total}" if self.total else ""
        if ended is None:
            runs = "; the store could not be updated"
        else:
            runs = f"; {ended} unfinished run(s) and the parent marked {status}"
        resume = f"; resume: {resume_command()}" if interrupted or done else ""
        return f"{done}{of} jobs done{runs}{resume}"

    def _end_running(self, status: str) -> int:
        """End the sweep's runs still RUNNING; how many there were."""
        running = [run.info.run_id for run in reading.running_children(self.store, self.parent.run_id)]
        for run_id in running:
            writing.finish_run(self.store, run_id, status)
        return len(running)

    def _end_parent(self, status: str) -> None:
        try:
            writing.finish_run(self.store, self.parent.run_id, status)
        except Exception:
            log.warning("could not end the parent run", exc_info=True)


class _claim:
    """Hold the sweep directory for this sweep: two sweeps never share one (nor its job dirs)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.made: list[Path] = []  # the directories __enter__ created, deepest first
        self.abandoned: list[Path] = []
        self.take_back = None

    def __enter__(self) -> _claim:
        missing = [self.sweep_dir, *self.sweep_dir.parents]
        self.made = missing[: next((i for i, d in enumerate(missing) if d.exists()), len(missing))]
        try:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            fail(f"cannot write the sweep directory {self.sweep_dir} ({error.strerror}): set hydra.sweep.dir")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            fail(
                f"the sweep directory {self.sweep_dir} is in use by another running sweep: "
                "wait for it or set hydra.sweep.dir"
            )
        # a forked worker shares this lock while it has the descriptor: it closes its copy at once
        self.take_back = launching_only(functools.partial(os.close, self.fd))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.take_back()
        os.close(self.fd)  # releases the lock (so does the process's death)
        for directory in self.abandoned:  # made for a sweep that did not start: gone if empty
            try:
                directory.rmdir()
            except OSError:  # not empty (something else is there), or already gone
                return

    def abandon(self) -> None:
        """The sweep did not start (its lock held): the lock file goes now, the directories made
        for it when the lock is released."""
        if self.take_back is None:  # the claim itself failed: nothing of ours
            return
        with contextlib.suppress(OSError):
            (self.sweep_dir / LOCK_FILE).unlink()
        self.abandoned = self.made


class _log_file:
    """The launching process's log records of xorexp, its plugins and Hydra go to ``path`` too
    (tracebacks included).

    The handler hangs on those loggers, not on the root logger: Hydra's launchers reconfigure
    logging (``dictConfig``) when they start and after each job, which drops the root's handlers
    (the file stayed empty) but leaves loggers it does not name alone.
    """

    LOGGERS = ("xorexp", "hydra_plugins", "hydra")

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))

    def __enter__(self) -> _log_file:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        self.take_back = launching_only(self.detach)  # a forked worker logs to its jobs' files only
        return self

    def __exit__(self, *exc: Any) -> None:
        self.take_back()
        self.detach()

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
