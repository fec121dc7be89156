"""``Store``: an opened tracking store, what the rest of xorexp holds (made by ``store.open_store``).

A leaf: the tracking modules that take a Store import it from here, so none of them needs
``store``, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass
class Store:
    """An opened tracking store and the experiment runs go to."""

    uri: str
    experiment_id: str
    client: MlflowClient
    stale_runs: list[str] = field(default_factory=list)  # marked KILLED on opening (clean_stale=True)
