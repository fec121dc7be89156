"""Hydra callbacks: check a whole sweep and open the store once, before any job runs."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xorexp.app import fail, store_for
from xorexp.config import ConfigError, check_sweep


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning; SystemExit (from fail) does stop the sweep
        try:
            check_sweep(config, list(config.hydra.overrides.task))
        except ConfigError as error:
            fail(error)
        # a new store is created and migrated here, once, never by concurrent jobs
        store_for(config.tracking.uri, config.tracking.experiment, config.hydra.runtime.cwd)
