"""The sweeper's config schema, stored in Hydra's ConfigStore as ``hydra/sweeper: xorexp_optuna``.

Importing this module must stay cheap and must not need Optuna: Hydra imports every module under
``hydra_plugins`` each time an app starts.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class XorexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.xorexp_optuna_sweeper.xorexp_optuna_sweeper.XorexpOptunaSweeper"

    sampler: str = "tpe"  # tpe | random | grid (grid: choice/range params only)
    direction: str = "minimize"  # minimize | maximize the task function's return value
    n_trials: int = 20  # trials per invocation; a continued study adds this many more
    n_jobs: int = 1  # trials asked per batch; one batch is one launcher.launch call
    seed: Any = None  # sampler seed (int or null)
    # null: in memory; sqlite:///rel/or/abs.db (Optuna RDB); journal:///rel/or/abs.log (Optuna journal
    # file); another SQLAlchemy URL is passed to Optuna as is. Relative paths: against the launch dir.
    storage: Any = None
    study_name: str = "xorexp"  # with a storage: re-running continues this study
    # key -> Hydra override value: interval(a,b), tag(log, interval(a,b)), choice(...), range(...), a
    # fixed value. Command-line overrides of the same key take precedence.
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="xorexp_optuna",
    node=XorexpOptunaSweeperConf,
    provider="xorexp_optuna_sweeper",
)
