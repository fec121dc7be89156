"""A run's parameters: which keys shape its numbers, their types and defaults, their text as MLflow
params, the config hash and the run's name.

Every fact here is read off ``train.RunSpec`` (its dataclass fields and type hints), the one place
they are declared: the config schema (``config.XorexpConf``), the summary, replay, the launcher and
the tracking code import them from here instead of restating them. Imports only the engine's
``train`` module (NumPy): no MLflow, Hydra or matplotlib.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

from xorexp.train import RunSpec

_FIELDS = dataclasses.fields(RunSpec)
_HINTS = typing.get_type_hints(RunSpec)

RESULT_KEYS: tuple[str, ...] = tuple(f.name for f in _FIELDS)  # the values that shape a run's numbers
DEFAULTS: dict[str, Any] = {f.name: f.default for f in _FIELDS}  # the reference run's values
INT_KEYS: tuple[str, ...] = tuple(key for key in RESULT_KEYS if _HINTS[key] is int)
# keys whose value may be None (written "null")
NULLABLE_KEYS: tuple[str, ...] = tuple(
    key for key in RESULT_KEYS if type(None) in typing.get_args(_HINTS[key])
)
NULL = "null"  # a None value as a param
_NULL_TEXTS = (NULL, "None")  # what reading accepts as None (older runs wrote "None")


def param_text(value: int | float) -> str:
    """A number as a user types it: the shortest text that parses back to the same value, with no
    trailing ``.0`` (``1``, ``0.1``, ``1e-05``, ``2.5e+20``); integers as integers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))  # shortest round-tripping text
    return text[:-2] if text.endswith(".0") else text


def _params_written(spec: RunSpec, real: Callable[[float], str]) -> dict[str, str]:
    """The params as text, in RESULT_KEYS order: integers by ``str``, None as ``null``, and the
    other (float) values by ``real``."""
    written = {}
    for key in RESULT_KEYS:
        value = getattr(spec, key)
        if value is None:
            written[key] = NULL
        elif key in INT_KEYS:
            written[key] = str(value)
        else:
            written[key] = real(value)
    return written


def result_params(spec: RunSpec) -> dict[str, str]:
    """The run's result-shaping values as MLflow params, written as typed (``lr=1`` -> ``1``);
    each parses back (``float``/``int``) to exactly the value trained with."""
    return _params_written(spec, lambda value: param_text(float(value)))


def _hash_params(spec: RunSpec) -> dict[str, str]:
    """The canonical text params had before they were logged as typed (floats by ``repr``: ``1.0``)."""
    return _params_written(spec, lambda value: repr(float(value)))


def config_hash(spec: RunSpec) -> str:
    """Stable hash of the values that shape a run's numbers (tag ``xorexp.config_hash``).

    Computed from ``_hash_params`` (floats by ``repr``), so the hash of every existing run stays
    what it was when params were still logged that way.
    """
    canonical = json.dumps(_hash_params(spec), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_from_params(params: Mapping[str, str]) -> RunSpec:
    """Inverse of ``result_params``: reads today's params (``lr=1``) and older ones (``lr=1.0``,
    ``stop_loss=None``). KeyError for a missing key, ValueError for a value that is not allowed."""
    values: dict[str, Any] = {}
    for key in RESULT_KEYS:
        text = params[key]
        if key in NULLABLE_KEYS and text in _NULL_TEXTS:
            values[key] = None
        elif key in INT_KEYS:
            values[key] = _int_param(text)
        else:
            values[key] = float(text)
    return RunSpec(**values)


def _int_param(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = float(text)  # e.g. "2.0"; anything not integral is an error
        if not number.is_integer():
            raise
        return int(number)


def run_name(spec: RunSpec) -> str:
    """The MLflow run name of a training run, e.g. ``h2-lr0.1-s42``."""
    return f"h{spec.hidden_units}-lr{spec.lr:g}-s{spec.seed}"
