"""End to end: the real CLI in a subprocess, writing a real sqlite store under tmp_path."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, read_artifact_json, run_cli, runs_of
from xorexp.errors import ConfigError
from xorexp.train import RunSpec, train

pytestmark = pytest.mark.slow


@pytest.mark.floor
def test_single_run_follows_the_tracking_contract(tmp_path, client_for):
    proc = run_cli(tmp_path, "iterations=2000", "seed=3", "lr=0.5")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mlflow.db").is_file()
    [run] = runs_of(tmp_path)
    client = client_for(tmp_path)
    [expected] = train([RunSpec(iterations=2000, seed=3, lr=0.5)])

    assert run.info.status == "FINISHED" and run.info.run_name == "h2-lr0.5-s3"
    assert run.data.params == {
        "hidden_units": "2", "lr": "0.5", "iterations": "2000", "seed": "3", "trace_every": "100",
        "stop_loss": "null",
    }
    tags = run.data.tags
    assert tags["xorexp.outcome"] == expected.outcome
    canonical = json.dumps({"hidden_units": "2", "lr": "0.5", "iterations": "2000", "seed": "3",
                            "trace_every": "100", "stop_loss": "null"}, sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]  # the hash scheme, not tracking's code
    assert tags["xorexp.config_hash"] == digest == "e2facd00348e290a"
    assert tags["xorexp.overrides"] == "iterations=2000 seed=3 lr=0.5"
    assert "mlflow.parentRunId" not in tags

    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(0, 2000, 100))
    assert np.array([m.value for m in history]).tobytes() == expected.loss_trace.tobytes()
    assert run.data.metrics["final_loss"] == expected.final_loss
    assert run.data.metrics["accuracy"] == expected.accuracy

    doc = read_artifact_json(tmp_path, run.info.run_id, "predictions.json")
    assert doc["inputs"] == [[0, 0], [0, 1], [1, 0], [1, 1]] and doc["targets"] == [0, 1, 1, 0]
    assert np.array(doc["predictions"]).tobytes() == expected.predictions.tobytes()

    names = _artifact_paths(client, run.info.run_id)
    for path in ("predictions.json", "config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 ".hydra/hydra.yaml", "plots/learning_curve.png", "plots/decision_boundary.png"):
        assert path in names
    png = client.download_artifacts(run.info.run_id, "plots/learning_curve.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "cfg"))
    resolved = OmegaConf.load(config)
    assert (resolved.lr, resolved.seed, resolved.iterations) == (0.5, 3, 2000)
    assert resolved.tracking.uri is None


def test_the_config_artifact_is_resolved(tmp_path):
    """config.yaml is the job's config resolved: Hydra's unresolved dump serves when nothing in it is
    an interpolation, else the config is dumped again, resolved."""
    from xorexp.job_context import resolved_yaml

    plain = OmegaConf.create({"lr": 0.5, "tracking": {"uri": None}})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(plain))
    expected = "lr: 0.5\ntracking:\n  uri: null\n"
    assert resolved_yaml(plain, tmp_path) == OmegaConf.to_yaml(plain, resolve=True) == expected

    linked = OmegaConf.create({"lr": 0.5, "tracking": {"experiment": "lr${lr}"}})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(linked))
    assert resolved_yaml(linked, tmp_path) == "lr: 0.5\ntracking:\n  experiment: lr0.5\n"
    assert resolved_yaml(linked, None) == resolved_yaml(linked, tmp_path / "missing")


def _artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_default_run_reproduces_the_spec_reference_run(tmp_path):
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(tmp_path)
    doc = read_artifact_json(tmp_path, run.info.run_id, "predictions.json")
    want = [6.216205510610014e-04, 4.998461114142931e-01, 9.995916117465786e-01, 5.001965684028389e-01]
    np.testing.assert_allclose(doc["predictions"], want, rtol=0, atol=1e-12)
    assert run.data.tags["xorexp.outcome"] == "stuck"
    assert run.data.params["iterations"] == "150000"


def test_multirun_makes_one_run_per_learning_rate(tmp_path):
    proc = run_cli(tmp_path, "-m", "lr=0.01,0.1,1", "iterations=500")
    assert proc.returncode == 0, proc.stderr
    runs = [r for r in runs_of(tmp_path) if r.data.tags.get("xorexp.role") != "sweep"]
    assert sorted(r.data.params["lr"] for r in runs) == ["0.01", "0.1", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize(  # a text, a float for an integer, an integer too big: each rule is unit-tested
    "override,key",        # in test_train.py::test_runspec_rejects_bad_values_naming_the_key
    [("lr=abc", "lr"), ("hidden_units=2.5", "hidden_units"), ("seed=4294967296", "seed")],
)
def test_bad_value_gives_one_line_and_touches_no_store(tmp_path, override, key):
    proc = run_cli(tmp_path, override)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xorexp: invalid config: ") and f"{key} must be" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no outputs/ either


def test_bad_value_anywhere_in_a_sweep_stops_it_before_any_run(tmp_path):
    proc = run_cli(tmp_path, "-m", "lr=0.1,1,-2", "seed=1,2", "iterations=100")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["xorexp: invalid sweep: lr=-2 is not allowed: lr must be a finite number > 0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no multirun/ either


def test_diverged_run_is_recorded_and_no_metric_is_non_finite(tmp_path, client_for):
    proc = run_cli(tmp_path, "lr=1000", "seed=0", "iterations=3000")
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["xorexp.outcome"] == "diverged"
    assert "final_loss" not in run.data.metrics  # it is +inf: not logged
    client = client_for(tmp_path)
    for key in run.data.metrics:
        assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, key))
    doc = read_artifact_json(tmp_path, run.info.run_id, "predictions.json")
    assert doc["outcome"] == "diverged" and doc["final_loss"] is None


def test_explicit_relative_sqlite_uri_and_experiment(tmp_path):
    proc = run_cli(tmp_path, "iterations=100", "tracking.uri=sqlite:///other.db", "tracking.experiment=mine")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "mlflow.db").exists()


def test_help_and_cfg_job(tmp_path):
    helped = run_cli(tmp_path, "--help")
    assert helped.returncode == 0 and "python -m xorexp -m lr=0.01,0.1,1" in helped.stdout
    cfg = run_cli(tmp_path, "--cfg", "job", "lr=0.5")
    assert cfg.returncode == 0 and "lr: 0.5" in cfg.stdout and "hidden_units: 2" in cfg.stdout
    assert not (tmp_path / "mlflow.db").exists()


def _sweep_cfg(*task: str):
    return OmegaConf.create({"hydra": {"sweeper": {"params": None}, "overrides": {"task": list(task)}}})


def test_a_sweep_is_counted_without_expanding_it_and_capped_before_it_starts():
    from xorexp import config

    assert config.count_jobs(_sweep_cfg("lr=0.1,1", "seed=range(0,5)", "iterations=10")) == 10
    assert config.count_jobs(_sweep_cfg("lr=interval(0.1,1)")) is None  # continuous: no count
    assert config.count_jobs(_sweep_cfg("seed=range(0,100000)")) == config.MAX_JOBS
    config.check_sweep_size(_sweep_cfg("seed=range(0,100000)"))  # at the cap: allowed
    refused = r"^invalid sweep: 200,000 jobs \(lr: 2 x seed: 100,000\); one command"
    with pytest.raises(ConfigError, match=refused):
        config.check_sweep_size(_sweep_cfg("lr=0.1,1", "seed=range(0,100000)"))


OUTCOMES = """
import json, signal
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException
from xorexp.app import outcome
from xorexp.errors import Abort, Interrupted

