"""Reading runs back from an opened store: by id, by config hash, a sweep's children and its latest
parent, a run's loss trace and its artifacts (downloaded to a temporary directory that is removed
afterwards). Nothing here writes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xorexp.params import config_hash
from xorexp.tracking.tags import ROLE_SWEEP, TAG_HASH, TAG_JOB, TAG_PARENT, TAG_ROLE
from xorexp.train import RunSpec

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

PAGE_SIZE = 1000  # runs per search request (MLflow's maximum is 50,000; servers prefer fewer)


def get_run(store: Store, run_id: str) -> Any:
    """The run ``run_id`` (an ``mlflow.entities.Run``); MLflow's error when there is none."""
    return store.client.get_run(run_id)


def get_runs(store: Store, run_ids: list[str]) -> list:
    return [store.client.get_run(run_id) for run_id in run_ids]


def _newest_run(store: Store, filter_string: str) -> Any:
    runs = store.client.search_runs(
        [store.experiment_id],
        filter_string=filter_string,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def _newest(store: Store, filter_string: str) -> str | None:
    run = _newest_run(store, filter_string)
    return run.info.run_id if run is not None else None


def find_finished(store: Store, spec: RunSpec) -> str | None:
    """Id of the newest FINISHED run with the config hash of ``spec``, if any."""
    return _newest(store, f"tags.`{TAG_HASH}` = '{config_hash(spec)}' and attributes.status = 'FINISHED'")


def job_run(store: Store, parent_run_id: str, job_num: int) -> Any:
    """The newest run of job ``job_num`` of the sweep ``parent_run_id`` (an mlflow Run), None if none."""
    return _newest_run(store, f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_JOB}` = '{job_num}'")


def latest_sweep(store: Store) -> str | None:
    """Id of the experiment's newest sweep parent run, if any."""
    return _newest(store, f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'")


def search_all(store: Store, filter_string: str) -> list:
    """Every run of the store's experiment that matches ``filter_string``, all pages."""
    runs, token = [], None
    while True:
        page = store.client.search_runs(
            [store.experiment_id], filter_string=filter_string, max_results=PAGE_SIZE, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def sweep_children(store: Store, parent_run_id: str) -> list:
    """Every run whose parent is ``parent_run_id``: its run id, status, params, tags and latest
    metrics (mlflow Run objects)."""
    return search_all(store, f"tags.`{TAG_PARENT}` = '{parent_run_id}'")


def running_children(store: Store, parent_run_id: str) -> list:
    """The runs of ``parent_run_id`` that are still RUNNING (mlflow Run objects)."""
    return search_all(store, f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'")


def sweeps(store: Store) -> list:
    """Every sweep parent run of the experiment (mlflow Run objects), in no particular order."""
    return search_all(store, f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'")


def loss_history(store: Store, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's logged loss trace, in step order."""
    history = store.client.get_metric_history(run_id, "loss")
    history.sort(key=lambda m: m.step)
    return np.array([m.step for m in history]), np.array([m.value for m in history])


def artifact_paths(store: Store, run_id: str, folder: str) -> list[str]:
    """The paths of the artifacts (files and folders) directly in ``folder`` of a run."""
    return [item.path for item in store.client.list_artifacts(run_id, folder)]


@contextlib.contextmanager
def downloaded(store: Store, run_id: str, path: str) -> Iterator[Path | None]:
    """The artifact ``path`` of a run as a local file (or folder) while inside; None when the run
    has no such artifact. The download is removed on leaving."""
    with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
        try:
            local = store.client.download_artifacts(run_id, path, tmp)
        except Exception:  # absent (MLflow raises its own or an OSError, depending on the store)
            local = None
        yield None if local is None else Path(local)


def read_text_artifact(store: Store, run_id: str, path: str) -> str | None:
    """The text of a run's artifact ``path``; None when absent."""
    with downloaded(store, run_id, path) as local:
        return None if local is None else local.read_text()
