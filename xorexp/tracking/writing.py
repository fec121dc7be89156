"""Writing runs: a training run from start to its terminal status (params, the loss trace in
``log_batch`` calls, outcome, artifacts in one upload, the MLflow model of single runs), a failed
job's FAILED run with its traceback, a sweep's parent run and what is added to it, a replay's run.

Calls go through ``MlflowClient`` with explicit run ids (never the fluent active-run stack), and no
non-finite number is ever logged as a metric. MLflow is imported when a run is written, not when
this module is.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from xorexp import provenance
from xorexp.data import X, Y
from xorexp.params import config_hash, result_params, run_name
from xorexp.tracking import reading, sql_writer
from xorexp.tracking.tags import (
    MODEL_NAME,
    PARAMS_ARTIFACT,
    PREDICTIONS_ARTIFACT,
    ROLE_SWEEP,
    TAG_GIT_COMMIT,
    TAG_HASH,
    TAG_HOST,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_PID,
    TAG_REPLAY_OF,
    TAG_ROLE,
    TRACEBACK_ARTIFACT,
)
from xorexp.tracking.uri import store_kind
from xorexp.train import RunResult, RunSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Metric, Param

    from xorexp.tracking.store import Store

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


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
            _remember_artifact_uri(run_id, artifact_uri)
            _sql_started[run_id] = None
            while len(_sql_started) > _ARTIFACT_URIS_KEPT:
                _sql_started.popitem(last=False)
            return run_id
    run = store.client.create_run(
        store.experiment_id, run_name=run_name(spec), tags=run_tags(spec, tags, parent_run_id)
    )
    _remember_artifact_uri(run.info.run_id, run.info.artifact_uri)
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
    resumed: bool = False,
) -> None:
    """Fill a run with the result (metrics, outcome, artifacts) and mark it FINISHED.

    ``resumed``: an earlier attempt at this run (a Ray task retried after its worker died) may have
    logged its values already; they are logged only if the run has no metric yet (a ``log_batch`` is
    one transaction, in the store behind a server too), so its loss history is never doubled.

    Artifacts always include ``model/params.npz`` and, from a dirty checkout, the diff
    (``provenance/git_diff.patch``), all in the run's one upload (to a server: one request per file,
    at once, while the values are logged; a failed request raises). ``model`` says whether to add the
    MLflow model (the rest of ``model/``, ~15 ms more); None: only for a run that is not part of a
    sweep (no parent run; costs one read, pass it explicitly to save that).
    """
    from mlflow.entities import RunTag

    metrics = run_metrics(result, _now_ms())
    if resumed and reading.get_run(store, run_id).data.metrics:  # the earlier attempt's values landed
        metrics = []
    params = [] if params_logged or run_id in _sql_started else _params(result.spec)
    writer = sql_writer.writer_for(store)
    if writer is not None:  # an SQL store: the files, then every value and FINISHED in one transaction
        _write_result_files(store, run_id, result, blobs, files, dirs, model)
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
    values = _request_pool().submit(log_values) if store_kind(store.uri) == "server" else None
    if values is None:
        log_values()
    try:
        _write_result_files(store, run_id, result, blobs, files, dirs, model)
    except BaseException:
        if values is not None:
            wait([values])
        raise
    if values is not None:
        values.result()
    finish_run(store, run_id, "FINISHED")


def _write_result_files(store, run_id, result, blobs, files, dirs, model) -> None:
    from xorexp import pyfunc

    documents = {PREDICTIONS_ARTIFACT: json.dumps(predictions_document(result), indent=1)}
    if model is None:
        model = TAG_PARENT not in reading.get_run(store, run_id).data.tags
    params_file = pyfunc.params_npz(result)
    with contextlib.ExitStack() as stack:
        model_dirs = {}
        if model:  # a sweep's runs have none (~0.3 ms a run for a temporary folder alone)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="xorexp-model-"))
            try:
                model_dirs[MODEL_NAME] = pyfunc.save_model(Path(tmp), run_id, params_file)
            except Exception:  # the run's results matter more than its packaged model
                log.warning("run %s: could not save its MLflow model", run_id, exc_info=True)
        log_files(
            store,
            run_id,
            files={**documents, **provenance.artifacts(), **(files or {})},
            blobs={PARAMS_ARTIFACT: params_file, **(blobs or {})},
            dirs={**(dirs or {}), **model_dirs},
        )


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


def log_files(
    store: Store,
    run_id: str,
    *,
    files: Mapping[str, str] | None = None,
    figures: Mapping[str, Figure] | None = None,
    blobs: Mapping[str, bytes] | None = None,
    dirs: Mapping[str, Path] | None = None,
) -> None:
    """Texts, figures (as PNG), bytes and local folders as artifacts of a run, in one upload
    (to a server: its files at once, see ``_upload``).

    Each mapping goes from an artifact path to a text, a Figure, bytes or a local folder.
    """
    if not (files or figures or blobs or dirs):
        return
    local = _local_artifact_dir(store, run_id)
    if local is not None:  # the run's artifact folder is on this machine: written in place
        _write_tree(local, files, figures, blobs, dirs)
        return
    with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
        _write_tree(Path(tmp), files, figures, blobs, dirs)
        _upload(store, run_id, Path(tmp))


def _write_tree(root: Path, files, figures, blobs, dirs) -> None:
    """The artifacts as files under ``root`` (as MLflow copies them: contents, not permissions)."""
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
            shutil.copytree(local, root / rel, dirs_exist_ok=True, copy_function=shutil.copyfile)


def _artifact_uri(store: Store, run_id: str) -> str:
    artifact_uri = _artifact_uris.get(run_id)
    return artifact_uri if artifact_uri is not None else reading.get_run(store, run_id).info.artifact_uri


def _local_artifact_dir(store: Store, run_id: str) -> Path | None:
    """The run's artifact folder when it is a local path MLflow would copy into (an embedded or
    database store's ``file:`` or plain-path artifact location), else None (upload it)."""
    if store_kind(store.uri) == "server":
        return None
    artifact_uri = _artifact_uri(store, run_id)
    if urllib.parse.urlsplit(artifact_uri).scheme not in ("", "file"):
        return None
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(artifact_uri))


