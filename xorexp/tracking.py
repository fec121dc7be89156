"""Everything xorexp writes to MLflow. The only module that talks to MLflow about runs.

Calls go through ``MlflowClient`` with explicit run ids (never the fluent active-run stack), traces
go in ``log_batch`` calls, and no non-finite number is ever logged as a metric.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from xorexp import provenance
from xorexp.data import X, Y
from xorexp.train import RunResult, RunSpec

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call

TAG_OUTCOME = "xorexp.outcome"
TAG_HASH = "xorexp.config_hash"
TAG_OVERRIDES = "xorexp.overrides"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_ROLE = "xorexp.role"  # "sweep" on a multirun's parent run
TAG_SWEEP = "xorexp.sweep"  # the sweep preset (or "overrides")
TAG_REUSED = "xorexp.reused_runs"  # on a parent: how many FINISHED runs were reused, not retrained
TAG_TRIAL = "xorexp.trial"
TAG_HOST = "xorexp.host"
TAG_PID = "xorexp.pid"
TAG_REPLAY_OF = "xorexp.replay_of"  # on a run made by ``python -m xorexp.replay --log``
PARAMS_ARTIFACT = "model/params.npz"  # every run: W1, B1, W2, B2 as trained
# MLflow 3.17's UI reads this experiment tag: without it an experiment counts as GenAI (its runs shown
# as "Evaluations"); this value makes it a model-training experiment (runs, charts, artifacts).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_NAME = "model"  # the MLflow model of a run (single runs, a sweep's best run): runs:/<id>/model


def resolve_uri(uri: str | None, launch_dir: str | Path) -> str:
    """The tracking URI to use: null means ``sqlite:///<launch_dir>/mlflow.db``.

    A relative sqlite path is made absolute against ``launch_dir``, so no job directory or
    worker process can ever change where runs go.
    """
    launch_dir = Path(launch_dir).resolve()
    if uri is None:
        return f"sqlite:///{launch_dir / DB_NAME}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{launch_dir / uri[len('sqlite:///') :]}"
    return uri


def config_hash(spec: RunSpec) -> str:
    """Stable hash of the values that shape a run's numbers.

    Computed from the canonical text params had before they were logged as typed (floats by
    ``repr``: ``1.0``), so the hash of every existing run stays what it was.
    """
    canonical = json.dumps(_hash_params(spec), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _hash_params(spec: RunSpec) -> dict[str, str]:
    return {
        "hidden_units": str(spec.hidden_units),
        "lr": repr(float(spec.lr)),
        "iterations": str(spec.iterations),
        "seed": str(spec.seed),
        "trace_every": str(spec.trace_every),
        "stop_loss": "null" if spec.stop_loss is None else repr(float(spec.stop_loss)),
    }


def param_text(value: int | float) -> str:
    """A number as a user types it: the shortest text that parses back to the same value, with no
    trailing ``.0`` (``1``, ``0.1``, ``1e-05``, ``2.5e+20``); integers as integers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))  # shortest round-tripping text
    return text[:-2] if text.endswith(".0") else text


def result_params(spec: RunSpec) -> dict[str, str]:
    """The run's result-shaping values as MLflow params, written as typed (``lr=1`` -> ``1``);
    each parses back (``float``/``int``) to exactly the value trained with."""
    return {
        "hidden_units": str(spec.hidden_units),
        "lr": param_text(float(spec.lr)),
        "iterations": str(spec.iterations),
        "seed": str(spec.seed),
        "trace_every": str(spec.trace_every),
        "stop_loss": "null" if spec.stop_loss is None else param_text(float(spec.stop_loss)),
    }


def _params(spec: RunSpec) -> list[Param]:
    return [Param(key, value) for key, value in result_params(spec).items()]


def spec_from_params(params: Mapping[str, str]) -> RunSpec:
    """Inverse of ``result_params``: reads today's params (``lr=1``) and older ones (``lr=1.0``)."""
    stop = params["stop_loss"]
    return RunSpec(
        hidden_units=_int_param(params["hidden_units"]),
        lr=float(params["lr"]),
        iterations=_int_param(params["iterations"]),
        seed=_int_param(params["seed"]),
        trace_every=_int_param(params["trace_every"]),
        stop_loss=None if stop in ("null", "None") else float(stop),
    )


