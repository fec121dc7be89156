"""The Hydra callback that makes a multirun one tracked sweep (see ``xorexp.sweep``), and checks a
single run before Hydra makes its job dir (a refused command creates nothing).

Hydra turns a callback's ``Exception`` into a warning; nothing here may fail that way: a failure
becomes ``errors.Abort``, which stops the command with one line and a non-zero status.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xorexp import compat, sweep
from xorexp.config import to_run_spec
from xorexp.errors import Abort, ConfigError, fail
from xorexp.tracking.store import check_store
from xorexp.tracking.uri import StoreError, resolve_uri

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run's values and store, checked before its job dir exists."""
        try:
            to_run_spec(config)
            check_store(resolve_uri(config.tracking.uri, str(config.hydra.runtime.cwd)))
        except (ConfigError, StoreError) as error:
            fail(error)
        except Exception as error:
            log.error("the run could not start", exc_info=True)
            line = compat.unsupported(error) or f"the run could not start: {type(error).__name__}: {error}"
            raise Abort(line) from error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep.Sweep.start(config)
        except Exception as error:
            log.error("the sweep could not start", exc_info=True)
            line = compat.unsupported(error) or f"the sweep could not start: {type(error).__name__}: {error}"
            raise Abort(line) from error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        running = sweep.current()
        if running is None:
            return
        try:
            running.finish()
        except Exception as error:
            log.error("the sweep could not finish", exc_info=True)
            raise Abort(f"the sweep could not finish: {type(error).__name__}: {error}") from error
