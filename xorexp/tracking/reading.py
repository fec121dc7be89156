"""Everything xorexp writes to MLflow. The only module that talks to MLflow about runs.

Calls go through ``MlflowClient`` with explicit run ids (never the fluent active-run stack), traces
go in ``log_batch`` calls, and no non-finite number is ever logged as a metric.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


def config_hash(spec: RunSpec) -> str:
    """Stable hash of the values that shape a run's numbers.

    Computed from the canonical text params had before they were logged as typed (floats by
    ``repr``: ``1.0``), so the hash of every existing run stays what it was.
    """
    canonical = json.dumps(_hash_params(spec), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _hash_params(spec: RunSpec) -> dict[str, str]:
    return _params_written(spec, lambda value: repr(float(value)))


def _params_written(spec: RunSpec, real: Callable[[float], str]) -> dict[str, str]:
    """The six params as text; ``real`` writes the float ones (lr, stop_loss)."""
    return {
        "hidden_units": str(spec.hidden_units),
        "lr": real(spec.lr),
        "iterations": str(spec.iterations),
        "seed": str(spec.seed),
        "trace_every": str(spec.trace_every),
        "stop_loss": "null" if spec.stop_loss is None else real(spec.stop_loss),
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
    return _params_written(spec, lambda value: param_text(float(value)))


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
    stale_runs: list[str] = field(default_factory=list)  # marked KILLED on opening (clean_stale=True)


# ---------------------------------------------------------------------------------------------
# The store: which URIs work, opening (creating) a store, the server's health check, and turning
# a store's failures into one line. Every message names the store through ``redact`` (never a
# password) and fits on one line; ``job.fail`` prints it as ``xorexp: <message>`` with exit 2.

SQLITE_PREFIX = "sqlite:///"
SQLITE_MAGIC = b"SQLite format 3\x00"
ARTIFACTS_DIR = "mlartifacts"  # next to an embedded store's file: one folder per experiment
SERVER_TIMEOUT_S = 5.0  # a tracking or database server must answer within this
LOCK_WAIT_S = 3.0  # how long opening waits for another process's write lock on a sqlite store
BUSY_TIMEOUT_MS = 20_000  # sqlite busy timeout of every connection (MLflow's per-session value)
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
DATABRICKS_SCHEMES = ("databricks", "databricks-uc", "uc")
_opened: list[str] = []  # the stores this process opened, last one last (see describe_store_error)


class StoreError(RuntimeError):
    """The tracking store cannot be used: ``str(error)`` is one line naming the store (redacted),
    the cause and what to do."""


_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):(?P<password>[^/?#\s]*)@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<head>[?&][^=&#\s]*(?:password|passwd|pwd|token|secret)[^=&#\s]*=)[^&#\s]*"
)


def redact(uri: str) -> str:
    """``uri`` fit to print: a password in it (``user:password@``, ``?password=...``) becomes ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", str(uri))
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}***", text)


def _scrub(text: str, uri: str) -> str:
    """``text`` on one line, without the password of ``uri`` (also where it appears outside a URI)."""
    line = redact(" ".join(str(text).split()))
    password = urllib.parse.urlsplit(uri).password if "://" in uri else None
    if password:
        for form in {password, urllib.parse.unquote(password)}:
            line = line.replace(form, "***")
    return line if len(line) <= 300 else line[:297] + "..."


def store_kind(uri: str) -> str:
    """sqlite, server (http/https), database (postgresql, mysql, mssql), databricks, file (MLflow's
    file store: a plain path or file:), or the URI's scheme for anything else."""
    if uri == "databricks":
        return "databricks"
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if ":" in uri else ""
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return "sqlite"
    if base in ("http", "https"):
        return "server"
    if base in DATABASE_PORTS:
        return "database"
    if base in DATABRICKS_SCHEMES:
        return "databricks"
    if base == "file" or len(base) <= 1:  # "" or a Windows drive letter: a path
        return "file"
    return base


def resolve_uri(uri: str | None, launch_dir: str | Path) -> str:
    """The tracking URI to use: null means ``sqlite:///<launch_dir>/mlflow.db``.

    A relative sqlite path is made absolute against ``launch_dir``, so no job directory or
    worker process can ever change where runs go.
    """
    launch_dir = Path(launch_dir).resolve()
    if uri is None:
        return f"sqlite:///{launch_dir / DB_NAME}"
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith("sqlite:////"):
        return f"sqlite:///{launch_dir / uri[len(SQLITE_PREFIX) :]}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite store URI; None for an in-memory one."""
    rest = uri[len(SQLITE_PREFIX) :].split("?", 1)[0] if uri.startswith(SQLITE_PREFIX) else ""
    return None if rest in ("", ":memory:") else Path(rest)


