from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from xorexp.compat.hydra import BasicSweeper


@dataclass
class XorexpGridSweeperConf:
    _target_: str = "hydra_plugins.xorexp_grid_sweeper.xorexp_grid_sweeper.XorexpGridSweeper"
    max_batch_size: Any = None  # null: every job in one launch
    params: Any = None  # key -> sweep, as hydra.sweeper.params of the basic sweeper


ConfigStore.instance().store(
    group="hydra/sweeper", name="xorexp_grid", node=XorexpGridSweeperConf, provider="xorexp"
)


class XorexpGridSweeper(BasicSweeper):
    """The grid of Hydra's BasicSweeper (same jobs, same order, same batches).

    BasicSweeper composes every job's config once to validate it, then the launcher composes it
    again: ~40 ms per job, 40 s for a 1,000-run sweep. The vectorized launcher composes and checks
    every job of a batch before running any, so that first pass is skipped for it.
    """

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher import VectorizedLauncher

        if isinstance(self.launcher, VectorizedLauncher):
            return
        super().validate_batch_is_legal(batch)
