"""Writing runs: a training run from start to its terminal status (params, the loss trace in
``log_batch`` calls, outcome, its files), a failed job's FAILED run with its traceback, a sweep's
parent run and what is added to it.

What a run carries beyond its values (provenance, trained parameters, MLflow model) is the caller's
to pass in (``xorexp.run_logging``): nothing here imports the model packaging.

Calls go through ``MlflowClient`` with explicit run ids (never the fluent active-run stack), and no
non-finite number is ever logged as a metric. MLflow is imported when a run is written, not when
this module is.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import wait
from pathlib import Path
from typing import TYPE_CHECKING

from xorexp.data import X, Y
from xorexp.params import config_hash, result_params, run_name
from xorexp.tracking import artifacts, reading, sql_writer
from xorexp.tracking.tags import (
    PREDICTIONS_ARTIFACT,
    ROLE_SWEEP,
    TAG_HASH,
    TAG_HOST,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_PID,
    TAG_ROLE,
    TRACEBACK_ARTIFACT,
)
from xorexp.tracking.uri import store_kind
from xorexp.train import RunResult, RunSpec

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param

    from xorexp.tracking.opened_store import Store

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_SQL_STARTED_KEPT = 1024
_sql_started: OrderedDict[str, None] = OrderedDict()  # runs started here by the SQL writer (params in)


def finite_or_none(value: float) -> float | None:
    """The value as a float, None when it is not finite (JSON has no NaN or infinity)."""
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


def run_metrics(result: RunResult, timestamp_ms: int) -> list[Metric]:
    """The loss trace plus summary metrics, finite values only."""
    from mlflow.entities import Metric

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


def _params(spec: RunSpec) -> list[Param]:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in result_params(spec).items()]


def run_tags(spec: RunSpec, tags: Mapping[str, str] | None, parent_run_id: str | None) -> dict[str, str]:
    """A training run's tags: its config hash, its parent, the writing process, then ``tags``."""
    return {
        TAG_HASH: config_hash(spec),
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
    them with the metrics in one call: the same store content in one call less. (An SQL store gets
    them at once either way: there they cost nothing more, see ``sql_writer``.)
    """
    writer = sql_writer.writer_for(store)
    if writer is not None:
        created = writer.create(
            run_name(spec), run_tags(spec, tags, parent_run_id), result_params(spec), _now_ms()
        )
        if created is not None:
            run_id, artifact_uri = created
            artifacts.remember_artifact_uri(run_id, artifact_uri)
            _sql_started[run_id] = None
            while len(_sql_started) > _SQL_STARTED_KEPT:
                _sql_started.popitem(last=False)
            return run_id
    run = store.client.create_run(
        store.experiment_id, run_name=run_name(spec), tags=run_tags(spec, tags, parent_run_id)
    )
    artifacts.remember_artifact_uri(run.info.run_id, run.info.artifact_uri)
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
    resumed: bool = False,
) -> None:
    """Fill a run with the result (metrics, outcome, ``predictions.json`` and the files given) and
    mark it FINISHED.

    ``resumed``: an earlier attempt at this run (a Ray task retried after its worker died) may have
    logged its values already; they are logged only if the run has no metric yet (a ``log_batch`` is
    one transaction, in the store behind a server too), so its loss history is never doubled.

    The files go in the run's one upload (to a server: one request per file, at once, while the
    values are logged; a failed request raises).
    """
    from mlflow.entities import RunTag

    metrics = run_metrics(result, _now_ms())
    if resumed and reading.get_run(store, run_id).data.metrics:  # the earlier attempt's values landed
        metrics = []
    params = [] if params_logged or run_id in _sql_started else _params(result.spec)
    documents = {PREDICTIONS_ARTIFACT: json.dumps(predictions_document(result), indent=1)}
    files = {**documents, **(files or {})}
    writer = sql_writer.writer_for(store)
    if writer is not None:  # an SQL store: the files, then every value and FINISHED in one transaction
        artifacts.log_files(store, run_id, files=files, blobs=blobs, dirs=dirs)
        outcome = {TAG_OUTCOME: result.outcome}
        if writer.finish(run_id, metrics, {p.key: p.value for p in params}, outcome, "FINISHED", _now_ms()):
            return
    outcome = [RunTag(TAG_OUTCOME, result.outcome)]

    def log_values() -> None:
        store.client.log_batch(run_id, metrics=metrics[:MAX_BATCH], params=params, tags=outcome)
        for start in range(MAX_BATCH, len(metrics), MAX_BATCH):
            store.client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH])

    if writer is not None:  # MLflow's path, for what the SQL writer would not vouch for
        log_values()
        finish_run(store, run_id, "FINISHED")
        return
    # to a server, the values go while the artifacts upload (one request less in the run's chain)
    values = artifacts.request_pool().submit(log_values) if store_kind(store.uri) == "server" else None
    if values is None:
        log_values()
    try:
        artifacts.log_files(store, run_id, files=files, blobs=blobs, dirs=dirs)
    except BaseException:
        if values is not None:
            wait([values])
        raise
    if values is not None:
        values.result()
    finish_run(store, run_id, "FINISHED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def finish_run(store: Store, run_id: str, status: str) -> None:
    """End a run: status is FINISHED, FAILED or KILLED."""
    store.client.set_terminated(run_id, status)


def set_tag(store: Store, run_id: str, key: str, value: str) -> None:
    """One tag on a run, running or ended."""
    store.client.set_tag(run_id, key, value)


def log_failure(store: Store, run_id: str, spec: RunSpec, error_text: str) -> None:
    """Mark a run FAILED, with its params and the traceback as artifact ``error/traceback.txt``."""
    try:
        store.client.log_batch(run_id, params=_params(spec))
        artifacts.log_files(store, run_id, files={TRACEBACK_ARTIFACT: error_text})
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
    blobs: Mapping[str, bytes] | None = None,
) -> None:
    """Add params, finite metrics, tags and artifacts to an existing run (e.g. a sweep's parent)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    store.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(v)],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    artifacts.log_files(store, run_id, files=files, blobs=blobs)


def start_parent(store: Store, name: str, tags: Mapping[str, str]) -> str:
    """The parent run of a multirun (RUNNING until the sweep ends)."""
    all_tags = {TAG_ROLE: ROLE_SWEEP, **process_tags(), **tags}
    return store.client.create_run(store.experiment_id, run_name=name, tags=all_tags).info.run_id
