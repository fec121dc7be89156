"""Health checks of a store's server before MLflow touches it: an http(s) URI must be an MLflow
tracking server that answers, a database URI needs its driver, a server that accepts connections and
a database that exists. Each check fails within seconds in one line (``StoreError``), where MLflow's
own client would retry for minutes.
"""

from __future__ import annotations

import re
import socket

from xorexp.tracking.uri import DATABASE_PORTS, StoreError, error_chain, redact, scrub

SERVER_TIMEOUT_S = 5.0  # a tracking or database server must answer within this


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
    texts = " ".join(str(item) for item in error_chain(error))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", texts)
    if found:
        return scrub(found.group(1).strip(), uri)
    if "timed out" in texts.lower() or "timeout" in texts.lower():
        return "timed out"
    return type(error_chain(error)[-1]).__name__


def check_database(uri: str) -> set[str]:
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
            f"tracking store {shown} is not a usable database URI ({scrub(error, uri)})"
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
        cause = scrub(found.group(1) if found else text.split(" (Background on", 1)[0], uri)
        raise StoreError(
            f"database {redact(uri)} refuses the connection ({cause}): create the database, or fix the "
            "user, password or database name in tracking.uri"
        ) from None
