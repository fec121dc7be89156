"""Where a multirun's parent MLflow run is recorded, so every job and plugin can find it.

The record is a small JSON file in the sweep directory (``hydra.sweep.dir``), which every job's
config knows and every launcher shares, in-process or not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "xorexp_parent_run.json"


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    tracking_uri: str  # absolute: jobs in any process log to the same store
    experiment_id: str


def write(sweep_dir: str | Path, parent: ParentRun) -> None:
    path = Path(sweep_dir) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(parent)))


def read(sweep_dir: str | Path) -> ParentRun | None:
    path = Path(sweep_dir) / FILE_NAME
    if not path.is_file():
        return None
    return ParentRun(**json.loads(path.read_text()))
