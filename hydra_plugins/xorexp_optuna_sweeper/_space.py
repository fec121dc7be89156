"""Search space of the Optuna sweeper: Hydra override text -> Optuna distributions, and back.

The space is written in Hydra's override grammar, parsed by Hydra's ``OverridesParser`` with its
``interval`` replaced (``overrides_parser``: two int ends stay ints, an integer search range):
``interval(a,b)``, ``tag(log, interval(a,b))``, ``choice(...)``, ``range(...)`` or a
fixed value. ``value_text`` writes a sampled value back as override text. A bad setting or search
space raises ``SweepConfigError`` (one line).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from xorexp.compat.hydra import parser_with_function
from xorexp.errors import ConfigError


class SweepConfigError(ConfigError):
    """A bad sweeper setting or search space; str(error) is the one line shown to the user."""


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
    return parser_with_function("interval", _interval)


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


def params_text(params: Mapping[str, Any]) -> str:
    """Sampled parameters as overrides, e.g. ``lr=0.5 hidden_units=3``."""
    return " ".join(f"{name}={value_text(value)}" for name, value in params.items())
