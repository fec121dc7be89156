"""Shared helpers: run the real CLI in a subprocess and read the real sqlite store it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def run_cli(cwd: Path, *args: str, module: str = "xorexp", timeout: float = 300, env: dict | None = None):
    """``python -m <module> args`` with ``cwd`` as the launch directory; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def store_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


def runs_of(directory: Path, experiment: str = "xorexp", filter_string: str = ""):
    client = MlflowClient(store_uri(directory))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000)


def read_artifact_json(directory: Path, run_id: str, path: str) -> dict:
    client = MlflowClient(store_uri(directory))
    local = client.download_artifacts(run_id, path, str(directory / f"dl-{run_id}"))
    return json.loads(Path(local).read_text())


@pytest.fixture
def client_for():
    return lambda directory: MlflowClient(store_uri(directory))