def wrapped_interrupt():
    try:
        try:
            try:
                raise Interrupted(signal.SIGTERM)
            except BaseException as interrupt:
                raise OmegaConfBaseException("while resolving") from interrupt
        except OmegaConfBaseException as wrapped:
            raise ConfigCompositionException() from wrapped
    except ConfigCompositionException as error:
        return error

def abort_while_interrupted():
    try:
        try:
            raise Interrupted(signal.SIGINT)
        except BaseException:
            raise Abort("the store failed", 3) from None
    except Abort as decided:
        return decided

print(json.dumps([outcome(wrapped_interrupt()), outcome(ConfigCompositionException("bad override")),
                  outcome(abort_while_interrupted())]))
"""


def test_an_interrupt_a_library_wrapped_is_still_an_interrupt():
    """A SIGTERM that lands while Hydra composes a job's config reaches the entry point as Hydra's
    ``ConfigCompositionException`` (seen under load): it ends the command as an interrupt (143, one
    "interrupted" line), not as bad input (2); an Abort (xorexp's own decision) stands. In a child
    process: importing the entry point registers xorexp's configs with Hydra, which this process's
    Hydra tests must not see."""
    proc = subprocess.run(
        [sys.executable, "-c", OUTCOMES], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    wrapped, plain, decided = json.loads(proc.stdout)
    assert wrapped == [143, "interrupted (SIGTERM)"]
    assert plain == [2, "bad override"]
    assert decided == [3, "the store failed"]
