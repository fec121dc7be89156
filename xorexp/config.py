"""The config schema (a dataclass in Hydra's ConfigStore) and its conversion to a validated RunSpec.

The schema's result keys and their defaults are ``train.RunSpec``'s (through ``xorexp.params``), so
they cannot drift apart; ``conf/config.yaml`` repeats the values for the reader (a test checks all
three agree). The user-typed result keys are declared ``Any`` on purpose: OmegaConf would reject a
wrong type with a multi-line message of its own; xorexp checks every value itself (``train.RULES``)
and reports one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig

from xorexp.errors import ConfigError
from xorexp.params import DEFAULTS, INT_KEYS, RESULT_KEYS
from xorexp.train import RunSpec, check_value

MAX_EXPERIMENT_NAME = 500  # MLflow's limit on an experiment name


@dataclass
class TrackingConf:
    uri: Any = None  # null: sqlite file mlflow.db in the directory the command was launched from
    experiment: str = "xorexp"
    skip_finished: bool = False  # reuse a FINISHED run with the same config hash instead of training
    trial: Any = None  # set by a search sweeper: the trial number, logged as tag xorexp.trial


# The config schema: one ``Any`` field per result key with RunSpec's default, in RunSpec's order, then
# ``tracking``. Built, not written out, so a key or default changed in RunSpec changes it too.
XorexpConf = dataclasses.make_dataclass(
    "XorexpConf",
    [
        *((key, Any, field(default=DEFAULTS[key])) for key in RESULT_KEYS),
        ("tracking", TrackingConf, field(default_factory=TrackingConf)),
    ],
)
XorexpConf.__module__ = __name__  # found by name, like a class written here (pickling, Hydra)
XorexpConf.__doc__ = "The job config: the values that shape a run (train.RunSpec's) and where it is tracked."


def register() -> None:
    ConfigStore.instance().store(name="xorexp_schema", node=XorexpConf)


def to_run_spec(cfg: DictConfig) -> RunSpec:
    """The run a job config describes; raises ConfigError with one line on bad values."""
    spec = spec_from_values({key: cfg[key] for key in RESULT_KEYS})
    check_tracking(cfg)
    return spec


def spec_from_values(values: Mapping[str, Any]) -> RunSpec:
    """The RunSpec of the result keys' values, checked once (by ``RunSpec`` itself, key by key in
    ``RULES`` order); raises ConfigError with one line naming the first bad key."""
    try:
        return RunSpec(**values)
    except ValueError as error:  # RunSpec's message is check_value's one line
        raise ConfigError(f"invalid config: {error}") from None


def check_tracking(cfg: DictConfig) -> None:
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"invalid config: tracking.uri={uri!r}: must be null or a tracking URI")
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"invalid config: tracking.experiment={experiment!r}: must be a non-empty name")
    if len(experiment) > MAX_EXPERIMENT_NAME:
        raise ConfigError(
            f"invalid config: tracking.experiment: {len(experiment)} characters, "
            f"MLflow allows at most {MAX_EXPERIMENT_NAME}"
        )


def sweep_overrides(cfg: DictConfig) -> tuple[Override, ...]:
    """The sweep's overrides: the sweeper's ``params`` from config, then the command line's (parsed
    once per command: the sweep's checks and its job count all read them)."""
    params = tuple((str(key), str(value)) for key, value in (cfg.hydra.sweeper.get("params") or {}).items())
    return _parsed_sweep(params, tuple(cfg.hydra.overrides.task))


@functools.lru_cache(maxsize=4)
def _parsed_sweep(params: tuple[tuple[str, str], ...], task: tuple[str, ...]) -> tuple[Override, ...]:
    parser = OverridesParser.create()
    parsed = []
    for key, value in params:
        try:
            parsed += parser.parse_overrides([f"{key}={value}"])
        except HydraException as error:
            reason = " ".join(str(error).split())
            raise ConfigError(f"invalid sweep: hydra.sweeper.params.{key}={value!r}: {reason}") from error
    return tuple(parsed + parser.parse_overrides(list(task)))


MAX_JOBS = 100_000  # jobs of one sweep command: their configs and records must fit in memory


def sweep_size(override: Override) -> int | None:
    """How many values a discrete sweep override gives, without listing them (None: continuous)."""
    if not override.is_sweep_override():
        return 1
    if not override.is_discrete_sweep():
        return None
    sweep = override.value()
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if step == 0:
            return 0
        return max(0, math.ceil((stop - start) / step))
    return len(list(override.sweep_iterator()))


def grid_sizes(cfg: DictConfig) -> dict[str, int | None]:
    """Per swept key, how many values the sweep gives it (None: a continuous range); the command
    line's value of a key replaces the config's."""
    return {override.get_key_element(): sweep_size(override) for override in sweep_overrides(cfg)}


def check_sweep_size(cfg: DictConfig) -> None:
    """A grid sweep larger than ``MAX_JOBS`` is refused before anything is expanded or created."""
    if cfg.hydra.sweeper.get("n_trials") is not None:
        return
    sizes = {key: size for key, size in grid_sizes(cfg).items() if size is not None}
    total = math.prod(sizes.values())
    if total > MAX_JOBS:
        grid = " x ".join(f"{key}: {size:,}" for key, size in sizes.items() if size > 1)
        raise ConfigError(
            f"invalid sweep: {total:,} jobs ({grid}); one command runs at most {MAX_JOBS:,}: "
            "split the sweep (e.g. seed='range(0,50000)', then seed='range(50000,100000)')"
        )


def swept_values(cfg: DictConfig) -> dict[str, list[Any]]:
    """Per swept key, the values a sweep can give it (an interval: its two ends)."""
    swept: dict[str, list[Any]] = {}
    for override in sweep_overrides(cfg):
        key = override.get_key_element()
        if not override.is_sweep_override():
            swept.pop(key, None)  # a fixed value on the command line replaces a sweep from config
        elif override.is_interval_sweep():
            interval = override.value()
            ends = [interval.start, interval.end]
            if key in INT_KEYS and all(float(end).is_integer() for end in ends):
                ends = [int(end) for end in ends]  # Hydra parses interval ends as floats
            swept[key] = ends
        else:
            swept[key] = list(override.sweep_iterator())
    return swept


def count_jobs(cfg: DictConfig) -> int | None:
    """Jobs a sweep will run: the sweeper's n_trials, or the size of the grid."""
    n_trials = cfg.hydra.sweeper.get("n_trials")
    if n_trials is not None:
        return int(n_trials)
    sizes = grid_sizes(cfg).values()
    return None if None in sizes else math.prod(sizes)


def check_sweep(cfg: DictConfig) -> None:
    """Validate every value a multirun will use, before any job starts.

    Each rule concerns one key, so checking each swept value of each key (and the fixed values of
    the sweep config) covers every job the sweep can make.
    """
    check_sweep_size(cfg)
    swept = swept_values(cfg)
    for key in ("tracking.uri", "tracking.experiment"):
        if key in swept:
            raise ConfigError(
                f"invalid sweep: {key} cannot be swept: a sweep logs to one store and one experiment "
                "(run one sweep per value)"
            )
    for key in RESULT_KEYS:
        for value in swept.get(key, [cfg[key]]):
            problem = check_value(key, value)
            if problem:
                raise ConfigError(f"invalid sweep: {problem}")
    check_tracking(cfg)
