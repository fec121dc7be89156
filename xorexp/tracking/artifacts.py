"""A run's files as its artifacts, in one upload: texts, bytes and local folders, written in place
when the run's artifact folder is on this machine, else uploaded (to a server: a request per file,
at once, on this process's request threads).

MLflow is imported when a run's files are written, not when this module is.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from xorexp.tracking import reading
from xorexp.tracking.uri import store_kind

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

UPLOAD_THREADS = 8  # a server's run: requests of one process in flight at once, at most
_ARTIFACT_URIS_KEPT = 1024
_artifact_uris: OrderedDict[str, str] = OrderedDict()  # run id -> artifact URI, of runs started here


def remember_artifact_uri(run_id: str, artifact_uri: str) -> None:
    """Spares the read of the run that finding its artifact location would cost at its upload."""
    _artifact_uris[run_id] = artifact_uri
    while len(_artifact_uris) > _ARTIFACT_URIS_KEPT:
        _artifact_uris.popitem(last=False)


@functools.cache
def request_pool() -> ThreadPoolExecutor:
    """This process's threads for a server's requests (made on first use, bounded)."""
    return ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="xorexp-request")


def log_files(
    store: Store,
    run_id: str,
    *,
    files: Mapping[str, str] | None = None,
    blobs: Mapping[str, bytes] | None = None,
    dirs: Mapping[str, Path] | None = None,
) -> None:
    """Texts, bytes and local folders as artifacts of a run, by artifact path, in one upload (to a
    server: its files at once, see ``_upload``)."""
    if not (files or blobs or dirs):
        return
    local = _local_artifact_dir(store, run_id)
    if local is not None:  # the run's artifact folder is on this machine: written in place
        _write_tree(local, files, blobs, dirs)
        return
    with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
        _write_tree(Path(tmp), files, blobs, dirs)
        _upload(store, run_id, Path(tmp))


def _write_tree(root: Path, files, blobs, dirs) -> None:
    """The artifacts as files under ``root`` (as MLflow copies them: contents, not permissions)."""
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, data in (blobs or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
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
            uploads.append(request_pool().submit(repo.log_artifact, str(path), folder))
    _, pending = wait(uploads, return_when=FIRST_EXCEPTION)
    for future in pending:
        future.cancel()
    wait(pending)
    for future in uploads:
        if not future.cancelled():
            future.result()  # the first failure, if any
