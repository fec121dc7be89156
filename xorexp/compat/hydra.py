"""Hydra's and OmegaConf's internals (developed on hydra-core 1.3.2, omegaconf 2.3.0), each beside
the public path it falls back to."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from xorexp.compat import Unsupported, describe, private_ok

try:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
except ImportError:  # a Hydra outside the supported range: the grid sweeper stops in one line

    class BasicSweeper(Sweeper):  # type: ignore[no-redef]
        """Stands in for Hydra's grid sweeper where this Hydra has none to extend."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            found = describe("hydra-core")
            raise Unsupported(f"{found} has no grid sweeper to extend: use hydra/sweeper=basic")

        def setup(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never constructed
            pass

        def sweep(self, arguments: list[str]) -> Any:  # pragma: no cover
            pass


def overrides_dirname(
    overrides: Sequence[Any], exclude_keys: Sequence[str], item_sep: str, kv_sep: str
) -> str:
    """``hydra.job.override_dirname`` of a job, as Hydra's config loader makes it
    (``hydra._internal.config_loader_impl.get_overrides_dirname``); fallback: the same rule here."""
    try:
        if not private_ok("hydra"):
            raise ImportError("internals off")
        from hydra._internal.config_loader_impl import get_overrides_dirname
    except ImportError:
        lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
        return re.sub("[=]", kv_sep, item_sep.join(lines))
    return get_overrides_dirname(
        overrides=list(overrides), exclude_keys=list(exclude_keys), item_sep=item_sep, kv_sep=kv_sep
    )


def yaml_dump(container: Any) -> str:
    """``OmegaConf.to_yaml``'s text of a plain container, dumped with OmegaConf's own YAML dumper
    (``omegaconf._utils.get_omega_conf_dumper``) without making a config of it first; fallback:
    ``OmegaConf.to_yaml(OmegaConf.create(container))``."""
    try:
        if not private_ok("omegaconf"):
            raise ImportError("internals off")
        from omegaconf._utils import get_omega_conf_dumper
    except ImportError:
        return OmegaConf.to_yaml(OmegaConf.create(container))
    import yaml

    dumper = get_omega_conf_dumper()
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper)


def child_node(cfg: DictConfig, key: str) -> Any:
    """The node (not its value) under ``key``: OmegaConf's ``_get_node``. No public path gives a
    node's type; a caller that gets AttributeError does without (a full YAML dump)."""
    if not private_ok("omegaconf"):
        raise AttributeError("OmegaConf's internals are off (XOREXP_PUBLIC_ONLY)")
    return cfg._get_node(key)


def node_value(node: Any) -> Any:
    """A leaf node's unresolved value (``Node._value``); AttributeError as ``child_node``."""
    if not private_ok("omegaconf"):
        raise AttributeError("OmegaConf's internals are off (XOREXP_PUBLIC_ONLY)")
    return node._value()


def set_parent(node: DictConfig, parent: DictConfig) -> bool:
    """Make ``node`` resolve its interpolations in ``parent`` (``Node._set_parent``); False where
    OmegaConf has no such method (the caller then uses ``parent`` itself)."""
    method = getattr(node, "_set_parent", None)
    if not callable(method) or not private_ok("omegaconf"):
        return False
    method(parent)
    return True


def parser_with_function(name: str, func: Callable[..., Any]) -> OverridesParser:
    """Hydra's override parser with its grammar function ``name`` replaced by ``func`` (Hydra's
    ``Functions`` registry has no way to replace one); fallback: Hydra's own parser."""
    parser = OverridesParser.create()
    if not private_ok("hydra"):
        return parser
    functions = parser.functions
    try:
        functions.definitions.pop(name)
        functions.functions.pop(name)
        functions.register(name=name, func=func)
    except (AttributeError, KeyError, TypeError):
        return OverridesParser.create()
    return parser
