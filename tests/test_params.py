"""A run's parameters: RunSpec, the config schema and conf/config.yaml agree; params text and hashes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from xorexp import params
from xorexp.config import XorexpConf
from xorexp.train import RULES, RunSpec

CONFIG_YAML = ROOT / "conf" / "config.yaml"
NOT_RESULT_KEYS = ("defaults", "tracking", "hydra")  # the other top-level entries of config.yaml


def _typed(values: dict) -> dict:
    """Values with their types: 150000 and 150000.0 must not pass for each other."""
    return {key: (type(value).__name__, value) for key, value in values.items()}


def test_schema_runspec_and_config_yaml_agree_on_keys_order_and_defaults():
    runspec = {f.name: f.default for f in dataclasses.fields(RunSpec)}
    schema_fields = dataclasses.fields(XorexpConf)
    schema = {f.name: f.default for f in schema_fields if f.name != "tracking"}
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_YAML))
    yaml_values = {key: value for key, value in yaml.items() if key not in NOT_RESULT_KEYS}

    assert list(runspec) == list(params.RESULT_KEYS) == list(schema) == list(yaml_values)
    assert _typed(runspec) == _typed(schema) == _typed(yaml_values) == _typed(params.DEFAULTS)
    assert [f.name for f in schema_fields][-1] == "tracking"
    tracking = {f.name: f.default for f in dataclasses.fields(XorexpConf().tracking)}
    assert {key: tracking[key] for key in yaml["tracking"]} == yaml["tracking"]


def test_the_spec_reference_run_is_the_default():
    """shared/spec/trainer.md's reference run: h=2, lr=0.1, 150,000 iterations, seed 42."""
    reference = {"hidden_units": 2, "lr": 0.1, "iterations": 150_000, "seed": 42}
    assert {key: params.DEFAULTS[key] for key in reference} == reference


def test_key_facts_are_read_off_runspec():
    assert tuple(RULES) == params.RESULT_KEYS  # every key has a value rule, and only those
    assert params.INT_KEYS == ("hidden_units", "iterations", "seed", "trace_every")
    assert params.NULLABLE_KEYS == ("stop_loss",)
    spec = RunSpec(**{key: np.int64(3) for key in params.INT_KEYS}, lr=np.float32(0.5))
    for key in params.RESULT_KEYS:
        expected = int if key in params.INT_KEYS else float if key == "lr" else type(None)
        assert type(getattr(spec, key)) is expected, key


# (spec, params as logged, config hash): computed by the code before params.py existed
KNOWN = [
    (RunSpec(), ("2", "0.1", "150000", "42", "100", "null"), "1254221125d06177"),
    (RunSpec(lr=1.0, seed=3), ("2", "1", "150000", "3", "100", "null"), "6e2227399d426f08"),
    (
        RunSpec(hidden_units=7, lr=1e-05, iterations=20000, seed=2**32 - 1, trace_every=7, stop_loss=0.01),
        ("7", "1e-05", "20000", "4294967295", "7", "0.01"),
        "532ffc62e32f27e8",
    ),
    (RunSpec(lr=2.5e20, stop_loss=1.0), ("2", "2.5e+20", "150000", "42", "100", "1"), "00d9d239acf0e987"),
]


@pytest.mark.parametrize(("spec", "texts", "digest"), KNOWN)
def test_params_text_and_hash_are_unchanged(spec, texts, digest):
    written = params.result_params(spec)
    assert written == dict(zip(params.RESULT_KEYS, texts, strict=True))
    assert list(written) == list(params.RESULT_KEYS)
    assert params.config_hash(spec) == digest
    assert params.spec_from_params(written) == spec


def test_spec_from_params_reads_older_forms_and_refuses_bad_ones():
    old = {"hidden_units": "2.0", "lr": "1.0", "iterations": "10", "seed": "0", "trace_every": "5",
           "stop_loss": "None"}  # fmt: skip
    assert params.spec_from_params(old) == RunSpec(lr=1.0, iterations=10, seed=0, trace_every=5)
    with pytest.raises(ValueError):
        params.spec_from_params({**old, "hidden_units": "2.5"})
    with pytest.raises(ValueError):
        params.spec_from_params({**old, "lr": "null"})  # only stop_loss may be null
    with pytest.raises(KeyError):
        params.spec_from_params({k: v for k, v in old.items() if k != "seed"})


def test_params_module_imports_neither_mlflow_nor_hydra():
    code = (
        "import sys, xorexp.params, xorexp.tracking.tags, xorexp.tracking.uri; "
        "bad = [m for m in ('mlflow', 'hydra', 'omegaconf', 'matplotlib') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
