"""A launcher job, and its runner: each job through Hydra's job machinery in one process (the
launching one, a local worker or a Ray task), its spec and result handed over to the task function."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

from xorexp import chunks, mechanisms, progress, train_ahead
from xorexp.background import Background
from xorexp.errors import Abort
from xorexp.job import Handover, handing_over
from xorexp.train import RunResult, RunSpec

from . import _hydra_job
from ._compose import Composer, Planned

log = logging.getLogger(__name__)

MIN_RUNS_FOR_WORKERS = train_ahead.MIN_RUNS  # below: no workers (costs more than it saves), trained ahead
TASKS_PER_WORKER = 4  # jobs go to workers (local or Ray) in about this many chunks per worker


@dataclass
class Job:
    idx: int
    overrides: list[str]
    planned: Planned

    @property
    def spec(self) -> RunSpec | None:
        """None: not an xorexp run config (then the job runs as the basic launcher would)."""
        return self.planned.spec


def train_batch(batch: list[Job], known: Sequence[RunResult | None] | None = None) -> list:
    """The chunk's results, or for each job the error that stopped its training. ``known``: results
    there already (trained ahead: ``xorexp.train_ahead``), None where the run is trained here."""
    results = list(known) if known is not None else [None] * len(batch)
    missing = [i for i, result in enumerate(results) if result is None]
    if missing:
        try:
            trained = chunks.train_chunk([batch[i].spec for i in missing])
        except Exception as error:  # its traceback goes with each job's FAILED run
            trained = [failure("training the chunk failed", error)] * len(missing)
        for i, result in zip(missing, trained, strict=True):
            results[i] = result
    return results


def failure(what: str, error: BaseException) -> tuple[None, chunks.WorkerError]:
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
                    background = self.background if mechanisms.on("background") else None
                    handover = Handover(job.spec, result=result, pngs=extra, background=background)
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
        with signals_ignored():  # a second Ctrl-C must not cut the stop short
            stopped.stop("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        stopped.close()

    def run(self, job: Job, handover: Handover) -> JobReturn:
        self.output_dir = None
        if not mechanisms.on("run_job_copy"):  # Hydra's own run_job, with the job's whole config
            with handing_over(handover):
                ret = self.run_hydra_job(job)
            self.output_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
        else:
            log.debug(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")
            configs = self.composer.job_configs(job.planned, job.idx)
            with handing_over(handover):
                ret = _hydra_job.run_job(self.hydra_context, self.task_function, configs, self.logs)
            self.output_dir = str(configs.config.hydra.runtime.output_dir)
        # A sweep keeps every job's JobReturn until it ends (up to config.MAX_JOBS of them): with its
        # two configs each (a 10,000-run sweep's launching process would hold gigabytes). An
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


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


_worker_runner: tuple[bytes, JobRunner] | None = None  # a worker's context and its runner


def runner_for(context: bytes) -> JobRunner:
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
