"""Optuna ask/tell sweeps through a Hydra launcher.

The search space is written in Hydra's override grammar (parsed by Hydra's ``OverridesParser``):
``interval(a,b)``, ``tag(log, interval(a,b))``, ``choice(...)``, ``range(...)`` or a fixed value.
Trials are asked in batches of ``n_jobs``; each batch is one ``launcher.launch`` call, so a batching
launcher can train it as one NumPy batch. The results are told back, and the best trial of the study
is printed, written to ``<sweep dir>/optimization_results.yaml`` and logged on the sweep's parent run.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, Union

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from xorexp import parent_run
from xorexp.config import ConfigError
from xorexp.tracking import writing
from xorexp.tracking.store import open_store
from xorexp.tracking.uri import resolve_uri

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("minimize", "maximize")
TRIAL_KEY = "tracking.trial"  # every job gets tracking.trial=<trial number>
RESULTS_FILE = "optimization_results.yaml"
JOURNAL_PREFIX = "journal:///"
SQLITE_PREFIX = "sqlite:///"


class SweepConfigError(ConfigError):
    """A bad sweeper setting or search space; str(error) is the one line shown to the user."""


# ---------------------------------------------------------------------------------------------
# search space


@dataclass(frozen=True)
class SearchParam:
    name: str  # the Optuna parameter name: the config key without a +/++ prefix
    key: str  # the key as the override writes it (with its prefix)
    distribution: BaseDistribution
    grid_values: tuple[Any, ...] | None  # the values of a choice/range; None for an interval


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[SearchParam, ...]
    fixed: tuple[str, ...]  # overrides passed unchanged to every job

    def distributions(self, grid: bool) -> dict[str, BaseDistribution]:
        if grid:
            return {p.name: CategoricalDistribution(p.grid_values) for p in self.params}
        return {p.name: p.distribution for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        loose = [p.key for p in self.params if p.grid_values is None]
        if loose:
            raise SweepConfigError(
                f"sampler grid needs choice(...) or range(...) for every swept key, not interval: {loose}"
            )
        return {p.name: list(p.grid_values) for p in self.params}


def _interval(start: Union[int, float], end: Union[int, float]) -> IntervalSweep:  # noqa: UP007
    """Hydra's ``interval`` except that two int ends stay ints: an integer search range."""
    if type(start) is int and type(end) is int:
        return IntervalSweep(start=start, end=end)
    return IntervalSweep(start=float(start), end=float(end))


# Hydra checks arguments against the signature's types: give it types, not postponed strings
_interval.__signature__ = inspect.signature(_interval, eval_str=True)  # type: ignore[attr-defined]


def overrides_parser() -> OverridesParser:
    """Hydra's override parser with ``interval`` keeping int ends (Hydra's turns them into floats)."""
    parser = OverridesParser.create()
    parser.functions.definitions.pop("interval")
    parser.functions.functions.pop("interval")
    parser.functions.register(name="interval", func=_interval)
    return parser


