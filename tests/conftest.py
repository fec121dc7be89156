"""Shared helpers: run the real CLI in a subprocess and read the real sqlite store it wrote.

Also the ``ray`` marker's rule: a test marked ``ray`` is skipped when Ray is not installed, and fails
instead when ``XOREXP_REQUIRE_RAY=1`` (set by ``.ci/run``, where Ray is installed and must be tested).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_RAY = "XOREXP_REQUIRE_RAY"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ray") is None or importlib.util.find_spec("ray") is not None:
        return
    reason = "Ray is not installed (pip install -e '.[test,ray]')"
    if os.environ.get(REQUIRE_RAY) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_RAY}=1 requires the Ray tests to run", pytrace=False)
    pytest.skip(reason)


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


def runs_of(directory: Path, experiment: str = "xorexp", filter_string: str = "", uri: str | None = None):
    client = MlflowClient(uri or store_uri(directory))
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


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (an exited child not yet waited for) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


PER_PROCESS_TAGS = {"xorexp.pid", "xorexp.command"}  # tags that name the process, not the run


def snapshot_differences(got: dict, expected: dict) -> list[str]:
    """Where two store snapshots differ, one line per run and field (empty when equal): an assertion
    on it names the field, where pytest's diff of two large dicts hides it."""
    lines = [f"{name}: only in the first" for name in got.keys() - expected.keys()]
    lines += [f"{name}: only in the second" for name in expected.keys() - got.keys()]
    for name in sorted(got.keys() & expected.keys()):
        for field in sorted(got[name].keys() | expected[name].keys()):
            a, b = got[name].get(field), expected[name].get(field)
            if a != b:
                if isinstance(a, dict) and isinstance(b, dict):  # only the keys that differ
                    keys = {k for k in a.keys() | b.keys() if a.get(k, KeyError) != b.get(k, KeyError)}
                    a, b = {k: a[k] for k in keys if k in a}, {k: b[k] for k in keys if k in b}
                lines.append(f"{name} {field}: {a!r} != {b!r}")
    return lines


def store_snapshot(directory: Path, uri: str | None = None, filter_string: str = "") -> dict:
    """Per training run name: status, params, tags that do not depend on time or process, metrics,
    the loss trace and predictions as exact hex floats, and the artifact paths (parents left out).
    ``uri``: another store than ``directory``'s sqlite file (``directory`` then holds downloads)."""
    client = MlflowClient(uri or store_uri(directory))
    out = {}
    for run in runs_of(directory, filter_string=filter_string, uri=uri):
        if run.data.tags.get("xorexp.role") == "sweep":
            continue
        run_id = run.info.run_id
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        local = client.download_artifacts(run_id, "predictions.json", str(directory / "dl" / run_id))
        predictions = json.loads(Path(local).read_text())["predictions"]
        artifacts = sorted(
            a.path for path in (None, "plots", ".hydra") for a in client.list_artifacts(run_id, path)
        )
        tags = {k: v for k, v in run.data.tags.items()
                if k.startswith("xorexp.") and k not in PER_PROCESS_TAGS}
        out[run.info.run_name] = {
            "status": run.info.status,
            "params": run.data.params,
            "tags": tags,
            "metrics": run.data.metrics,
            "loss": [(m.step, m.value.hex()) for m in history],
            "predictions": [None if v is None else v.hex() for v in predictions],
            "artifacts": artifacts,
        }
    return out


def assert_same_sweep_both_ways(
    tmp_path: Path, args: tuple[str, ...], env: dict, jobs: int
) -> tuple[Path, Path]:
    """Run the sweep ``args`` (with ``hydra.sweep.dir=sweep``) twice, with ``env`` and without it; both
    end 0 with ``jobs`` FINISHED runs, the same store snapshot and the same ``.hydra`` files (paths
    apart). Returns the two launch dirs (with ``env``, without)."""
    switched, plain = tmp_path / "switched", tmp_path / "plain"
    switched.mkdir()
    plain.mkdir()
    a = run_cli(switched, *args, "hydra.sweep.dir=sweep", env=env)
    b = run_cli(plain, *args, "hydra.sweep.dir=sweep")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    got, expected = store_snapshot(switched), store_snapshot(plain)
    assert len(got) == jobs and {run["status"] for run in got.values()} == {"FINISHED"}
    assert snapshot_differences(got, expected) == []
    for job in range(jobs):
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            relative = Path("sweep") / str(job) / ".hydra" / name
            text_a, text_b = (switched / relative).read_text(), (plain / relative).read_text()
            assert text_a.replace(str(switched), "") == text_b.replace(str(plain), ""), relative
    return switched, plain