def check_uri(uri: str) -> None:
    """Reject, in one line, a URI xorexp cannot log to, before anything touches it."""
    kind = store_kind(uri)
    if kind == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise StoreError(
            f"tracking.uri={redact(uri)} is a path, i.e. MLflow's file store, which MLflow 3 refuses: "
            "use sqlite:///PATH.db, http(s)://HOST:PORT of an MLflow server, or null for ./mlflow.db"
        )
    schemes = _mlflow_schemes()
    if kind not in ("file", "sqlite", "server", "database", "databricks") and not {kind, "*"} & schemes:
        raise StoreError(
            f"tracking.uri={redact(uri)}: unknown kind of store {kind!r}: use sqlite:///PATH.db, "
            "http(s)://HOST:PORT of an MLflow server, a database URI, or null for ./mlflow.db"
        )
    if kind == "databricks" and not (
        os.environ.get("DATABRICKS_HOST") or os.environ.get("DATABRICKS_CONFIG_PROFILE")
    ):
        if not (Path.home() / ".databrickscfg").is_file():
            raise StoreError(
                f"tracking store {redact(uri)}: no Databricks credentials: set DATABRICKS_HOST and "
                "DATABRICKS_TOKEN (or a ~/.databrickscfg profile), or use another tracking.uri"
            )


