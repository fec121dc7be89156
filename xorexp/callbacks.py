"""The Hydra callback that makes a multirun one tracked sweep (see ``xorexp.sweep``).

Hydra turns a callback's ``Exception`` into a warning; nothing here may fail that way: a failure
becomes ``errors.Abort``, which stops the command with one line and a non-zero status.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xorexp import sweep
from xorexp.errors import Abort

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep.Sweep.start(config)
        except Exception as error:
            log.error("the sweep could not start", exc_info=True)
            raise Abort(f"the sweep could not start: {type(error).__name__}: {error}") from error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        running = sweep.current()
        if running is None:
            return
        try:
            running.finish()
        except Exception as error:
            log.error("the sweep could not finish", exc_info=True)
            raise Abort(f"the sweep could not finish: {type(error).__name__}: {error}") from error
