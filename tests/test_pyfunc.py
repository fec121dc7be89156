"""The trained network as an MLflow pyfunc model (models from code): same bits as predictions.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, read_artifact_json, run_cli, runs_of, store_uri
from xorexp import pyfunc, run_logging
from xorexp.data import X
from xorexp.tracking import reading
from xorexp.tracking.store import open_store
from xorexp.tracking.tags import PARAMS_ARTIFACT
from xorexp.train import RunSpec, train

XOR = pd.DataFrame({"x1": X[0], "x2": X[1]})  # float64


def test_forward_of_a_params_file_has_the_bits_of_the_engine(tmp_path):
    results = train(
        [RunSpec(hidden_units=h, lr=2.0, iterations=700, seed=s) for h in (1, 3) for s in range(4)]
    )
    for result in results:
        path = tmp_path / "params.npz"
        path.write_bytes(pyfunc.params_npz(result))
        arrays = pyfunc.load_params(path)
        assert arrays["W1"].shape == (result.spec.hidden_units, 2) and arrays["B2"].shape == (1, 1)
        assert pyfunc.predict_proba(arrays, X).tobytes() == result.predictions.tobytes()


@pytest.mark.floor
def test_logged_model_loads_and_predicts_the_logged_bits(tmp_path, monkeypatch):
    uri = store_uri(tmp_path)
    store = open_store(uri, "xorexp")
    [result] = train([RunSpec(iterations=1500, seed=7, lr=0.8)])
    run_id = run_logging.start_run(store, result.spec)
    run_logging.log_result(store, run_id, result)  # no parent: gets a model
    assert pyfunc.has_model(store, run_id)
    assert store.client.get_run(run_id).info.status == "FINISHED"
    names = {a.path for a in store.client.list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/params.npz", "model/artifacts", "model/code"} <= names
    assert not [p for p in names if p.endswith((".pkl", ".pickle", ".cloudpickle"))]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    out = loaded.predict(XOR)
    probability = np.asarray(out["probability"], dtype=np.float64)
    doc = read_artifact_json(tmp_path, run_id, "predictions.json")
    assert probability.tobytes() == np.array(doc["predictions"]).tobytes()
    assert probability.tobytes() == result.predictions.tobytes()
    schema = loaded.metadata.get_input_schema()
    assert schema.input_names() == ["x1", "x2"]


def test_a_sweep_child_gets_params_but_no_model(tmp_path):
    store = open_store(store_uri(tmp_path), "xorexp")
    parent = run_logging.start_parent(store, "sweep", {})
    [result] = train([RunSpec(iterations=300)])
    run_id = run_logging.start_run(store, result.spec, parent_run_id=parent)
    run_logging.log_result(store, run_id, result)
    assert not pyfunc.has_model(store, run_id)
    names = [a.path for a in store.client.list_artifacts(run_id, "model")]
    assert names == [PARAMS_ARTIFACT]


# run in a fresh interpreter: any import of xorexp fails, as on a machine without it
_LOAD_WITHOUT_XOREXP = """
import importlib.abc, json, sys
class NoXorexp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "xorexp" or name.startswith("xorexp."):
            raise ImportError(f"xorexp is not installed here ({name})")
sys.meta_path.insert(0, NoXorexp())
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"x1": [0.0, 0.0, 1.0, 1.0], "x2": [0.0, 1.0, 0.0, 1.0]}))
print(json.dumps([float(v).hex() for v in out["probability"]]))
print(json.dumps(sorted(m for m in sys.modules if m == "xorexp" or m.startswith("xorexp."))))
"""


@pytest.mark.slow
def test_a_logged_model_names_no_xorexp_module_and_loads_without_xorexp(tmp_path):
    """A model records its own copy of this file (by file name) and MLflow's loader module: no
    ``xorexp.<module>`` path, so renaming or moving xorexp's modules cannot break logged models."""
    store = open_store(store_uri(tmp_path), "xorexp")
    [result] = train([RunSpec(iterations=900, seed=5, lr=0.9)])
    run_id = run_logging.start_run(store, result.spec)
    run_logging.log_result(store, run_id, result)
    with reading.downloaded(store, run_id, "model") as local:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["python_function"]
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        assert (local / Path(flavor["model_code_path"]).name).is_file()
        assert "xorexp." not in (local / "MLmodel").read_text()
        proc = subprocess.run(
            [sys.executable, "-c", _LOAD_WITHOUT_XOREXP, str(local)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_base_env(),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hexes, xorexp_modules = (json.loads(line) for line in proc.stdout.splitlines()[-2:])
    assert hexes == [float(v).hex() for v in result.predictions]
    assert xorexp_modules == []


@pytest.mark.slow
def test_single_run_model_and_offline_predict_cli(tmp_path):
    proc = run_cli(tmp_path, "iterations=1200", "seed=2", "lr=0.7")
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(tmp_path)
    run_id = run.info.run_id
    doc = read_artifact_json(tmp_path, run_id, "predictions.json")
    (tmp_path / "xor.csv").write_text("x1,x2\n0.0,0.0\n0.0,1.0\n1.0,0.0\n1.0,1.0\n")
    env = {
        "MLFLOW_TRACKING_URI": store_uri(tmp_path),
        "PYTHONPATH": str(ROOT),
        "NO_PROXY": "*",
        "HTTP_PROXY": "http://127.0.0.1:9",  # any attempt to reach the network fails
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "PIP_NO_INDEX": "1",
    }
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "predict",
            "-m",
            f"runs:/{run_id}/model",
            "--env-manager",
            "local",
            "-i",
            str(tmp_path / "xor.csv"),
            "-t",
            "csv",
            "-o",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_base_env(), **env},
        stdin=subprocess.DEVNULL,
    )
    assert cli.returncode == 0, cli.stderr
    predicted = [row["probability"] for row in json.loads((tmp_path / "out.json").read_text())["predictions"]]
    assert np.array(predicted).tobytes() == np.array(doc["predictions"]).tobytes()


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.mark.slow
def test_sweep_logs_a_model_for_its_best_run_only(tmp_path):
    proc = run_cli(tmp_path, "-m", "seed=0,1,2", "lr=0.5,4", "iterations=800")
    assert proc.returncode == 0, proc.stderr
    runs = runs_of(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if r is not parent and r.data.tags.get("xorexp.role") != "sweep"]
    best_id = parent.data.tags["xorexp.best_run_id"]
    assert parent.data.tags["xorexp.best_model"] == f"runs:/{best_id}/model"
    store = open_store(store_uri(tmp_path), "xorexp")
    with_model = [r.info.run_id for r in children if pyfunc.has_model(store, r.info.run_id)]
    assert with_model == [best_id]
    for run in children:
        names = [a.path for a in store.client.list_artifacts(run.info.run_id, "model")]
        assert PARAMS_ARTIFACT in names
