"""Naming a tracking store: which URIs xorexp can log to, where a null URI points, how a store is
shown in a message (never with its password), and a store's failures turned into one line.

Imports no MLflow (only to list MLflow's URI schemes, when asked): the command line resolves and
checks a URI, and reports a failure, before anything heavy is loaded. Every message names the store
through ``redact`` and fits on one line; ``errors.fail`` prints it as ``xorexp: <message>``.
"""

from __future__ import annotations

import errno
import os
import re
import urllib.parse
from pathlib import Path

DB_NAME = "mlflow.db"  # the embedded store's file in the launch directory
SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_DIR = "mlartifacts"  # next to an embedded store's file: one folder per experiment
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


def scrub(text: str, uri: str) -> str:
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
    from xorexp.compat.mlflow import tracking_schemes

    return tracking_schemes()


def os_cause(error: OSError) -> str:
    causes = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    return causes.get(error.errno, error.strerror or str(error))


def remember_opened(uri: str) -> None:
    """``uri`` is the store this process works on now: ``describe_store_error`` names it by default."""
    if uri in _opened:
        _opened.remove(uri)
    _opened.append(uri)


def cause_text(error: BaseException, uri: str) -> str:
    """The innermost cause of ``error`` on one line, without secrets."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).split("\n", 1)[0] or type(error).__name__
    return scrub(text, uri)


def error_chain(error: BaseException) -> list[BaseException]:
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
    chain = error_chain(error)
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
                f"tracking store {shown} failed writing artifacts: {os_cause(item)}{where}: "
                "fix it, then run again"
            )
    if store_kind(uri) == "server":
        connection_signs = ("connection", "max retries", "timed out", "timeout", "api request to")
        if any(isinstance(item, (ConnectionError, TimeoutError)) for item in chain) or any(
            sign in texts for sign in connection_signs
        ):
            return f"tracking server {shown} does not answer: start it, then run again"
    return None
