"""The Hydra Sweeper plugin class: holds the config and hands off to ``_core``."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# registers hydra/sweeper=xorexp_optuna when Hydra discovers this plugin
from hydra_plugins.xorexp_optuna_sweeper.config import XorexpOptunaSweeperConf  # noqa: F401


class XorexpOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        """``settings``: the fields of ``XorexpOptunaSweeperConf`` (sampler, direction, n_trials,
        n_jobs, seed, storage, study_name, params), as Hydra instantiates the sweeper with them."""
        try:  # Optuna is imported only when this sweeper is used
            from hydra_plugins.xorexp_optuna_sweeper import _core
        except ImportError as error:
            raise ImportError(f"hydra/sweeper=xorexp_optuna needs optuna>=4 ({error})") from error

        self.core = _core.OptunaSweep(**settings)

    @staticmethod
    def check_config(conf: DictConfig) -> None:
        """The sweeper's settings, checked before the sweep creates anything (one line, exit 2)."""
        from hydra_plugins.xorexp_optuna_sweeper import _core

        settings = {key: conf.get(key) for key in _core.SETTINGS}
        _core.check_settings(_core.OptunaSweep(**settings, params=conf.get("params")))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = self.core.setup(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        return self.core.sweep(arguments)