def parse_search_space(config_params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """Search space from ``hydra.sweeper.params`` and the command line (which wins, key by key)."""
    parser = overrides_parser()
    labelled = [  # (override text, where it comes from, for error messages)
        (
            f"{key}={value if isinstance(value, str) else value_text(value, parser)}",
            f"hydra.sweeper.params.{key}={value!r}",
        )
        for key, value in (config_params or {}).items()
    ]
    labelled += [(argument, f"override {argument!r}") for argument in arguments]
    by_key: dict[str, tuple[Override, str]] = {}
    for text, where in labelled:
        override = _parse(parser, text, where)
        by_key[override.key_or_group] = (override, where)  # the command line comes last: it wins
    params, fixed = [], []
    for name, (override, where) in by_key.items():
        if override.is_sweep_override():
            params.append(to_search_param(name, override, where))
        else:
            fixed.append(override.input_line)
    return SearchSpace(tuple(params), tuple(fixed))


def _parse(parser: OverridesParser, text: str, where: str) -> Override:
    try:
        return parser.parse_override(text)
    except Exception as error:  # Hydra raises HydraException/OverrideParseException with several lines
        raise SweepConfigError(f"{where}: {_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def to_search_param(name: str, override: Override, where: str) -> SearchParam:
    sweep = override.value()
    unknown = sorted(set(sweep.tags) - {"log"})
    if unknown:
        raise SweepConfigError(f"{where}: unknown tag {unknown}; the only tag understood is log")
    log_scale = "log" in sweep.tags
    try:
        if isinstance(sweep, IntervalSweep):
            distribution, grid_values = _interval_distribution(sweep, log_scale), None
        elif isinstance(sweep, RangeSweep):
            grid_values = tuple(override.sweep_iterator())
            distribution = _range_distribution(sweep, grid_values, log_scale)
        elif isinstance(sweep, ChoiceSweep):
            if log_scale:
                raise ValueError("tag(log, ...) applies to interval and range, not to choice")
            grid_values = tuple(override.sweep_iterator())
            distribution = CategoricalDistribution(grid_values)
        else:
            raise ValueError(f"{type(sweep).__name__} is not supported")
    except (ValueError, TypeError) as error:
        raise SweepConfigError(f"{where}: {_one_line(error)}") from error
    return SearchParam(name, override.get_key_element(), distribution, grid_values)


def _interval_distribution(sweep: IntervalSweep, log_scale: bool) -> BaseDistribution:
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log_scale)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)


def _range_distribution(sweep: RangeSweep, values: tuple[Any, ...], log_scale: bool) -> BaseDistribution:
    if not values:
        raise ValueError("the range is empty")
    step = abs(sweep.step)
    if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        return IntDistribution(min(values), max(values), log=log_scale, step=step)
    low = min(values)
    # high exactly low + k*step in decimal, as Optuna checks it, so no float residue makes it warn
    high = float(Decimal(str(low)) + (len(values) - 1) * Decimal(str(step)))
    return FloatDistribution(low, high, log=log_scale, step=step)  # Optuna refuses log with a step


def value_text(value: Any, parser: OverridesParser | None = None) -> str:
    """A sampled or configured value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        parser = parser or overrides_parser()
        try:
            if parser.parse_override(f"k={value}").value() == value:
                return value
        except Exception:  # needs quoting
            pass
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(value_text(v, parser) for v in value) + "]"
    raise SweepConfigError(f"cannot write {value!r} as an override value")


# ---------------------------------------------------------------------------------------------
# sampler and storage


class _GridSampler(GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is done: that call only works
    inside ``study.optimize``; with ask/tell the sweep itself stops at the last unvisited point."""

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


def make_sampler(name: str, seed: int | None, space: SearchSpace) -> BaseSampler:
    if name == "tpe":
        return TPESampler(seed=seed)
    if name == "random":
        return RandomSampler(seed=seed)
    return _GridSampler(space.grid(), seed=seed)


def unvisited_grid_points(study: optuna.Study, grid: Mapping[str, list[Any]]) -> int:
    """Points of the grid no trial of the study has taken yet (finished, failed or running)."""
    seen = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state is TrialState.WAITING or set(trial.params) != set(grid):
            continue
        if all(trial.params[name] in values for name, values in grid.items()):
            seen.add(tuple(trial.params[name] for name in grid))
    return math.prod(len(values) for values in grid.values()) - len(seen)


def resolve_storage(
    storage: str | None, launch_dir: str | Path
) -> tuple[str | None, BaseStorage | str | None]:
    """(the storage URL with an absolute path, what ``optuna.create_study`` takes).

    ``sqlite:///x.db`` and ``journal:///x.log`` are relative to the launch directory;
    ``sqlite:////abs/x.db`` and ``journal:////abs/x.log`` are absolute. Other URLs pass unchanged.
    """
    if storage is None:
        return None, None
    if not isinstance(storage, str) or not storage.strip():
        raise SweepConfigError(f"hydra.sweeper.storage={storage!r}: must be null or a storage URL")
    for prefix in (SQLITE_PREFIX, JOURNAL_PREFIX):
        if storage.startswith(prefix):
            path = Path(launch_dir).resolve() / storage[len(prefix) :]  # an absolute path stays itself
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"{prefix}{path}"
            if prefix == JOURNAL_PREFIX:
                return url, JournalStorage(JournalFileBackend(str(path)))
            return url, url
    if "://" not in storage:
        raise SweepConfigError(
            f"hydra.sweeper.storage={storage!r}: use sqlite:///file.db, journal:///file.log or a database URL"
        )
    return storage, storage


