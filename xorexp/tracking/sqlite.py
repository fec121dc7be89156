"""The embedded store, a sqlite file: checked, created and repaired before MLflow opens it.

A new store is built complete (every table, latest schema, WAL journal) in a temporary file of the
same directory and hard-linked into place, so commands started at once never see a half-made schema;
a leftover of an interrupted migration is dropped under a lock on the directory. MLflow's schema
migrations (seconds) run once per schema revision on a machine: the first store built keeps an
empty copy in the user's cache (``XOREXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/xorexp`` or
``~/.cache/xorexp``) that later new stores start from. A file that is not
a database, truncated, locked for too long or of another MLflow schema is refused in one line, and a
directory that is read-only or full fails a 4 KiB probe in milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from pathlib import Path

from xorexp.compat import mlflow as compat_mlflow
from xorexp.tracking.uri import ARTIFACTS_DIR, SQLITE_PREFIX, StoreError, os_cause, redact, sqlite_path

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
LOCK_WAIT_S = 3.0  # how long opening waits for another process's write lock on a sqlite store
BUSY_TIMEOUT_MS = 20_000  # sqlite busy timeout of every connection (MLflow's per-session value)
CACHE_DIR_ENV = "XOREXP_CACHE_DIR"
NEW_STORE_BYTES = 3 * 2**19  # free space a new store needs: its empty schema (~1 MB) and first runs


def _probe_directory(directory: Path, uri: str, *, new_store: bool = False) -> None:
    """Write (and remove) 4 KiB in the store's directory: a full, read-only or forbidden place
    fails here in milliseconds, not after MLflow's 100 s of retries. A new store also needs room
    for its empty schema (about 1 MB) and a few runs: NEW_STORE_BYTES free."""
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
        free = shutil.disk_usage(directory).free
        if new_store and free < NEW_STORE_BYTES:
            raise StoreError(
                f"tracking store {redact(uri)}: only {free // 1024} kB free in {directory}, a new store "
                f"needs {NEW_STORE_BYTES / 2**20:g} MB: free space, or point tracking.uri elsewhere"
            )
    except OSError as error:
        raise StoreError(
            f"tracking store {redact(uri)}: cannot write in {directory} ({os_cause(error)}): "
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
            raise StoreError(f"tracking store {shown}: cannot read {path} ({os_cause(error)})") from None
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
    return compat_mlflow.latest_schema_revision()


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
        from_template = _copy_template(tmp)
        with _quiet_migrations():  # MLflow migrates an empty file, adds experiment 0 to a template's
            SqlAlchemyStore(tmp_uri, (target.parent / ARTIFACTS_DIR).as_uri())
        compat_mlflow.dispose_engine(tmp_uri)
        connection = sqlite3.connect(tmp, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")  # persists in the file
        finally:
            connection.close()  # the last connection: sqlite checkpoints and removes the -wal file
        if not from_template:
            _save_template(tmp)
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


def _template_path() -> Path:
    """Where this machine keeps an empty store of this MLflow's schema revision."""
    base = os.environ.get(CACHE_DIR_ENV)
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "xorexp")
    return Path(base) / f"empty-store-{_schema_revision()}.db"


def _copy_template(target: Path) -> bool:
    """Fill the new file ``target`` from the cached empty store, if there is a sound one (this
    schema revision, every table, no experiment); False leaves ``target`` empty (MLflow migrates)."""
    try:
        template = _template_path()
        connection = sqlite3.connect(f"{template.as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            found = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {row[0] for row in found}
            [revision] = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = connection.execute("SELECT count(*) FROM experiments").fetchone()[0]
        finally:
            connection.close()
        if not _schema_ready(tables, revision) or experiments:
            return False
        with open(template, "rb") as source, open(target, "wb") as copy:
            copy.write(source.read())
    except (sqlite3.Error, OSError, RuntimeError, TypeError, ValueError):  # none, unusable, no home: migrate
        with contextlib.suppress(OSError):
            target.write_bytes(b"")
        return False
    return True


def _save_template(store: Path) -> None:
    """Keep an empty copy of the freshly migrated ``store`` (its experiments removed) as this
    machine's template; best effort: a cache that cannot be written is left alone."""
    try:
        template = _template_path()  # RuntimeError: no home directory to find a cache in
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}-{os.urandom(4).hex()}")
        try:
            tmp.write_bytes(store.read_bytes())
            connection = sqlite3.connect(tmp, isolation_level=None)
            try:
                connection.execute("DELETE FROM experiment_tags")
                connection.execute("DELETE FROM experiments")
            finally:
                connection.close()
            os.replace(tmp, template)  # whole or not at all, whoever writes it at the same time
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except (sqlite3.Error, OSError, RuntimeError):
        log.debug("could not keep a template of new stores", exc_info=True)


def _finish_migration(path: Path) -> None:
    """Run MLflow's schema migrations on a store whose migration was interrupted."""
    with _quiet_migrations():
        compat_mlflow.upgrade_schema(f"{SQLITE_PREFIX}{path}")


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


def _configure_connection(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # with the WAL journal a commit need not wait for the disk (it syncs at checkpoints): the
        # store stays consistent, and only a power cut (not a crash) may lose its last commits
        if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            dbapi_connection.execute("PRAGMA synchronous = NORMAL")


def wait_when_busy() -> None:
    """Every sqlite connection of SQLAlchemy (MLflow's included) waits up to BUSY_TIMEOUT_MS for a
    lock instead of failing at once (MLflow sets it per session, not on the connections it uses to
    inspect and migrate the schema)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _configure_connection):
        event.listen(Engine, "connect", _configure_connection)


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
    return compat_mlflow.engine_open(uri)


def prepare(uri: str, *, create: bool) -> None:
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
        _probe_directory(path.parent, uri, new_store=True)
        with _quiet_migrations(), compat_mlflow.engine_retries(1):  # a failure is one line, not 100 s
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