def _int_param(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = float(text)  # e.g. "2.0"; anything not integral is an error
        if not number.is_integer():
            raise
        return int(number)


def run_name(spec: RunSpec) -> str:
    return f"h{spec.hidden_units}-lr{spec.lr:g}-s{spec.seed}"


def git_commit() -> str | None:
    """Commit of the checkout xorexp runs from, or None outside a git checkout."""
    checkout = provenance.checkout()
    return checkout.commit if checkout else None


def finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def predictions_document(result: RunResult) -> dict:
    """Content of predictions.json; Python's float repr round-trips exactly, non-finite -> null."""
    return {
        "inputs": X.T.tolist(),
        "targets": Y[0].tolist(),
        "predictions": [finite_or_none(v) for v in result.predictions],
        "outcome": result.outcome,
        "final_loss": finite_or_none(result.final_loss),
    }


@dataclass
class Store:
    """An opened tracking store and the experiment runs go to."""

    uri: str
    experiment_id: str
    client: MlflowClient


class StoreError(RuntimeError):
    """The tracking store cannot be used (e.g. a tracking server that does not answer)."""


SERVER_TIMEOUT_S = 5.0


def check_server(uri: str) -> None:
    """An http(s) tracking URI must answer ``/health`` within seconds (MLflow's own client would
    retry for minutes before failing)."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=SERVER_TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (OSError, urllib.error.URLError) as error:
        problem = str(getattr(error, "reason", error))
    raise StoreError(f"tracking server {uri} does not answer ({problem}): start it or fix tracking.uri")


def open_store(uri: str, experiment: str, *, create: bool = True) -> Store:
    """Open (creating and migrating if new) the store and the experiment. Call once per launch.

    ``create=False`` (readers such as ``python -m xorexp.report``): a missing experiment is a
    StoreError, and nothing is created or tagged.
    """
    # MLflow draws a progress bar on stderr per artifact download (e.g. the sweep's best run's params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        # MLflow prints two "View run ..." lines per ended run to stdout with a server: a sweep's
        # summary would drown in them. Its HTTP retries (7, 120 s
        # timeout) would make a server that dies mid-sweep hang each call for minutes. A user's own
        # settings of these variables win.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        if create:
            ensure_experiment_kind(client, found)
        return Store(uri, found.experiment_id, client)
    if not create:
        raise StoreError(f"no experiment {experiment!r} in {redact(uri)}: check --experiment")
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db_dir = Path(uri[len("sqlite:///") :]).parent
        artifact_location = (db_dir / "mlartifacts" / _safe_name(experiment)).as_uri()
    try:
        experiment_id = client.create_experiment(
            experiment, artifact_location=artifact_location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
        )
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        experiment_id = found.experiment_id
    return Store(uri, experiment_id, client)


def ensure_experiment_kind(client: MlflowClient, experiment) -> None:
    """Tag an experiment made before xorexp tagged them as model training (one call, only if missing)."""
    if (experiment.tags or {}).get(TAG_EXPERIMENT_KIND) is None:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)


def redact(uri: str) -> str:
    """The URI fit to print: a password in it (``http://user:secret@host``) becomes ``***``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "experiment"


def run_metrics(result: RunResult, timestamp_ms: int) -> list[Metric]:
    """The loss trace plus summary metrics, finite values only."""
    metrics = [
        Metric("loss", float(v), timestamp_ms, int(s))
        for s, v in zip(result.trace_steps, result.loss_trace, strict=True)
        if math.isfinite(v)
    ]
    summary = {"final_loss": result.final_loss, "accuracy": result.accuracy, "steps": float(result.steps)}
    if result.solved_at is not None:
        summary["solved_at"] = float(result.solved_at)
    metrics += [Metric(k, float(v), timestamp_ms, 0) for k, v in summary.items() if math.isfinite(v)]
    return metrics


def process_tags() -> dict[str, str]:
    """Who is writing a run: lets a later sweep tell a crashed writer's RUNNING run from a live one."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def run_tags(spec: RunSpec, tags: Mapping[str, str] | None, parent_run_id: str | None) -> dict[str, str]:
    return {
        TAG_HASH: config_hash(spec),
        **({TAG_GIT_COMMIT: git_commit()} if git_commit() else {}),
        **provenance.tags(),
        **({TAG_PARENT: parent_run_id} if parent_run_id else {}),
        **process_tags(),
        **(tags or {}),
    }


def start_run(
    store: Store,
    spec: RunSpec,
    *,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    with_params: bool = True,
) -> str:
    """Create the MLflow run of one training run (RUNNING); returns its id.

    ``with_params=False`` leaves the params to ``log_result(..., params_logged=False)``, which logs
    them with the metrics in one call: the same store content in one call less.
    """
    run = store.client.create_run(
        store.experiment_id, run_name=run_name(spec), tags=run_tags(spec, tags, parent_run_id)
    )
    if with_params:
        store.client.log_batch(run.info.run_id, params=_params(spec))
    return run.info.run_id


def log_result(
    store: Store,
    run_id: str,
    result: RunResult,
    *,
    blobs: Mapping[str, bytes] | None = None,
    files: Mapping[str, str] | None = None,
    dirs: Mapping[str, Path] | None = None,
    params_logged: bool = True,
    model: bool | None = None,
) -> None:
    """Fill a run with the result (metrics, outcome, artifacts) and mark it FINISHED.

    Artifacts always include ``model/params.npz`` and, from a dirty checkout, the diff
    (``provenance/git_diff.patch``), all in the run's one upload. ``model`` says whether to add the
    MLflow model (the rest of ``model/``, ~15 ms more); None: only for a run that is not part of a
    sweep (no parent run; costs one read, pass it explicitly to save that).
    """
    metrics = run_metrics(result, int(time.time() * 1000))
    params = [] if params_logged else _params(result.spec)
    outcome = [RunTag(TAG_OUTCOME, result.outcome)]
    store.client.log_batch(run_id, metrics=metrics[:MAX_BATCH], params=params, tags=outcome)
    for start in range(MAX_BATCH, len(metrics), MAX_BATCH):
        store.client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH])
    documents = {"predictions.json": json.dumps(predictions_document(result), indent=1)}
    if model is None:
        model = TAG_PARENT not in store.client.get_run(run_id).data.tags
    params_file = params_npz(result)
    with tempfile.TemporaryDirectory(prefix="xorexp-model-") as tmp:
        model_dirs = {}
        if model:
            try:
                model_dirs[MODEL_NAME] = save_model(Path(tmp), run_id, params_file)
            except Exception:  # the run's results matter more than its packaged model
                log.warning("run %s: could not save its MLflow model", run_id, exc_info=True)
        log_files(
            store,
            run_id,
            files={**documents, **provenance.artifacts(), **(files or {})},
            blobs={PARAMS_ARTIFACT: params_file, **(blobs or {})},
            dirs={**(dirs or {}), **model_dirs},
        )
    finish_run(store, run_id, "FINISHED")


def log_replay(
    store: Store,
    result: RunResult,
    *,
    replay_of: str,
    blobs: Mapping[str, bytes] | None = None,
    files: Mapping[str, str] | None = None,
) -> str:
    """A replay (``python -m xorexp.replay --log``) as a new run with the contract of any run
    (no Hydra files: it did not go through Hydra), tagged ``xorexp.replay_of``; returns its id."""
    run_id = start_run(store, result.spec, tags={TAG_REPLAY_OF: replay_of}, with_params=False)
    try:
        log_result(store, run_id, result, blobs=blobs, files=files, params_logged=False, model=True)
    except Exception:
        finish_run(store, run_id, "FAILED")
        raise
    return run_id


def params_npz(result: RunResult) -> bytes:
    """The trained parameters W1, B1, W2, B2 (the spec's shapes) as the bytes of an .npz file."""
    buffer = io.BytesIO()
    np.savez(buffer, **result.arrays())
    return buffer.getvalue()


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

    from xorexp import model as xor_model

    params_path = where / "params.npz"
    if isinstance(params_file, bytes):
        params_path.write_bytes(params_file)
    else:
        shutil.copyfile(params_file, params_path)
    local = where / MODEL_NAME
    xor_model.save(local, params_path, mlflow_model=Model(artifact_path=MODEL_NAME, run_id=run_id))
    return local


def log_model(store: Store, run_id: str, params_file: bytes | str | Path) -> None:
    """Add the MLflow model (``runs:/<run_id>/model``) to a run that has its params, e.g. a sweep's best."""
    with tempfile.TemporaryDirectory(prefix="xorexp-model-") as tmp:
        local = save_model(Path(tmp), run_id, params_file)
        store.client.log_artifacts(run_id, str(local), MODEL_NAME)


def has_model(store: Store, run_id: str) -> bool:
    """Whether the run has an MLflow model at ``model/``."""
    items = store.client.list_artifacts(run_id, MODEL_NAME)
    return any(item.path == f"{MODEL_NAME}/MLmodel" for item in items)


def log_files(
    store: Store,
    run_id: str,
    *,
    files: Mapping[str, str] | None = None,
    figures: Mapping[str, Figure] | None = None,
    blobs: Mapping[str, bytes] | None = None,
    dirs: Mapping[str, Path] | None = None,
) -> None:
    """Texts, figures (as PNG), bytes and local folders as artifacts of a run, in one upload.

    Each mapping goes from an artifact path to a text, a Figure, bytes or a local folder.
    """
    if not (files or figures or blobs or dirs):
        return
    with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
        root = Path(tmp)
        for rel, text in (files or {}).items():
            _write(root / rel, text)
        for rel, data in (blobs or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        for rel, fig in (figures or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(root / rel)
        for rel, local in (dirs or {}).items():
            if Path(local).is_dir():
                shutil.copytree(local, root / rel, dirs_exist_ok=True)
        store.client.log_artifacts(run_id, str(root))


def finish_run(store: Store, run_id: str, status: str) -> None:
    """End a run: status is FINISHED, FAILED or KILLED."""
    store.client.set_terminated(run_id, status)


def log_failure(store: Store, run_id: str, spec: RunSpec, error_text: str) -> None:
    """Mark a run FAILED, with its params and the traceback as artifact ``error/traceback.txt``."""
    try:
        store.client.log_batch(run_id, params=_params(spec))
        log_files(store, run_id, files={"error/traceback.txt": error_text})
    finally:
        finish_run(store, run_id, "FAILED")


def log_to_run(
    store: Store,
    run_id: str,
    *,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    figures: Mapping[str, Figure] | None = None,
) -> None:
    """Add params, finite metrics, tags and artifacts to an existing run (e.g. a sweep's parent)."""
    now = int(time.time() * 1000)
    store.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(v)],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    log_files(store, run_id, files=files, figures=figures)


def start_parent(store: Store, name: str, tags: Mapping[str, str]) -> str:
    """The parent run of a multirun (RUNNING until the sweep ends)."""
    all_tags = {
        TAG_ROLE: "sweep",
        **({TAG_GIT_COMMIT: git_commit()} if git_commit() else {}),
        **provenance.tags(),
        **process_tags(),
        **tags,
    }
    return store.client.create_run(store.experiment_id, run_name=name, tags=all_tags).info.run_id


def find_finished(store: Store, spec: RunSpec) -> str | None:
    """Id of the newest FINISHED run with the config hash of ``spec``, if any."""
    runs = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`{TAG_HASH}` = '{config_hash(spec)}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def mark_stale_runs(store: Store) -> list[str]:
    """Mark KILLED every RUNNING run whose writer process (same host) no longer exists."""
    host = socket.gethostname()
    stale = []
    for run in _search_all(store, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if not _process_alive(int(tags[TAG_PID])):
            finish_run(store, run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _search_all(store: Store, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = store.client.search_runs(
            [store.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def sweep_children(store: Store, parent_run_id: str) -> list:
    """Every run whose parent is ``parent_run_id`` (mlflow Run objects)."""
    return _search_all(store, f"tags.`{TAG_PARENT}` = '{parent_run_id}'")


def latest_sweep(store: Store) -> str | None:
    runs = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'sweep'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def get_runs(store: Store, run_ids: list[str]) -> list:
    return [store.client.get_run(run_id) for run_id in run_ids]


def read_text_artifact(store: Store, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
        try:
            local = store.client.download_artifacts(run_id, path, tmp)
        except Exception:  # absent
            return None
        return Path(local).read_text()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def loss_history(store: Store, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's logged loss trace, in step order."""
    history = store.client.get_metric_history(run_id, "loss")
    history.sort(key=lambda m: m.step)
    return np.array([m.step for m in history]), np.array([m.value for m in history])


def describe_store_error(error: BaseException, uri: str) -> str | None:
    """One line naming the store when ``error`` means the store itself failed, else None."""
    import errno
    import sqlite3

    from mlflow.exceptions import MlflowException

    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for item in chain:
        text = str(item).lower()
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
            why = item.strerror
            return f"the tracking store {uri} cannot be written ({why}): free space or fix permissions"
        if isinstance(item, sqlite3.OperationalError) or "sqlite3.operationalerror" in text:
            return f"the tracking store {uri} failed ({_first_line(item)})"
        if isinstance(item, MlflowException) and ("max retries" in text or "connection" in text):
            return f"the tracking server {uri} stopped answering ({_first_line(item)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
