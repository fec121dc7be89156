"""A trained network as an MLflow pyfunc model, logged as code ("models from code"): no pickles.

This file is both a module (``xorexp.pyfunc``: parameter files, saving and logging a run's model)
and the model's code: MLflow copies it into the model and runs it on load, where ``set_model`` at
the bottom registers ``XorNet``. So it imports only MLflow, NumPy and pandas at the top (xorexp's
own modules inside the functions that save or log a model).

The model holds its parameters as ``artifacts/params.npz`` (W1, B1, W2, B2 in the spec's shapes)
and a copy of ``xorexp/nn.py`` (``code/xorexp_nn.py``), the code that computed the run's
predictions, so it loads without xorexp installed and gives the bits of ``predictions.json``:

    mlflow.pyfunc.load_model("runs:/<run id>/model").predict(pd.DataFrame({"x1": [...], "x2": [...]}))

returns a DataFrame with one column, ``probability``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

try:  # loaded by MLflow: the copy of nn.py saved with the model (on sys.path via code_paths)
    import xorexp_nn as nn  # type: ignore[import-not-found]
except ImportError:  # imported as xorexp.pyfunc, or run by MLflow while saving
    from xorexp import nn

PARAM_NAMES = ("W1", "B1", "W2", "B2")
PARAMS_ARTIFACT = "params"  # key of the params file in the model's artifacts
INPUT_COLUMNS = ("x1", "x2")
OUTPUT_COLUMN = "probability"
NN_COPY = "xorexp_nn.py"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def params_npz(result) -> bytes:
    """A run's trained parameters W1, B1, W2, B2 (the spec's shapes; ``result``: a ``train.RunResult``)
    as the bytes of an .npz file, the run's ``model/params.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, **result.arrays())
    return buffer.getvalue()


def load_params(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in PARAM_NAMES}


def column(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The parameters as one column of an ``nn`` block, shape (4h + 1,)."""
    return nn.pack(*(np.asarray(arrays[name], dtype=np.float64) for name in PARAM_NAMES))


def predict_proba(arrays: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Outputs (N,) for inputs ``x`` (2, N) with the engine's own forward pass."""
    block = np.ascontiguousarray(column(arrays)[:, None])  # (4h + 1, 1)
    yhat, _ = nn.forward(block, np.asarray(x, dtype=np.float64))  # (N, 1)
    return yhat[:, 0]


class XorNet(mlflow.pyfunc.PythonModel):
    """The trained 2-layer sigmoid network: columns x1, x2 (float64) -> column ``probability``."""

    def load_context(self, context) -> None:
        self.arrays = load_params(context.artifacts[PARAMS_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        x = np.stack([frame[name].to_numpy(dtype=np.float64) for name in INPUT_COLUMNS])  # (2, N)
        with np.errstate(all="ignore"):
            probability = predict_proba(self.arrays, x)
        return pd.DataFrame({OUTPUT_COLUMN: probability})


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in INPUT_COLUMNS]),
        outputs=Schema([ColSpec("double", OUTPUT_COLUMN)]),
    )


def input_example() -> pd.DataFrame:
    """The four XOR inputs, float64."""
    return pd.DataFrame({"x1": [0.0, 0.0, 1.0, 1.0], "x2": [0.0, 1.0, 0.0, 1.0]})


def requirements() -> list[str]:
    """Pinned to this environment; listing them skips MLflow's slow requirement inference."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("mlflow", "numpy", "pandas")]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bar for copying the params file and no INFO lines from MLflow while saving."""
    saved_env = os.environ.get(PROGRESS_BAR_ENV)
    logger = logging.getLogger("mlflow.pyfunc")
    saved_level = logger.level
    os.environ[PROGRESS_BAR_ENV] = "false"
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(saved_level)
        if saved_env is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = saved_env


def save(path: str | Path, params_file: str | Path, mlflow_model=None) -> None:
    """Write the model directory at ``path`` (must not exist or be empty) from a params .npz file."""
    with tempfile.TemporaryDirectory(prefix="xorexp-model-") as tmp, _quiet():
        nn_copy = Path(tmp) / NN_COPY
        shutil.copyfile(Path(nn.__file__), nn_copy)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(Path(__file__).resolve()),
            artifacts={PARAMS_ARTIFACT: str(params_file)},
            code_paths=[str(nn_copy)],
            signature=signature(),
            input_example=input_example(),
            pip_requirements=requirements(),
            mlflow_model=mlflow_model,
        )


def save_model(where: Path, run_id: str, params_file: bytes | str | Path) -> Path:
    """The MLflow model directory of a run's trained network, written under ``where``; returns it.

    Uploaded as the run's ``model/`` artifacts, it is what ``runs:/<run_id>/model`` resolves to.
    Not a LoggedModel entity (what ``mlflow.pyfunc.log_model`` makes in MLflow 3): MLflow 3.17
    resolves a LoggedModel behind ``runs:/`` with the *global* tracking URI, so an
    ``MlflowClient(uri)`` listing or downloading ``model/...`` of such a run fails (and creates
    ``./mlflow.db``) unless that URI is also set globally; run artifacts have no such trap, and go
    in the run's single upload.
    """
    from mlflow.models import Model

    from xorexp.tracking.tags import MODEL_NAME

    params_path = where / "params.npz"
    if isinstance(params_file, bytes):
        params_path.write_bytes(params_file)
    else:
        shutil.copyfile(params_file, params_path)
    local = where / MODEL_NAME
    save(local, params_path, mlflow_model=Model(artifact_path=MODEL_NAME, run_id=run_id))
    return local


def has_model(store, run_id: str) -> bool:
    """Whether the run has an MLflow model at ``model/``."""
    from xorexp.tracking import reading
    from xorexp.tracking.tags import MODEL_NAME

    return f"{MODEL_NAME}/MLmodel" in reading.artifact_paths(store, run_id, MODEL_NAME)


if __name__ != "xorexp.pyfunc":  # run by MLflow as the model's code
    mlflow.models.set_model(XorNet())
