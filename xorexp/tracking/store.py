"""Opening a tracking store: every check of its URI, server, database or sqlite file first (one
line, within seconds), then the experiment (created, tagged, checked for a moved store), and the
runs of crashed writers marked KILLED. The ``Store`` it returns (``opened_store``) is what the rest
of xorexp holds: the URI, the experiment id and the MLflow client, which only ``xorexp.tracking`` calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xorexp.compat import mlflow as compat_mlflow
from xorexp.tracking import health, reading, sqlite, writing
from xorexp.tracking.opened_store import Store
from xorexp.tracking.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, TAG_HOST, TAG_PID
from xorexp.tracking.uri import (
    ARTIFACTS_DIR,
    StoreError,
    cause_text,
    check_uri,
    describe_store_error,
    redact,
    remember_opened,
    sqlite_path,
    store_kind,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def check_store(uri: str, *, create: bool = True, experiment: str = "Default") -> None:
    """Every check of ``open_store`` (and, with ``create``, the making of a new embedded store),
    failing within seconds with a StoreError: the URI's kind, a server's health, a database's
    driver and server, a sqlite file's directory (writable, not full), header, lock and schema."""
    # MLflow draws a progress bar on stderr per artifact download (e.g. the sweep's best run's params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_uri(uri)
    kind = store_kind(uri)
    if kind == "server":
        health.check_server(uri, experiment)
        # MLflow prints two "View run ..." lines per ended run to stdout with a server: a sweep's
        # summary would drown in them. Its HTTP retries (7, 120 s
        # timeout) would make a server that dies mid-sweep hang each call for minutes. A user's own
        # settings of these variables win.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # a sweep's job has several runs' requests in flight at once (xorexp.background): beyond
        # MLflow's 10 pooled connections, urllib3 would warn of each connection it drops
        os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", "32")
    if kind in ("database", "sqlite"):
        # MLflow logs each failed database call with its traceback on stderr, then raises it: xorexp
        # reports what it raises in one line (describe_store_error), the log would bury that line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if kind == "database":
        tables = health.check_database(uri)
        if not create and "experiments" not in tables:  # MLflow would create its schema there
            raise StoreError(
                f"no store at {redact(uri)} (the database has no MLflow tables): run a command that logs "
                "runs there first, or fix the store URI"
            )
    elif kind == "sqlite":
        sqlite.wait_when_busy()
        sqlite.prepare(uri, create=create)
    remember_opened(uri)


def find_run(uri: str, run_id: str) -> tuple[Any, str]:
    """The run ``run_id`` of the store ``uri`` (checked first, read-only: nothing is created), in
    whichever experiment, and that experiment's name. MLflow's error for an unknown run propagates."""
    from mlflow import MlflowClient

    check_store(uri, create=False)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    return run, client.get_experiment(run.info.experiment_id).name


def open_store(uri: str, experiment: str, *, create: bool = True, clean_stale: bool = False) -> Store:
    """Open the store ``uri`` and its experiment ``experiment``; StoreError (one line) if unusable.

    ``create=True``: a missing embedded store file is created (complete schema, WAL journal) and a
    missing experiment too. ``create=False`` (read-only commands) never creates a file, a schema or
    an experiment. ``clean_stale=True`` also marks KILLED the RUNNING runs whose writer process (on
    this host) is gone (one query; see ``mark_stale_runs``), listed in ``Store.stale_runs``.
    """
    check_store(uri, create=create, experiment=experiment)
    try:
        store = _open_experiment(uri, experiment, create=create)
        if clean_stale:
            store.stale_runs = mark_stale_runs(store)
            if store.stale_runs:
                log.info("marked %d runs of crashed processes KILLED", len(store.stale_runs))
    except StoreError:
        raise
    except Exception as error:
        raise StoreError(
            describe_store_error(error, uri)
            or f"tracking store {redact(uri)} cannot be used ({cause_text(error, uri)})"
        ) from None
    return store


def _open_experiment(uri: str, experiment: str, *, create: bool) -> Store:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        _check_artifact_location(uri, experiment, found.artifact_location)
        if found.lifecycle_stage != "active":
            raise StoreError(
                f"experiment {experiment!r} of {redact(uri)} was deleted in MLflow: restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or set another name"
            )
        if create:
            ensure_experiment_kind(client, found)
        return Store(uri, found.experiment_id, client)
    if not create:
        raise StoreError(f"no experiment {experiment!r} in {redact(uri)}: check the experiment name")
    artifact_location = None
    path = sqlite_path(uri) if store_kind(uri) == "sqlite" else None
    if path is not None:
        artifact_location = (path.parent / ARTIFACTS_DIR / _safe_name(experiment)).as_uri()
    elif store_kind(uri) == "database":
        # no server to hold artifacts: they go to mlartifacts/<experiment> of the directory the
        # experiment is created from (the launch dir), as with sqlite, not MLflow's ./mlruns/<id>
        artifact_location = (Path.cwd().resolve() / ARTIFACTS_DIR / _safe_name(experiment)).as_uri()
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


def _check_artifact_location(uri: str, experiment: str, location: str | None) -> None:
    """Warn (one line) when an embedded store was moved: MLflow keeps the absolute artifact location
    the experiment was created with, so new artifacts would go to the old place."""
    path = sqlite_path(uri) if store_kind(uri) == "sqlite" else None
    if path is None or not location or not location.startswith("file:"):
        return
    recorded = Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    here = path.parent.resolve() / ARTIFACTS_DIR / _safe_name(experiment)
    if recorded != here and here.is_dir() and not recorded.parent.is_dir():
        log.warning(
            "experiment %r of %s keeps its artifacts at %s, which no longer exists (store moved?): new "
            "runs' artifacts go there, not to %s (MLflow records absolute artifact locations)",
            experiment,
            redact(uri),
            recorded,
            here,
        )


def _safe_name(name: str) -> str:
    """A folder name for an experiment: never ``.``, ``..``, hidden, empty, with a separator or
    longer than 100 characters (a long name is cut and keeps a hash of the whole)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe) > 100:
        safe = f"{safe[:83]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return safe or "experiment"


def mark_stale_runs(store: Store) -> list[str]:
    """Mark KILLED every RUNNING run whose writer process (same host) no longer exists."""
    host = socket.gethostname()
    stale = []
    for run in reading.search_all(store, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if not _process_alive(int(tags[TAG_PID])):
            writing.finish_run(store, run.info.run_id, "KILLED")
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


def close_engines() -> None:
    """Close every SQL connection MLflow pooled in this process (its tracking stores' engines, which
    the SQL writer shares): a sqlite store's last connection checkpoints its WAL into the database
    file and removes ``-wal``/``-shm``. Called at exit (``xorexp.subprocesses.quick_teardown``) and
    before the launcher's workers are forked (``xorexp.subprocesses.worker_context``): the next use
    opens a new connection."""
    for engine in compat_mlflow.sql_engines():
        try:
            engine.dispose()
        except Exception:
            log.debug("could not close an engine at exit", exc_info=True)
