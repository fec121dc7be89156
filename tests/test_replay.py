"""Replay: a logged run trained again from its params gives the same bits; tampering is caught.

End to end: the real CLI (``python -m xorexp``, ``python -m xorexp.replay``) in subprocesses on a
real sqlite store under tmp_path. The launcher test checks that a run's numbers do not depend on
how it was executed (alone, in a sweep; basic, joblib, vectorized launcher).
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import read_artifact_json, run_cli, runs_of, store_uri
from xorexp import provenance, replay
from xorexp.tracking.tags import PARAMS_ARTIFACT, TAG_GIT_COMMIT

ITER = ["iterations=600", "lr=0.5"]


def _children(directory: Path) -> list:
    return [r for r in runs_of(directory) if r.data.tags.get("xorexp.role") != "sweep"]


def _copy_store(src: Path, dst: Path) -> Path:
    """A copy of a store (mlflow.db + mlartifacts/) whose artifact paths point into the copy."""
    dst.mkdir()
    shutil.copy(src / "mlflow.db", dst / "mlflow.db")
    shutil.copytree(src / "mlartifacts", dst / "mlartifacts")
    old, new = (src / "mlartifacts").as_uri(), (dst / "mlartifacts").as_uri()
    with sqlite3.connect(dst / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        db.execute(
            "UPDATE logged_models SET artifact_location = replace(artifact_location, ?, ?)", (old, new)
        )
    return dst


def _artifact_file(directory: Path, run_id: str, path: str) -> Path:
    return directory / "mlartifacts" / "xorexp" / run_id / "artifacts" / path


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple[Path, str]:
    where = tmp_path_factory.mktemp("single")
    proc = run_cli(where, *ITER, "seed=3")
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(where)
    return where, run.info.run_id


@pytest.mark.slow
@pytest.mark.floor
def test_replay_of_a_single_run_is_identical(single_run):
    where, run_id = single_run
    proc = run_cli(where, run_id, module="xorexp.replay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "identical"
    for name in ("loss trace", "params (W1, B1, W2, B2)", "predictions", "outcome"):
        assert any(line.startswith(f"{name}: identical") for line in lines), proc.stdout
    assert proc.stderr.strip() == ""


def _tamper_predictions(copy: Path, run_id: str) -> str:
    path = _artifact_file(copy, run_id, "predictions.json")
    doc = json.loads(path.read_text())
    doc["predictions"][2] = float(np.nextafter(doc["predictions"][2], 2.0))  # one ulp
    path.write_text(json.dumps(doc))
    return "predictions: DIFFERENT: 1 of 4 values differ"


def _tamper_loss_metric(copy: Path, run_id: str) -> str:
    with sqlite3.connect(copy / "mlflow.db") as db:
        [(value,)] = db.execute(
            "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'loss' AND step = 300", (run_id,)
        )
        db.execute(
            "UPDATE metrics SET value = ? WHERE run_uuid = ? AND key = 'loss' AND step = 300",
            (float(np.nextafter(value, 0.0)), run_id),
        )
    return "loss trace: DIFFERENT: 1 of 6 values differ"


def _tamper_params(copy: Path, run_id: str) -> str:
    path = _artifact_file(copy, run_id, PARAMS_ARTIFACT)
    with np.load(path) as npz:
        arrays = {name: npz[name].copy() for name in npz.files}
    arrays["W2"][0, 1] += 1e-9
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return "params (W1, B1, W2, B2): DIFFERENT: 1 of 9 values differ, largest absolute difference 1.000e-09"


@pytest.mark.slow
@pytest.mark.parametrize(  # the first through the CLI in a subprocess, the others by replay.main here
    "tamper, end_to_end", [(_tamper_predictions, True), (_tamper_loss_metric, False), (_tamper_params, False)]
)
def test_replay_against_a_tampered_copy_reports_the_difference(single_run, tmp_path, tamper, end_to_end,
                                                               capsys):
    where, run_id = single_run
    copy = _copy_store(where, tmp_path / "copy")
    expected = tamper(copy, run_id)
    if end_to_end:
        proc = run_cli(copy, run_id, module="xorexp.replay")
        status, out = proc.returncode, proc.stdout + proc.stderr
    else:
        status = replay.main([run_id, "--tracking-uri", store_uri(copy)])
        out = capsys.readouterr().out
    assert status == 1, out
    assert expected in out
    assert out.splitlines()[-1] == "different"
    # the original store is untouched
    assert replay.main([run_id, "--tracking-uri", store_uri(where)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "identical"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("sweep")
    proc = run_cli(where, "-m", "seed=0,1,2", "iterations=500", f"hydra.sweep.dir={where}/multirun")
    assert proc.returncode == 0, proc.stderr
    return where


@pytest.mark.slow
def test_replay_of_runs_from_a_sweep_and_log(swept, capsys):
    tmp_path = swept
    children = _children(tmp_path)
    assert len(children) == 3
    first, *others = children
    proc = run_cli(tmp_path, first.info.run_id, "--log", module="xorexp.replay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "identical"
    for run in others:  # the same code in this process, to keep the test short
        assert replay.main([run.info.run_id, "--tracking-uri", store_uri(tmp_path)]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "identical"

    [logged] = runs_of(tmp_path, filter_string=f"tags.`xorexp.replay_of` = '{first.info.run_id}'")
    assert logged.info.status == "FINISHED"
    assert logged.data.params == first.data.params
    assert logged.data.tags["xorexp.config_hash"] == first.data.tags["xorexp.config_hash"]
    assert "mlflow.parentRunId" not in logged.data.tags
    original = read_artifact_json(tmp_path, first.info.run_id, "predictions.json")
    again = read_artifact_json(tmp_path, logged.info.run_id, "predictions.json")
    assert again == original
    assert run_cli(tmp_path, logged.info.run_id, module="xorexp.replay").returncode == 0


@pytest.mark.slow
def test_bad_input_gives_one_line_and_status_2(single_run, tmp_path):
    where, run_id = single_run
    unknown = run_cli(where, "0" * 32, module="xorexp.replay")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"xorexp.replay: no run '{'0' * 32}' in {store_uri(where)}"
    ]
    no_store = run_cli(tmp_path, run_id, module="xorexp.replay")
    assert no_store.returncode == 2 and "no store at" in no_store.stderr
    assert len(no_store.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_parent_run_is_not_replayable(swept, capsys):
    [parent] = [r for r in runs_of(swept) if r.data.tags.get("xorexp.role") == "sweep"]
    assert replay.main([parent.info.run_id, "--tracking-uri", store_uri(swept)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("xorexp.replay: ")
    assert "is a sweep's parent run, not a training run" in lines[0]


def _numbers(directory: Path, run_name: str) -> dict:
    [run] = [r for r in runs_of(directory) if r.info.run_name == run_name]
    client = MlflowClient(store_uri(directory))
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    predictions = read_artifact_json(directory, run.info.run_id, "predictions.json")["predictions"]
    local = client.download_artifacts(run.info.run_id, PARAMS_ARTIFACT, str(directory))
    with np.load(local) as npz:
        params = {name: npz[name].tobytes().hex() for name in npz.files}
    return {
        "loss": [(m.step, m.value.hex()) for m in history],
        "predictions": [float(v).hex() for v in predictions],
        "params": params,
        "metrics": {k: v.hex() for k, v in run.data.metrics.items()},
    }


@pytest.mark.slow
def test_numbers_do_not_depend_on_launcher_or_sweep(tmp_path):
    config = ["hidden_units=3", "lr=2", "iterations=900", "trace_every=50"]
    wheres = {}
    alone = tmp_path / "alone"
    alone.mkdir()
    proc = run_cli(alone, *config, "seed=5")
    assert proc.returncode == 0, proc.stderr
    wheres["alone"] = alone
    for launcher in ("basic", "joblib", "vectorized"):
        where = tmp_path / launcher
        where.mkdir()
        extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
        proc = run_cli(
            where,
            "-m",
            *config,
            "seed=4,5,6",
            f"hydra/launcher={launcher}",
            *extra,
            f"hydra.sweep.dir={where}/multirun",
        )
        assert proc.returncode == 0, proc.stderr
        wheres[launcher] = where
    numbers = {name: _numbers(where, "h3-lr2-s5") for name, where in wheres.items()}
    assert len(numbers["alone"]["loss"]) == 18
    for name in ("basic", "joblib", "vectorized"):
        assert numbers[name] == numbers["alone"], name


def test_environment_differences_name_each_tag():
    recorded = dict(provenance.environment_tags())
    if provenance.git_commit():
        recorded[TAG_GIT_COMMIT] = provenance.git_commit()
    assert replay.environment_differences(recorded) == []
    recorded |= {"xorexp.version.numpy": "1.0.0", provenance.TAG_PLATFORM: "Other-OS"}
    lines = replay.environment_differences(recorded)
    assert f"environment differs: xorexp.version.numpy: recorded 1.0.0, now {np.__version__}" in lines
    assert any(line.startswith("environment differs: xorexp.platform: recorded Other-OS") for line in lines)
    assert len(lines) == 2


def test_comparison_is_bit_for_bit():
    same = replay.Comparison("x", [0.1, None], [0.1, None])
    assert same.identical and same.describe() == "x: identical (2 values)"
    ulp = replay.Comparison("x", [0.1, 1.0], [float(np.nextafter(0.1, 1)), 1.0])
    assert not ulp.identical and "1 of 2 values differ" in ulp.describe()
    nan = replay.Comparison("x", [None], [0.5])
    assert not nan.identical and "finite vs not finite" in nan.describe()
    missing = replay.Comparison("x", None, [0.5])
    assert missing.identical and "not recorded" in missing.describe()
