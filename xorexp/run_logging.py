"""A training run logged with what it carries beyond its values: its provenance (commit, versions,
machine, command as tags; the diff of a dirty checkout), its trained parameters
(``model/params.npz``) and, for a run outside a sweep, its MLflow model. The values and files go
through ``xorexp.tracking.writing``; this module adds what the Model layer knows.

MLflow's model code (and pandas) is imported when a run's results are logged, not with this module.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from xorexp import provenance
from xorexp.tracking import reading, writing
from xorexp.tracking.tags import MODEL_NAME, PARAMS_ARTIFACT, TAG_GIT_COMMIT, TAG_PARENT
from xorexp.train import RunResult, RunSpec

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

log = logging.getLogger(__name__)


def provenance_tags() -> dict[str, str]:
    """The tags saying where a run's (or a sweep's) numbers came from: commit, versions, machine."""
    commit = provenance.git_commit()
    return {**({TAG_GIT_COMMIT: commit} if commit else {}), **provenance.tags()}


def start_run(
    store: Store,
    spec: RunSpec,
    *,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    with_params: bool = True,
) -> str:
    """``writing.start_run`` with the run's provenance tags; returns the run's id."""
    tags = {**provenance_tags(), **(tags or {})}
    return writing.start_run(store, spec, tags=tags, parent_run_id=parent_run_id, with_params=with_params)


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
    """``writing.log_result`` with ``model/params.npz``, the diff of a dirty checkout
    (``provenance/git_diff.patch``) and, with ``model``, the rest of the MLflow model in ``model/``.

    ``model`` None: the model only for a run that is not part of a sweep (no parent run; costs one
    read, pass it explicitly to save that).
    """
    from xorexp import pyfunc

    params_file = pyfunc.params_npz(result)
    if model is None:
        model = TAG_PARENT not in reading.get_run(store, run_id).data.tags
    with contextlib.ExitStack() as stack:
        model_dirs = {}
        if model:  # a sweep's runs have none, and no temporary folder for one
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="xorexp-model-"))
            try:
                model_dirs[MODEL_NAME] = pyfunc.save_model(Path(tmp), run_id, params_file)
            except Exception:  # the run's results matter more than its packaged model
                log.warning("run %s: could not save its MLflow model", run_id, exc_info=True)
        writing.log_result(
            store,
            run_id,
            result,
            blobs={PARAMS_ARTIFACT: params_file, **(blobs or {})},
            files={**provenance.artifacts(), **(files or {})},
            dirs={**(dirs or {}), **model_dirs},
            params_logged=params_logged,
            resumed=resumed,
        )


def start_parent(store: Store, name: str, tags: Mapping[str, str]) -> str:
    """``writing.start_parent`` with the sweep's provenance tags; returns the parent run's id."""
    return writing.start_parent(store, name, {**provenance_tags(), **tags})
