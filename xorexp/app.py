"""The Hydra entry point: ``python -m xorexp`` (one run) or ``python -m xorexp -m ...`` (a sweep)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from xorexp.config import ConfigError, register, to_run_spec
from xorexp.job import fail, run_job

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        spec = to_run_spec(cfg)
    except ConfigError as error:
        fail(error)
    return run_job(cfg, spec)