# ---------------------------------------------------------------------------------------------
# results of jobs


def trial_result(ret: JobReturn, direction: str) -> tuple[TrialState, float | None, str]:
    """(state to tell, value, text for the log) of one job.

    A failed job, a value that is not a number or is NaN: FAIL. +inf when minimizing (-inf when
    maximizing) is the worst possible value, e.g. a diverged run's loss: told as COMPLETE with that
    value, so the sampler learns that region is bad. The opposite infinity would win the study: FAIL.
    """
    try:
        returned = ret.return_value
    except Exception as error:  # the job raised
        return TrialState.FAIL, None, f"failed: {type(error).__name__}: {error}"
    try:
        value = float(returned)
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"failed: returned {returned!r}, not a number"
    if math.isnan(value):
        return TrialState.FAIL, None, "failed: returned nan"
    best_possible = -math.inf if direction == "minimize" else math.inf
    if value == best_possible:
        return TrialState.FAIL, None, f"failed: returned {value}, which cannot be a real {direction} result"
    return TrialState.COMPLETE, value, repr(value)


# ---------------------------------------------------------------------------------------------
# the sweep


SETTINGS = ("sampler", "direction", "n_trials", "n_jobs", "seed", "storage", "study_name")


def check_settings(sweep: OptunaSweep) -> None:
    """A bad setting ends the command with one line (exit 2), before anything is created."""
    _report_errors(sweep.check_settings)


