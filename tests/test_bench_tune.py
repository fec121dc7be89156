"""benchmarks/bench_tune.py at a tiny size: both sides really run (xorexp's CLI; Ray Tune on a
loopback-only Ray started in its own network namespace), then their stores are read back.

2 learning rates x 2 seeds, 300 iterations: 4 runs a side. The Tune side must have logged what the
benchmark claims it logs (params as xorexp writes them, the loss trace with its steps, predictions and
plots as artifacts), and both sides trained with the same engine, so every final loss and every traced
loss has the same bits in both stores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks import bench_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LRS = (0.5, 2)
SEEDS = 2
ITERATIONS = 300
# trace_every=100 by default: the loss before steps 0, 100, 200 (the loss after the last step is final_loss)
TRACE_STEPS = list(range(0, ITERATIONS, 100))


def training_runs(where: Path) -> dict:
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(bench_tune.EXPERIMENT)
    assert experiment is not None, f"no experiment {bench_tune.EXPERIMENT!r} in {where}"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return client, {run.info.run_name: run for run in runs if "xorexp.role" not in run.data.tags}


def loss_trace(client: MlflowClient, run) -> list[tuple[int, str]]:
    history = client.get_metric_history(run.info.run_id, "loss")
    return sorted((m.step, m.value.hex()) for m in history)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="the Tune side needs root and unshare (a loopback-only network namespace)")
@pytest.mark.timeout(240)
def test_tune_and_xorexp_sides_log_the_same_runs(tmp_path):
    tune_seconds = bench_tune.tune_side(tmp_path / "tune", LRS, SEEDS, ITERATIONS, timeout=180)
    xorexp_seconds = bench_tune.xorexp_side(tmp_path / "xorexp", LRS, SEEDS, ITERATIONS, timeout=120)
    assert tune_seconds > 0 and xorexp_seconds > 0

    tune_client, tune_runs = training_runs(tmp_path / "tune")
    ours_client, ours_runs = training_runs(tmp_path / "xorexp")
    names = {f"h2-lr{lr:g}-s{seed}" for lr in LRS for seed in range(SEEDS)}
    assert set(tune_runs) == names
    assert set(ours_runs) == names
    for name in sorted(names):
        tune_run, ours_run = tune_runs[name], ours_runs[name]
        assert tune_run.info.status == "FINISHED", name
        assert ours_run.info.status == "FINISHED", name
        assert tune_run.data.params == ours_run.data.params, name
        assert tune_run.data.params["iterations"] == str(ITERATIONS)

        trace = loss_trace(tune_client, tune_run)
        assert [step for step, _ in trace] == TRACE_STEPS, name
        assert trace == loss_trace(ours_client, ours_run), name
        assert tune_run.data.metrics["final_loss"].hex() == ours_run.data.metrics["final_loss"].hex(), name

        run_id = tune_run.info.run_id
        artifacts = {a.path for path in (None, "plots") for a in tune_client.list_artifacts(run_id, path)}
        assert {"predictions.json", "plots/learning_curve.png", "plots/decision_boundary.png"} <= artifacts
        local = tune_client.download_artifacts(tune_run.info.run_id, "plots/learning_curve.png",
                                               str(tmp_path / "dl" / name))
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        local = tune_client.download_artifacts(tune_run.info.run_id, "predictions.json",
                                               str(tmp_path / "dl" / name))
        theirs = json.loads(Path(local).read_text())
        local = ours_client.download_artifacts(ours_run.info.run_id, "predictions.json",
                                               str(tmp_path / "dl-ours" / name))
        assert theirs == json.loads(Path(local).read_text()), name

    # what the benchmark prints is read from the same stores
    ours, theirs = bench_tune.store_runs(tmp_path / "xorexp"), bench_tune.store_runs(tmp_path / "tune")
    assert bench_tune.finished(ours) == bench_tune.finished(theirs) == len(names)
    assert bench_tune.compare_final_losses(ours, theirs) == (len(names), [])
