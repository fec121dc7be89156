"""The vectorized launcher's work: compose and check every job, train the sweep in engine batches
(in worker processes when there are several chunks), render run plots in workers, then pass each
job through Hydra's own ``run_job`` with its result precomputed, in the launching process.

Only the launching process writes to the store: no concurrent writers, whatever the backend.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from xorexp import chunks, tracking
from xorexp.config import RESULT_KEYS, ConfigError, to_run_spec
from xorexp.job import PRECOMPUTED, fail
from xorexp.train import RunResult, RunSpec

log = logging.getLogger(__name__)

RENDER_BATCH = 25  # runs per plot-rendering task
MIN_RUNS_FOR_WORKERS = 16  # below this, starting worker processes costs more than it saves


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

    composer = _Composer(launcher)
    jobs = [
        Job(initial_job_idx + i, list(overrides), _spec_of(composer.compose(overrides)))
        for i, overrides in enumerate(job_overrides)
    ]
    trainable = [job for job in jobs if job.spec is not None]
    returns: dict[int, JobReturn] = {}
    with _Workers(launcher, len(trainable)) as workers:
        for job, result, pngs in workers.results(trainable):
            PRECOMPUTED[job.spec] = (result, pngs)
            try:
                returns[job.idx] = _run(launcher, job, composer)
            finally:
                PRECOMPUTED.pop(job.spec, None)
    for job in jobs:
        if job.spec is None:
            returns[job.idx] = _run(launcher, job, composer)
    return [returns[job.idx] for job in jobs]


def _is_leaf(cfg: DictConfig, key: str) -> bool:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:
        return False
    return node is not None and not OmegaConf.is_config(node)


class _Composer:
    """Job configs, as Hydra's ``load_sweep_config`` makes them, without paying ~40 ms for each.

    Jobs of a grid differ only in the values of the same plain keys. The first job of each such
    shape is composed by Hydra; the others are a copy of it with their values set the way Hydra sets
    an override (``OmegaConf.update(..., merge=True)``) and their ``hydra.overrides.task`` and
    ``hydra.job.override_dirname`` rewritten. The second job of each shape is composed both ways and
    compared; any difference turns the shortcut off for the sweep. Overrides of config groups, of
    ``hydra.*`` keys and anything but ``key=value`` always go through Hydra.
    """

    def __init__(self, launcher) -> None:
        self.launcher = launcher
        self.parser = OverridesParser.create()
        self.templates: dict[tuple, tuple[list[Override], DictConfig]] = {}
        self.checked: set[tuple] = set()
        self.enabled = True

    def full(self, overrides: Sequence[str]) -> DictConfig:
        loader = self.launcher.hydra_context.config_loader
        return loader.load_sweep_config(self.launcher.config, list(overrides))

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(list(overrides))
        shape = self._shape(parsed)
        if shape is None or not self.enabled:
            return self.full(overrides)
        if shape not in self.templates:
            cfg = self.full(overrides)
            if not all(_is_leaf(cfg, key) for key in shape):  # e.g. a config group: not derivable
                return cfg
            self.templates[shape] = (parsed, cfg)
            return copy.deepcopy(cfg)
        derived = self._derive(shape, parsed)
        if shape not in self.checked:
            self.checked.add(shape)
            composed = self.full(overrides)
            if OmegaConf.to_container(derived) != OmegaConf.to_container(composed):
                log.warning("vectorized launcher: a derived job config differs from Hydra's; composing all")
                self.enabled = False
                return composed
        return derived

    def _shape(self, parsed: list[Override]) -> tuple | None:
        choices = self.launcher.config.hydra.runtime.choices
        keys = []
        for override in parsed:
            key = override.key_or_group
            if (
                override.type != OverrideType.CHANGE
                or override.package is not None
                or override.is_hydra_override()
                or key.split(".")[0] == "hydra"
                or key in choices
                or override.is_sweep_override()
            ):
                return None
            keys.append(key)
        return tuple(keys)

    def _derive(self, shape: tuple, parsed: list[Override]) -> DictConfig:
        template_overrides, template = self.templates[shape]
        cfg = copy.deepcopy(template)
        for mine, theirs in zip(parsed, template_overrides, strict=True):
            if mine.input_line != theirs.input_line:
                OmegaConf.update(cfg, mine.key_or_group, mine.value(), merge=True)
        dirname = cfg.hydra.job.config.override_dirname
        with read_write(cfg.hydra):
            cfg.hydra.overrides.task = [override.input_line for override in parsed]
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed,
                exclude_keys=list(dirname.exclude_keys),
                item_sep=dirname.item_sep,
                kv_sep=dirname.kv_sep,
            )
        return cfg


def _spec_of(cfg: DictConfig) -> RunSpec | None:
    if not all(key in cfg for key in RESULT_KEYS):
        return None
    try:
        return to_run_spec(cfg)
    except ConfigError as error:
        fail(error)


def _run(launcher, job: Job, composer: _Composer) -> JobReturn:
    log.info(f"\t#{job.idx} : {' '.join(filter_overrides(job.overrides))}")
    cfg = composer.compose(job.overrides)
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{job.idx}"
        cfg.hydra.job.num = job.idx
    HydraConfig.instance().set_config(cfg)
    ret = run_job(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=cfg,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return ret


@contextlib.contextmanager
def _thread_env(**values: str) -> Iterator[None]:
    """Environment for worker processes started inside (spawned children copy it)."""
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


Plots = dict[str, bytes] | Exception | None


class _Workers:
    """Trains chunks and renders plots: in this process for small sweeps, else in worker processes
    (backend ``local``) or as tasks on a Ray cluster (backend ``ray``). Whatever the backend, results
    come back here and only this process writes to the store.

    An executor is anything with ``submit(fn, *args) -> concurrent.futures.Future`` and ``shutdown()``.
    """

    def __init__(self, launcher, n_runs: int) -> None:
        self.chunk_size = max(1, int(launcher.chunk_size))
        n_jobs = int(launcher.n_jobs)
        self.n_workers = (os.cpu_count() or 1) if n_jobs < 1 else n_jobs
        self.pool = None
        backend = str(launcher.backend)
        if backend == "ray":
            from ._ray_backend import RayExecutor

            self.pool = RayExecutor(launcher.ray)
        elif backend != "local":
            fail(ConfigError(f"invalid config: hydra.launcher.backend={backend!r}: must be 'local' or 'ray'"))
        elif self.n_workers > 1 and n_runs >= MIN_RUNS_FOR_WORKERS:
            with _thread_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
                self.pool = ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"))
                # start every worker now, inside the environment above
                for future in [self.pool.submit(os.getpid) for _ in range(self.n_workers)]:
                    future.result()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def results(self, jobs: list[Job]) -> Iterator[tuple[Job, RunResult | None, Plots]]:
        """(job, result, plots) for every job, chunk after chunk, in job order within a chunk.

        plots is None when the job should render them itself, an Exception when a worker failed on
        that job (then result may be None too).
        """
        plan = chunks.plan_chunks([job.spec for job in jobs], self.chunk_size)
        if self.pool is None:
            for members in plan:
                batch = [jobs[i] for i in members]
                for job, result in zip(batch, chunks.train_chunk([j.spec for j in batch]), strict=True):
                    yield job, result, None
            return
        trained = [self.pool.submit(chunks.train_chunk, [jobs[i].spec for i in members]) for members in plan]
        for members, future in zip(plan, trained, strict=True):
            batch = [jobs[i] for i in members]
            try:
                results = future.result()
            except Exception as error:  # the whole chunk is lost: each of its jobs fails alone
                failure = chunks.WorkerError(f"training chunk failed: {type(error).__name__}: {error}")
                for job in batch:
                    yield job, None, failure
                continue
            for start, render in self._render(results):
                try:
                    pngs_list = render.result()
                except Exception as error:
                    pngs_list = [chunks.WorkerError(f"{type(error).__name__}: {error}")] * RENDER_BATCH
                for offset, pngs in enumerate(pngs_list[: len(batch) - start]):
                    yield batch[start + offset], results[start + offset], pngs

    def _render(self, results: list[RunResult]) -> list[tuple[int, Future]]:
        out = []
        for start in range(0, len(results), RENDER_BATCH):
            items = [(r, tracking.run_name(r.spec)) for r in results[start : start + RENDER_BATCH]]
            out.append((start, self.pool.submit(chunks.render_many, items)))
        return out