class OptunaSweep:
    def __init__(
        self,
        *,
        sampler: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        seed: int | None,
        storage: str | None,
        study_name: str,
        params: Mapping[str, Any] | None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.params = (
            OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        )
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> Launcher:
        check_settings(self)
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        return self.launcher

    def check_settings(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> SweepConfigError:
            return SweepConfigError(f"hydra.sweeper.{key}={value!r}: must be {allowed}")

        if self.sampler not in SAMPLERS:
            raise bad("sampler", self.sampler, " or ".join(SAMPLERS))
        if self.direction not in DIRECTIONS:
            raise bad("direction", self.direction, " or ".join(DIRECTIONS))
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if type(value) is not int or value < 1:
                raise bad(key, value, "an integer >= 1")
        if self.seed is not None and (type(self.seed) is not int or self.seed < 0):
            raise bad("seed", self.seed, "null or an integer >= 0")
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise bad("study_name", self.study_name, "a non-empty name")

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        return _report_errors(lambda: self._sweep(arguments))

    def _sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None, "setup() first"
        config = self.config
        space = parse_search_space(self.params, arguments)
        if not space.params:
            raise SweepConfigError("nothing to search: give hydra.sweeper.params or a sweep override")
        grid = space.grid() if self.sampler == "grid" else None
        study, storage_url = self.open_study(space)
        distributions = space.distributions(grid is not None)
        log.info(
            "Study %r (%s, %s, %s sampler): %d trials so far, running %d",
            self.study_name,
            storage_url or "in memory",
            self.direction,
            self.sampler,
            len(study.trials),
            self.n_trials,
        )
        returns: list[Sequence[JobReturn]] = []
        told = completed = 0
        first_failure = ""
        while told < self.n_trials:
            size = min(self.n_jobs, self.n_trials - told)
            if grid is not None:
                size = min(size, unvisited_grid_points(study, grid))
                if size == 0:
                    log.info("Every grid point has a trial: stopping after %d trials", told)
                    break
            trials = [study.ask(distributions) for _ in range(size)]
            batch = [self.job_overrides(space, trial) for trial in trials]
            try:
                # job number = trial number: a continued study adds job directories, never overwrites
                results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            except BaseException:
                for trial in trials:  # leave no trial RUNNING forever in a persistent study
                    study.tell(trial, state=TrialState.FAIL)
                raise
            for trial, ret in zip(trials, results, strict=True):
                state, value, text = trial_result(ret, self.direction)
                study.tell(trial, value, state=state)
                log.info("Trial %d %s: %s", trial.number, _params_text(trial.params), text)
                completed += state is TrialState.COMPLETE
                first_failure = first_failure or (text if state is TrialState.FAIL else "")
            told += size
            returns.append(results)
        if told and not completed:  # each is a FAILED run: the sweep's end reports them and exits 1
            log.warning("all %d trials failed; the first %s", told, first_failure)
        self.report(study, storage_url, config)
        return returns

    def open_study(self, space: SearchSpace) -> tuple[optuna.Study, str | None]:
        config = self.config
        launch_dir = config.hydra.runtime.cwd
        storage_url, storage = resolve_storage(self.storage, launch_dir)
        tracking_uri = OmegaConf.select(config, "tracking.uri", default=None)
        if storage_url and storage_url == resolve_uri(tracking_uri, launch_dir):
            raise SweepConfigError(
                f"hydra.sweeper.storage={self.storage!r} is the MLflow store: give Optuna a file of its own"
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep logs each trial itself
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            direction=self.direction,
            load_if_exists=True,
            sampler=RandomSampler(),  # replaced below, once the study's size is known
        )
        if study.direction.name.lower() != self.direction:
            raise SweepConfigError(
                f"hydra.sweeper.direction={self.direction!r}: study {self.study_name!r} in {storage_url} "
                f"was created to {study.direction.name.lower()}"
            )
        # a continued study must not replay the random start of the first run: offset the seed
        seed = None if self.seed is None else self.seed + len(study.trials)
        study.sampler = make_sampler(self.sampler, seed, space)
        return study, storage_url

    @staticmethod
    def job_overrides(space: SearchSpace, trial: Trial) -> list[str]:
        sampled = [f"{p.key}={value_text(trial.params[p.name])}" for p in space.params]
        return [*space.fixed, *sampled, f"{TRIAL_KEY}={trial.number}"]

    def report(self, study: optuna.Study, storage_url: str | None, config: DictConfig) -> None:
        best = _best_trial(study)
        results = {
            "name": "xorexp_optuna",
            "study_name": self.study_name,
            "storage": storage_url,
            "sampler": self.sampler,
            "direction": self.direction,
            "n_trials": len(study.trials),
            "best_trial": best.number if best else None,
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
        }
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / RESULTS_FILE).write_text(text)
        # the CLI's final report
        if best is None:
            print(f"No trial of study {self.study_name!r} completed")
        else:
            print(f"Best trial: {best.number} of {len(study.trials)} in study {self.study_name!r}")
            print(f"Best parameters: {_params_text(best.params)}")
            print(f"Best value: {best.value!r}")
        print(f"Results: {sweep_dir / RESULTS_FILE}")
        record = parent_run.read(sweep_dir)
        if record is None or best is None:
            return
        experiment = OmegaConf.select(config, "tracking.experiment", default="xorexp")
        writing.log_to_run(
            open_store(record.tracking_uri, experiment),
            record.run_id,
            params={f"best.{name}": value_text(value) for name, value in best.params.items()},
            metrics={"best.value": best.value},
            tags={"xorexp.best_trial": str(best.number), "xorexp.study": self.study_name},
            files={RESULTS_FILE: text},
        )


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial
        return None


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value_text(value)}" for name, value in params.items())


def _report_errors(action: Callable[[], T]) -> T:
    """Run ``action``; a bad setting or search space ends the command with one line, like the app."""
    try:
        return action()
    except SweepConfigError as error:
        from xorexp.errors import fail

        fail(SweepConfigError(f"invalid sweep: {error}"))
        raise  # not reached: fail() exits
