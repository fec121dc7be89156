"""The config schema (a dataclass in Hydra's ConfigStore) and its conversion to a validated RunSpec.

The user-typed result keys are declared ``Any`` on purpose: OmegaConf would reject a wrong type with a
multi-line message of its own; xorexp checks every value itself (``train.RULES``) and reports one line
that names the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from xorexp.train import RULES, RunSpec, check_value

RESULT_KEYS = tuple(RULES)  # the config values that shape a run's numbers


class ConfigError(ValueError):
    """Bad input: str(error) is the one line shown to the user."""


@dataclass
class TrackingConf:
    uri: Any = None  # null: sqlite file mlflow.db in the directory the command was launched from
    experiment: str = "xorexp"
    skip_finished: bool = False  # reuse a FINISHED run with the same config hash instead of training
    trial: Any = None  # set by a search sweeper: the trial number, logged as tag xorexp.trial


@dataclass
class XorexpConf:
    hidden_units: Any = 2
    lr: Any = 0.1
    iterations: Any = 150_000
    seed: Any = 42
    trace_every: Any = 100
    stop_loss: Any = None
    tracking: TrackingConf = field(default_factory=TrackingConf)


def register() -> None:
    ConfigStore.instance().store(name="xorexp_schema", node=XorexpConf)


def to_run_spec(cfg: DictConfig) -> RunSpec:
    """The run a job config describes; raises ConfigError with one line on bad values."""
    for key in RESULT_KEYS:
        problem = check_value(key, cfg[key])
        if problem:
            raise ConfigError(f"invalid config: {problem}")
    check_tracking(cfg)
    return RunSpec(**{key: cfg[key] for key in RESULT_KEYS})


def check_tracking(cfg: DictConfig) -> None:
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"invalid config: tracking.uri={uri!r}: must be null or a tracking URI")
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"invalid config: tracking.experiment={experiment!r}: must be a non-empty name")


def check_sweep(cfg: DictConfig, task_overrides: list[str]) -> None:
    """Validate every value a multirun will use, before any job starts.

    Each rule concerns one key, so checking each swept value of each key (and the fixed values of
    the sweep config) covers every job the sweep can make.
    """
    swept: dict[str, list[Any]] = {}
    for override in OverridesParser.create().parse_overrides(task_overrides):
        key = override.get_key_element()
        if key not in RESULT_KEYS or not override.is_sweep_override():
            continue
        if override.is_interval_sweep():
            interval = override.value()
            swept[key] = [interval.start, interval.end]
        else:
            swept[key] = list(override.sweep_iterator())
    for key in RESULT_KEYS:
        for value in swept.get(key, [cfg[key]]):
            problem = check_value(key, value)
            if problem:
                raise ConfigError(f"invalid sweep: {problem}")
    check_tracking(cfg)
