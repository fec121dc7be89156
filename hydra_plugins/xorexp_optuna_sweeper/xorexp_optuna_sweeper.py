"""The Hydra Sweeper plugin class: holds the config and hands off to ``_core``."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# registers hydra/sweeper=xorexp_optuna when Hydra discovers this plugin
from hydra_plugins.xorexp_optuna_sweeper.config import XorexpOptunaSweeperConf  # noqa: F401


class XorexpOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        seed: int | None,
        storage: str | None,
        study_name: str,
        params: DictConfig | None,
    ) -> None:
        try:  # Optuna is imported only when this sweeper is used
            from hydra_plugins.xorexp_optuna_sweeper import _core
        except ImportError as error:
            raise ImportError(f"hydra/sweeper=xorexp_optuna needs optuna>=4 ({error})") from error

        self.core = _core.OptunaSweep(
            sampler=sampler,
            direction=direction,
            n_trials=n_trials,
            n_jobs=n_jobs,
            seed=seed,
            storage=storage,
            study_name=study_name,
            params=params,
        )

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