def _mlflow_schemes() -> set[str]:
    """The URI schemes MLflow has a tracking store for (its own and its plugins')."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):  # MLflow's internals moved: let MLflow judge the URI
        return {"*"}


def check_server(uri: str, experiment: str = "Default") -> None:
    """An http(s) tracking URI must be an MLflow tracking server that answers within seconds.

    Asks MLflow's REST API for ``experiment`` the way MLflow's client does (same credentials: the
    URL's ``user:password@``, MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, same TLS
    settings), once, with a 5 s timeout: MLflow's own client would retry for minutes. Any HTTP
    server answers 200 or 404 somewhere; only MLflow answers this with its JSON.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = redact(uri)
    try:
        response = http_request(
            get_default_host_creds(uri.rstrip("/")),
            "/api/2.0/mlflow/experiments/get-by-name",
            "GET",
            max_retries=0,
            timeout=SERVER_TIMEOUT_S,
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
    except Exception as error:
        raise StoreError(
            f"tracking server {shown} does not answer ({_network_cause(error, uri)}): "
            "start it or fix tracking.uri"
        ) from None
    if response.status_code in (401, 403):
        raise StoreError(
            f"tracking server {shown} refuses the credentials (HTTP {response.status_code}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("experiment" in body or "error_code" in body):
        return
    raise StoreError(
        f"{shown} answers (HTTP {response.status_code}) but is not an MLflow tracking server: "
        "fix the host, port or path in tracking.uri"
    )


def _network_cause(error: BaseException, uri: str) -> str:
    """Why a request failed, in a few words (e.g. "Connection refused", "timed out")."""
    texts = " ".join(str(item) for item in _chain(error))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", texts)
    if found:
        return _scrub(found.group(1).strip(), uri)
    if "timed out" in texts.lower() or "timeout" in texts.lower():
        return "timed out"
    return type(_chain(error)[-1]).__name__


def _check_database(uri: str) -> set[str]:
    """A database URI needs its Python driver and a server that accepts connections; returns the
    database's tables."""
    from sqlalchemy.engine import make_url

    shown = redact(uri)
    try:
        url = make_url(uri)
        url.get_dialect().import_dbapi()
    except ImportError as error:
        raise StoreError(
            f"tracking store {shown}: its Python driver ({error.name or error}) is not installed: "
            "pip install it, or name an installed driver in the URI (dialect+driver://)"
        ) from None
    except Exception as error:
        raise StoreError(
            f"tracking store {shown} is not a usable database URI ({_scrub(error, uri)})"
        ) from None
    if url.host:
        port = url.port or DATABASE_PORTS[url.get_backend_name()]
        try:
            socket.create_connection((url.host, port), timeout=SERVER_TIMEOUT_S).close()
        except OSError as error:
            raise StoreError(
                f"database server of {shown} does not answer at {url.host}:{port} "
                f"({error.strerror or error}): start it or fix tracking.uri"
            ) from None
    return _try_connect(url, uri)


def _try_connect(url, uri: str) -> set[str]:
    """One connection to the database, with a timeout: a database that does not exist or refuses the
    user fails here in one line, not after MLflow's ~100 s of connection retries. Returns its tables."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    timeout = {"connect_timeout": int(SERVER_TIMEOUT_S)} if url.get_backend_name() == "postgresql" else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect() as connection:
                return set(inspect(connection).get_table_names())
        finally:
            engine.dispose()
    except Exception as error:
        text = " ".join(str(getattr(error, "orig", None) or error).split())
        found = re.search(r"FATAL:\s*(.*)", text)
        cause = _scrub(found.group(1) if found else text.split(" (Background on", 1)[0], uri)
        raise StoreError(
            f"database {redact(uri)} refuses the connection ({cause}): create the database, or fix the "
            "user, password or database name in tracking.uri"
        ) from None


def _os_cause(error: OSError) -> str:
    causes = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    return causes.get(error.errno, error.strerror or str(error))


def _probe_directory(directory: Path, uri: str) -> None:
    """Write (and remove) 4 KiB in the store's directory: a full, read-only or forbidden place
    fails here in milliseconds, not after MLflow's 100 s of retries."""
    try:
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".xorexp-probe-", dir=directory)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as error:
        raise StoreError(
            f"tracking store {redact(uri)}: cannot write in {directory} ({_os_cause(error)}): "
            "free space or make it writable, or point tracking.uri elsewhere"
        ) from None


def _check_sqlite_file(path: Path, uri: str) -> None:
    """The file must be a complete sqlite database (an empty file is a store still to create)."""
    shown = redact(uri)
    for _attempt in range(3):
        try:
            size = path.stat().st_size
            with open(path, "rb") as file:
                header = file.read(100)
        except OSError as error:
            raise StoreError(f"tracking store {shown}: cannot read {path} ({_os_cause(error)})") from None
        if size == 0:
            return
        if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
            raise StoreError(
                f"tracking store {shown} is not a sqlite database (damaged, or another kind of file): "
                "move the file away (a new store is made in its place) or point tracking.uri elsewhere"
            )
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        expected = page_size * pages
        if header[24:28] != header[92:96] or size >= expected:
            return
        time.sleep(0.2)  # a checkpoint of another process may be growing the file right now
    raise StoreError(
        f"tracking store {shown} is truncated ({size} of {expected} bytes): restore it from a backup "
        "or move the file away"
    )


def _sqlite_error(error: sqlite3.Error, uri: str) -> StoreError:
    text = str(error)
    shown = redact(uri)
    if "locked" in text or "busy" in text:
        return StoreError(
            f"tracking store {shown} is locked by another process (waited {LOCK_WAIT_S:g} s): let it "
            "finish or stop it, then retry"
        )
    if "not a database" in text or "malformed" in text:
        return StoreError(
            f"tracking store {shown} is damaged ({text}): restore it from a backup or move it away"
        )
    return StoreError(f"tracking store {shown} cannot be opened ({text}): fix tracking.uri or its file")


def _sqlite_schema(path: Path, uri: str, *, write: bool) -> tuple[set[str], str | None]:
    """The tables and the schema revision of a sqlite store; with ``write``, also that its write
    lock can be had within LOCK_WAIT_S (a store locked for longer fails in one line)."""
    mode = "rw" if write else "ro"
    try:
        connection = sqlite3.connect(
            f"file:{urllib.parse.quote(str(path))}?mode={mode}",
            uri=True,
            timeout=LOCK_WAIT_S,
            isolation_level=None,
        )
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {row[0] for row in rows}
            revision = None
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
            if write:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise _sqlite_error(error, uri) from None
    return tables, revision


def _schema_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _schema_ready(tables: set[str], revision: str | None) -> bool:
    return (
        {"experiments", "runs"} <= tables
        and revision == _schema_revision()
        and not any(t.startswith("_alembic_tmp_") for t in tables)
    )


@contextlib.contextmanager
def _quiet_migrations():
    """MLflow and alembic log each step of a schema creation on stderr: xorexp's output has no use
    for it."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _build_sqlite_store(target: Path, *, locked: bool = False) -> None:
    """A complete MLflow store (every table, latest schema, experiment 0, WAL journal) at ``target``.

    Made in a temporary file of the same directory and linked into place (atomic, never over an
    existing file): any number of processes may do this at once, one wins, the others find a
    complete store; nobody ever sees a half-made schema.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = target.parent / f".{target.name}.{os.getpid()}-{os.urandom(4).hex()}.new"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask's usual mode
    tmp_uri = f"{SQLITE_PREFIX}{tmp}"
    try:
        with _quiet_migrations():
            SqlAlchemyStore(tmp_uri, (target.parent / ARTIFACTS_DIR).as_uri())
        engine = SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        if engine is not None:
            engine.dispose()
        connection = sqlite3.connect(tmp, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")  # persists in the file
        finally:
            connection.close()  # the last connection: sqlite checkpoints and removes the -wal file
        try:
            os.link(tmp, target)
        except FileExistsError:  # another process made it first: use theirs
            pass
        except OSError:  # a file system without hard links: rename, never over another's store
            with contextlib.nullcontext() if locked else _directory_lock(target.parent):
                if not target.exists():
                    os.replace(tmp, target)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _finish_migration(path: Path) -> None:
    """Run MLflow's schema migrations on a store whose migration was interrupted."""
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"{SQLITE_PREFIX}{path}")
    try:
        with _quiet_migrations():
            _upgrade_db(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _directory_lock(directory: Path):
    """An exclusive fcntl lock on the store's directory (no lock file left behind)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _repair_sqlite_store(path: Path, uri: str) -> None:
    """An existing file without a complete MLflow schema: an empty file gets one; a leftover copy of
    an interrupted migration (``_alembic_tmp_<table>`` next to ``<table>``) is dropped. A store of
    an older MLflow, or another program's database, is left alone (StoreError)."""
    shown = redact(uri)
    with _directory_lock(path.parent):
        tables, revision = _sqlite_schema(path, uri, write=True)
        if _schema_ready(tables, revision):
            return
        if not tables:
            path.unlink()  # an empty file: nothing to lose
            _build_sqlite_store(path, locked=True)
            return
        if "alembic_version" not in tables:
            raise StoreError(
                f"tracking store {shown}: {path} is a sqlite database but not an MLflow store: "
                "point tracking.uri elsewhere"
            )
        prefix = "_alembic_tmp_"
        leftovers = [t for t in tables if t.startswith(prefix) and t[len(prefix) :] in tables]
        if leftovers:
            connection = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
            try:
                for table in leftovers:
                    connection.execute(f'DROP TABLE "{table}"')
            finally:
                connection.close()
            log.warning("store %s: dropped %s left by an interrupted migration", shown, ", ".join(leftovers))
            tables -= set(leftovers)
            if revision != _schema_revision():  # finish the interrupted migration
                _finish_migration(path)
                tables, revision = _sqlite_schema(path, uri, write=True)
        if _schema_ready(tables, revision):
            return
        raise StoreError(
            f"tracking store {shown} has schema revision {revision}, this MLflow needs "
            f"{_schema_revision()}: back it up, then run: mlflow db upgrade {shown}"
        )


def _set_busy_timeout(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _wait_when_busy() -> None:
    """Every sqlite connection of SQLAlchemy (MLflow's included) waits up to BUSY_TIMEOUT_MS for a
    lock instead of failing at once (MLflow sets it per session, not on the connections it uses to
    inspect and migrate the schema)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _set_busy_timeout):
        event.listen(Engine, "connect", _set_busy_timeout)


def _use_wal(path: Path) -> None:
    """Switch a store made without WAL (before xorexp set it) to WAL, if nobody else has it open.

    Only through sqlite: opening and closing the file otherwise would drop this process's sqlite
    locks on it (POSIX locks belong to the process)."""
    try:
        connection = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.Error:  # busy: another time
        pass


def _engine_open(uri: str) -> bool:
    """Whether MLflow has an engine (pooled sqlite connections) on this store in this process."""
    module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    return module is not None and uri in module.SqlAlchemyStore._engine_map


def _prepare_sqlite(uri: str, *, create: bool) -> None:
    """Checks (and, with ``create``, makes) an embedded store before MLflow touches it."""
    path = sqlite_path(uri)
    if path is None:
        return
    shown = redact(uri)
    if path.is_dir():
        raise StoreError(f"tracking store {shown}: {path} is a directory: name a file in tracking.uri")
    if not path.exists():
        if not create:
            raise StoreError(
                f"no store at {shown}: run a command that logs runs there first, or fix the store URI"
            )
        _probe_directory(path.parent, uri)
        with _quiet_migrations():
            _build_sqlite_store(path)
    elif create:
        _probe_directory(path.parent, uri)
    if not _engine_open(uri):  # checked when this process opened it first
        _check_sqlite_file(path, uri)
    tables, revision = _sqlite_schema(path, uri, write=create)
    if not _schema_ready(tables, revision):
        if not create:
            raise StoreError(f"tracking store {shown} is not a complete MLflow store: fix the store URI")
        _repair_sqlite_store(path, uri)
    if create:
        _use_wal(path)


def check_store(uri: str, *, create: bool = True, experiment: str = "Default") -> None:
    """Every check of ``open_store`` (and, with ``create``, the making of a new embedded store),
    failing within seconds with a StoreError: the URI's kind, a server's health, a database's
    driver and server, a sqlite file's directory (writable, not full), header, lock and schema."""
    # MLflow draws a progress bar on stderr per artifact download (e.g. the sweep's best run's params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_uri(uri)
    kind = store_kind(uri)
    if kind == "server":
        check_server(uri, experiment)
        # MLflow prints two "View run ..." lines per ended run to stdout with a server: a sweep's
        # summary would drown in them. Its HTTP retries (7, 120 s
        # timeout) would make a server that dies mid-sweep hang each call for minutes. A user's own
        # settings of these variables win.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if kind in ("database", "sqlite"):
        # MLflow logs each failed database call with its traceback on stderr, then raises it: xorexp
        # reports what it raises in one line (describe_store_error), the log would bury that line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if kind == "database":
        tables = _check_database(uri)
        if not create and "experiments" not in tables:  # MLflow would create its schema there
            raise StoreError(
                f"no store at {redact(uri)} (the database has no MLflow tables): run a command that logs "
                "runs there first, or fix the store URI"
            )
    elif kind == "sqlite":
        _wait_when_busy()
        _prepare_sqlite(uri, create=create)
    if uri in _opened:
        _opened.remove(uri)
    _opened.append(uri)


def open_client(uri: str, *, create: bool = False) -> MlflowClient:
    """An MlflowClient on a checked store (``check_store``), for commands that look runs up by id.
    Errors of its calls turn into one line with ``describe_store_error``."""
    check_store(uri, create=create)
    return MlflowClient(tracking_uri=uri)


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
            or f"tracking store {redact(uri)} cannot be used ({_cause_text(error, uri)})"
        ) from None
    return store


def _open_experiment(uri: str, experiment: str, *, create: bool) -> Store:
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


def _cause_text(error: BaseException, uri: str) -> str:
    """The innermost cause of ``error`` on one line, without secrets."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).split("\n", 1)[0] or type(error).__name__
    return _scrub(text, uri)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def describe_store_error(error: BaseException, uri: str | None = None) -> str | None:
    """One line naming the store and the cause when ``error`` (raised by a call on a store) is a
    store problem: disk full, locked, read-only, damaged, permission, a server that does not answer.
    None when it is not a store problem. ``uri``: the store; default, the last one this process
    opened."""
    if uri is None:
        uri = _opened[-1] if _opened else "(tracking store)"
    shown = redact(uri)
    chain = _chain(error)
    for item in chain:
        if isinstance(item, StoreError):
            return str(item)
    texts = " | ".join(str(item) for item in chain).lower()
    sqlite_problems = (
        ("database or disk is full", "its disk is full", "free space, then run again"),
        ("disk is full", "its disk is full", "free space, then run again"),
        ("database is locked", "it is locked by another process", "let that process finish, then run again"),
        ("readonly database", "it is read-only", "make it writable"),
        ("read-only file system", "it is read-only", "make it writable"),
        ("unable to open database file", "its file cannot be opened", "check the file and its directory"),
        ("disk i/o error", "a disk I/O error occurred", "check the disk"),
        ("file is not a database", "it is damaged", "restore it from a backup"),
        ("malformed", "it is damaged", "restore it from a backup"),
    )
    for needle, cause, advice in sqlite_problems:
        if needle in texts:
            return f"tracking store {shown} failed: {cause}: {advice}"
    for item in chain:
        if isinstance(item, OSError) and item.errno in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EROFS,
            errno.EACCES,
            errno.EPERM,
            errno.EIO,
        ):
            where = f" ({item.filename})" if item.filename else ""
            return (
                f"tracking store {shown} failed writing artifacts: {_os_cause(item)}{where}: "
                "fix it, then run again"
            )
    if store_kind(uri) == "server":
        connection_signs = ("connection", "max retries", "timed out", "timeout", "api request to")
        if any(isinstance(item, (ConnectionError, TimeoutError)) for item in chain) or any(
            sign in texts for sign in connection_signs
        ):
            return f"tracking server {shown} does not answer: start it, then run again"
    return None


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
