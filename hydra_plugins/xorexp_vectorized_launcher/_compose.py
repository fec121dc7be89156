"""Job configs of a sweep, as Hydra's ``load_sweep_config`` makes them, without ~40 ms for each."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence

import cloudpickle
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, read_write

from xorexp.config import ConfigError, to_run_spec
from xorexp.errors import fail
from xorexp.params import RESULT_KEYS
from xorexp.train import RunSpec

log = logging.getLogger(__name__)

SPEC_KEYS = (*RESULT_KEYS, "tracking.uri", "tracking.experiment")


def _is_leaf(cfg: DictConfig, key: str) -> bool:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:
        return False
    return node is not None and not OmegaConf.is_config(node)


class Composer:
    """Job configs, as Hydra's ``load_sweep_config`` makes them, without paying ~40 ms for each.

    Jobs of a grid differ only in the values of the same plain keys. The first job of each such
    shape is composed by Hydra; the others are a copy of it with their values set the way Hydra sets
    an override (``OmegaConf.update(..., merge=True)``) and their ``hydra.overrides.task`` and
    ``hydra.job.override_dirname`` rewritten. The second job of each shape is composed both ways and
    compared; any difference turns the shortcut off for the sweep. Overrides of config groups, of
    ``hydra.*`` keys and anything but ``key=value`` always go through Hydra.
    """

    def __init__(self, config_loader, master_config: DictConfig) -> None:
        self.config_loader = config_loader
        self.master_config = master_config
        self.parser = OverridesParser.create()
        # shape -> (its first job's overrides, that job's config pickled, the values a RunSpec needs)
        self.templates: dict[tuple, tuple[list[Override], bytes, dict | None]] = {}
        self.checked: set[tuple] = set()
        self.enabled = True

    def full(self, overrides: Sequence[str]) -> DictConfig:
        return self.config_loader.load_sweep_config(self.master_config, list(overrides))

    def spec_of(self, overrides: Sequence[str]) -> RunSpec | None:
        """The job's RunSpec (None if its config is not an xorexp run), without building its config
        when the job is derivable: the template's values with the job's override values."""
        parsed = self.parser.parse_overrides(list(overrides))
        shape = self._shape(parsed)
        if shape is not None and self.enabled and shape in self.templates and shape in self.checked:
            template_overrides, template, values = self.templates[shape]
            if values is not None:
                job_values = dict(values)
                for override in parsed:
                    if override.key_or_group in job_values:
                        job_values[override.key_or_group] = override.value()
                return _checked_spec(job_values)
        return _spec_of(self.compose(overrides))

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(list(overrides))
        shape = self._shape(parsed)
        if shape is None or not self.enabled:
            return self.full(overrides)
        if shape not in self.templates:
            cfg = self.full(overrides)
            if not all(_is_leaf(cfg, key) for key in shape):  # e.g. a config group: not derivable
                return cfg
            # kept pickled: unpickling makes a fresh copy ~4x faster than copy.deepcopy (cloudpickle:
            # plain pickle refuses the schema classes of plugins Hydra loaded outside sys.modules)
            self.templates[shape] = (parsed, cloudpickle.dumps(cfg), _spec_values(cfg))
            return cfg
        derived = self._derive(shape, parsed)
        if shape not in self.checked:
            self.checked.add(shape)
            composed = self.full(overrides)
            if OmegaConf.to_container(derived) != OmegaConf.to_container(composed):
                log.warning("vectorized launcher: a derived job config differs from Hydra's; composing all")
                self.enabled = False
                return composed
        return derived

    def _shape(self, parsed: list[Override]) -> tuple | None:
        choices = self.master_config.hydra.runtime.choices
        keys = []
        for override in parsed:
            key = override.key_or_group
            if (
                override.type != OverrideType.CHANGE
                or override.package is not None
                or override.is_hydra_override()
                or key.split(".")[0] == "hydra"
                or key in choices
                or override.is_sweep_override()
            ):
                return None
            keys.append(key)
        return tuple(keys)

    def _derive(self, shape: tuple, parsed: list[Override]) -> DictConfig:
        template_overrides, template, _ = self.templates[shape]
        cfg = pickle.loads(template)
        for mine, theirs in zip(parsed, template_overrides, strict=True):
            if mine.input_line != theirs.input_line:
                OmegaConf.update(cfg, mine.key_or_group, mine.value(), merge=True)
        dirname = cfg.hydra.job.config.override_dirname
        with read_write(cfg.hydra):
            cfg.hydra.overrides.task = [override.input_line for override in parsed]
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed,
                exclude_keys=list(dirname.exclude_keys),
                item_sep=dirname.item_sep,
                kv_sep=dirname.kv_sep,
            )
        return cfg


def _spec_values(cfg: DictConfig) -> dict | None:
    """What ``to_run_spec`` reads of a config (None if it is not an xorexp run config)."""
    if not all(key in cfg for key in RESULT_KEYS):
        return None
    return {key: OmegaConf.select(cfg, key) for key in SPEC_KEYS}


def _checked_spec(values: Mapping) -> RunSpec:
    nested = OmegaConf.create({"tracking": {}})
    for key, value in values.items():
        OmegaConf.update(nested, key, value, force_add=True)
    return _spec_of(nested)


def _spec_of(cfg: DictConfig) -> RunSpec | None:
    """The job's RunSpec; bad values stop the whole launch in one line, before anything runs."""
    if not all(key in cfg for key in RESULT_KEYS):
        return None
    try:
        return to_run_spec(cfg)
    except ConfigError as error:
        fail(error)