UPLOAD_THREADS = 8  # a server's run: requests of one process in flight at once, at most
_ARTIFACT_URIS_KEPT = 1024
_artifact_uris: OrderedDict[str, str] = OrderedDict()  # run id -> artifact URI, of runs started here
_sql_started: OrderedDict[str, None] = OrderedDict()  # runs started here by the SQL writer (params in)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _remember_artifact_uri(run_id: str, artifact_uri: str) -> None:
    """Spares the read of the run that finding its artifact location would cost at its upload."""
    _artifact_uris[run_id] = artifact_uri
    while len(_artifact_uris) > _ARTIFACT_URIS_KEPT:
        _artifact_uris.popitem(last=False)


@functools.cache
def _request_pool() -> ThreadPoolExecutor:
    """This process's threads for a server's requests (made on first use, bounded)."""
    return ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="xorexp-request")


def _upload(store: Store, run_id: str, root: Path) -> None:
    """Every file under ``root`` as the run's artifact at the same relative path. To a server, the
    files go at once (one request each, ``UPLOAD_THREADS`` in flight); elsewhere in one call. The
    first failure raises once every started upload is over (those not started are dropped)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(_artifact_uri(store, run_id), tracking_uri=store.uri)
    if store_kind(store.uri) != "server":
        repo.log_artifacts(str(root))
        return
    uploads: list[Future] = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            folder = path.parent.relative_to(root).as_posix()
            folder = None if folder == "." else folder
            uploads.append(_request_pool().submit(repo.log_artifact, str(path), folder))
    _, pending = wait(uploads, return_when=FIRST_EXCEPTION)
    for future in pending:
        future.cancel()
    wait(pending)
    for future in uploads:
        if not future.cancelled():
            future.result()  # the first failure, if any


def finish_run(store: Store, run_id: str, status: str) -> None:
    """End a run: status is FINISHED, FAILED or KILLED."""
    store.client.set_terminated(run_id, status)


def log_failure(store: Store, run_id: str, spec: RunSpec, error_text: str) -> None:
    """Mark a run FAILED, with its params and the traceback as artifact ``error/traceback.txt``."""
    try:
        store.client.log_batch(run_id, params=_params(spec))
        log_files(store, run_id, files={TRACEBACK_ARTIFACT: error_text})
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
    log_files(store, run_id, files=files, figures=figures, blobs=blobs)


def start_parent(store: Store, name: str, tags: Mapping[str, str]) -> str:
    """The parent run of a multirun (RUNNING until the sweep ends)."""
    all_tags = {
        TAG_ROLE: ROLE_SWEEP,
        **({TAG_GIT_COMMIT: git_commit()} if git_commit() else {}),
        **provenance.tags(),
        **process_tags(),
        **tags,
    }
    return store.client.create_run(store.experiment_id, run_name=name, tags=all_tags).info.run_id


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
