"""MLflow's internals (developed on 3.17-3.18), each beside the public path it falls back to."""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.resources
import logging
import subprocess
import sys
from collections.abc import Iterator, Mapping

from xorexp.compat import loaded, private_ok

log = logging.getLogger(__name__)

_SQL_STORE = "mlflow.store.tracking.sqlalchemy_store"
# the class attribute where MLflow's SQL stores share their engines, by MLflow version
_ENGINE_MAPS = ("_engine_map", "_db_uri_sql_alchemy_engine_map")  # >= 3.8, before 3.8


def _engine_map() -> dict | None:
    """MLflow's engines by store URI in this process, None if MLflow keeps them elsewhere."""
    module = loaded(_SQL_STORE)
    if module is None:
        return {}
    if not private_ok("mlflow"):
        return None
    for name in _ENGINE_MAPS:
        engines = getattr(module.SqlAlchemyStore, name, None)
        if isinstance(engines, dict):
            return engines
    return None


def sql_engines() -> list:
    """The SQLAlchemy engines MLflow's SQL stores opened in this process, to be closed before a fork
    and at exit. Replaces a scan of all of Python's objects (``gc.get_objects``), its fallback."""
    engines = _engine_map()
    if engines is not None:
        return list(engines.values())
    if loaded("sqlalchemy") is None:
        return []
    from sqlalchemy.engine import Engine

    return [item for item in gc.get_objects() if isinstance(item, Engine)]


def engine_open(uri: str) -> bool:
    """Whether MLflow holds an engine on ``uri`` in this process (False when it cannot tell: the
    caller then checks the store's file again, which only costs time)."""
    engines = _engine_map()
    return bool(engines) and uri in engines


def dispose_engine(uri: str) -> None:
    """Close and forget MLflow's engine on ``uri`` (a store file about to be renamed)."""
    engines = _engine_map()
    if engines is not None:
        engine = engines.pop(uri, None)
        if engine is not None:
            engine.dispose()
        return
    for engine in sql_engines():  # fallback: every engine on that URI (MLflow makes a new one)
        if str(engine.url) == uri:
            engine.dispose()


@functools.lru_cache(maxsize=8)
def _own_engine(uri: str):
    from mlflow.store.db.utils import create_sqlalchemy_engine

    return create_sqlalchemy_engine(uri)


def shared_engine(uri: str):
    """MLflow's own pooled engine on ``uri`` (``SqlAlchemyStore._get_or_create_engine``): xorexp's
    direct SQL writes share its connections instead of a second pool; fallback: an engine of its own
    made as MLflow makes them (``create_sqlalchemy_engine``)."""
    module = loaded(_SQL_STORE)
    get = getattr(getattr(module, "SqlAlchemyStore", None), "_get_or_create_engine", None)
    if callable(get) and private_ok("mlflow"):
        return get(uri)
    return _own_engine(uri)


def validated_batch(metrics: list, params: list, tags: list) -> tuple[list, list, list] | None:
    """MLflow's checks of a ``log_batch`` (``mlflow.utils.validation._validate_batch_log_data``),
    applied by the direct SQL writer; None when MLflow has no such function here: the caller then
    writes the run through ``MlflowClient`` (the public path, which validates the same)."""
    if not private_ok("mlflow"):
        return None
    try:
        from mlflow.utils.validation import _validate_batch_log_data
    except ImportError:
        return None
    checked = _validate_batch_log_data(metrics, params, tags)
    if not (isinstance(checked, tuple) and len(checked) == 3):
        return None
    return checked


def _migrations_dir() -> str:
    return str(importlib.resources.files("mlflow.store") / "db_migrations")


def latest_schema_revision() -> str:
    """The schema revision of a store this MLflow makes (``_get_latest_schema_revision``); fallback:
    alembic's own reading of MLflow's migration scripts."""
    try:
        if not private_ok("mlflow"):
            raise ImportError("internals off")
        from mlflow.store.db.utils import _get_latest_schema_revision
    except ImportError:
        from alembic.script import ScriptDirectory

        return ScriptDirectory(_migrations_dir()).get_current_head()
    return _get_latest_schema_revision()


def upgrade_schema(uri: str) -> None:
    """Finish an interrupted schema migration of the store at ``uri`` in this process
    (``_upgrade_db``, ~1 s); fallback: the ``mlflow db upgrade`` command (~3 s: a new interpreter)."""
    try:
        if not private_ok("mlflow"):
            raise ImportError("internals off")
        from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine
    except ImportError:
        _upgrade_by_command(uri)
        return
    engine = create_sqlalchemy_engine(uri)
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()


def _upgrade_by_command(uri: str) -> None:
    command = [sys.executable, "-m", "mlflow", "db", "upgrade", uri]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"mlflow db upgrade failed: {last}")


def tracking_schemes() -> set[str]:
    """URI schemes MLflow has a tracking store for, its plugins' included (its store registry); fallback
    ``{"*"}``: any scheme, and MLflow itself says whether it knows the URI."""
    try:
        if not private_ok("mlflow"):
            raise ImportError("internals off")
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):
        return {"*"}


@contextlib.contextmanager
def engine_retries(count: int) -> Iterator[None]:
    """At most ``count`` attempts in MLflow's engine creation (``create_sqlalchemy_engine_with_retry``
    retries for ~100 s with a warning each time); a no-op where MLflow has no such setting."""
    module = loaded("mlflow.store.db.utils")
    if module is None:
        import mlflow.store.db.utils as module
    saved = getattr(module, "MAX_RETRY_COUNT", None)
    if not isinstance(saved, int):
        yield
        return
    module.MAX_RETRY_COUNT = count
    try:
        yield
    finally:
        module.MAX_RETRY_COUNT = saved


def internals() -> Mapping[str, bool]:
    """Which of the internals above this MLflow has (the contract test and ``--version`` read it)."""
    module = sys.modules.get(_SQL_STORE)
    if module is None:
        import mlflow.store.tracking.sqlalchemy_store as module
    import mlflow.store.db.utils as db_utils
    import mlflow.utils.validation as validation

    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        registry = hasattr(_tracking_store_registry, "_registry")
    except ImportError:
        registry = False
    return {
        "engine map": any(isinstance(getattr(module.SqlAlchemyStore, n, None), dict) for n in _ENGINE_MAPS),
        "shared engine": callable(getattr(module.SqlAlchemyStore, "_get_or_create_engine", None)),
        "batch validation": callable(getattr(validation, "_validate_batch_log_data", None)),
        "schema revision": callable(getattr(db_utils, "_get_latest_schema_revision", None)),
        "schema upgrade": callable(getattr(db_utils, "_upgrade_db", None)),
        "store registry": registry,
        "engine retries": isinstance(getattr(db_utils, "MAX_RETRY_COUNT", None), int),
    }
