"""The Optuna study of a sweep: samplers, where the study is stored, and what each job tells it.

``open_study`` creates or continues the study (``resolve_storage``: sqlite or journal files
relative to the launch directory, never the MLflow store) with its sampler (``make_sampler``);
``trial_result`` is the trial policy: which job results are told as COMPLETE with which value,
which as FAIL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.xorexp_optuna_sweeper._space import SearchSpace, SweepConfigError
from xorexp import tracking

SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("minimize", "maximize")
JOURNAL_PREFIX = "journal:///"
SQLITE_PREFIX = "sqlite:///"


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


def open_study(
    *,
    study_name: str,
    storage: str | None,
    direction: str,
    sampler: str,
    seed: int | None,
    space: SearchSpace,
    launch_dir: str | Path,
    tracking_uri: str | None,
) -> tuple[optuna.Study, str | None]:
    """The study named ``study_name`` (created, or continued from ``storage``) with its sampler,
    and the storage URL (None: in memory)."""
    storage_url, opened = resolve_storage(storage, launch_dir)
    if storage_url and storage_url == tracking.resolve_uri(tracking_uri, launch_dir):
        raise SweepConfigError(
            f"hydra.sweeper.storage={storage!r} is the MLflow store: give Optuna a file of its own"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep logs each trial itself
    study = optuna.create_study(
        study_name=study_name,
        storage=opened,
        direction=direction,
        load_if_exists=True,
        sampler=RandomSampler(),  # replaced below, once the study's size is known
    )
    if study.direction.name.lower() != direction:
        raise SweepConfigError(
            f"hydra.sweeper.direction={direction!r}: study {study_name!r} in {storage_url} "
            f"was created to {study.direction.name.lower()}"
        )
    # a continued study must not replay the random start of the first run: offset the seed
    study.sampler = make_sampler(sampler, None if seed is None else seed + len(study.trials), space)
    return study, storage_url


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


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best COMPLETE trial; None when it has none."""
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial
        return None
