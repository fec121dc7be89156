"""Job configs of a sweep, as Hydra's ``load_sweep_config`` makes them, each composed once.

The launcher plans every job first (``Composer.plan``: its parsed overrides and its checked RunSpec)
and builds a job's configs only when the job runs (``Composer.job_configs``), from what it composed
while planning. Nothing is composed twice and no spec is checked twice.
"""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import cloudpickle
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from xorexp import mechanisms
from xorexp.compat.hydra import overrides_dirname
from xorexp.config import ConfigError, check_tracking, spec_from_values, to_run_spec
from xorexp.errors import fail
from xorexp.params import RESULT_KEYS
from xorexp.train import RunSpec

from ._hydra_job import HYDRA_SLOTS, JobConfigs, YamlTemplate

log = logging.getLogger(__name__)
TRACKING_KEYS = ("tracking.uri", "tracking.experiment")  # what ``check_tracking`` reads


def _is_leaf(cfg: DictConfig, key: str) -> bool:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:
        return False
    return node is not None and not OmegaConf.is_config(node)


@dataclass
class Planned:
    """A job as planned: its overrides parsed once, its spec checked once (None: not an xorexp run
    config), and its config when planning composed it (else it is derived from its shape's template
    when the job runs)."""

    parsed: list[Override]
    spec: RunSpec | None
    cfg: DictConfig | None = None


@dataclass
class _Template:
    """The first job of a shape: its overrides, its three configs pickled (unpickling makes a fresh
    copy faster than ``copy.deepcopy``; cloudpickle: plain pickle refuses the schema classes of
    plugins Hydra loaded outside sys.modules), the values a RunSpec needs and the templates of its
    hydra.yaml and config.yaml."""

    parsed: list[Override]
    config: bytes
    task: bytes
    hydra: bytes
    values: dict | None
    hydra_yaml: YamlTemplate | None
    task_yaml: YamlTemplate | None
    lines: frozenset[str]  # its overrides as typed
    tracking: dict  # its TRACKING_KEYS' values


def split(config: DictConfig) -> tuple[DictConfig, DictConfig]:
    """``config``'s task config and hydra config, copied exactly as Hydra's ``run_job`` does."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    OmegaConf.set_readonly(config.hydra, True)  # as HydraConfig.set_config leaves it
    return task, OmegaConf.masked_copy(config, "hydra")


class Composer:
    """Job configs, as Hydra's ``load_sweep_config`` makes them, without composing each job again.

    Jobs of a grid differ only in the values of the same plain keys (a "shape"). The first job of
    each shape is composed by Hydra; the others are a copy of it with their values set the way Hydra
    sets an override (``OmegaConf.update(..., merge=True)``) and their ``hydra.overrides.task`` and
    ``hydra.job.override_dirname`` rewritten. The second job of each shape is composed both ways and
    compared; any difference turns the shortcut off for the sweep. Overrides of config groups, of
    ``hydra.*`` keys and anything but ``key=value`` always go through Hydra. A Composer is pickled
    to the launcher's worker processes with its templates: they never compose.
    """

    def __init__(self, config_loader, master_config: DictConfig) -> None:
        self.config_loader = config_loader
        self.master_config = master_config
        self.parser = OverridesParser.create()
        self.parsed: dict[str, Override] = {}  # each override line parsed once (a grid repeats them)
        self.choices = master_config.hydra.runtime.choices
        self.templates: dict[tuple, _Template] = {}
        self.checked: set[tuple] = set()
        self.enabled = True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "parser": None, "parsed": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.parser = OverridesParser.create()

    def full(self, overrides: Sequence[str]) -> DictConfig:
        return self.config_loader.load_sweep_config(self.master_config, list(overrides))

    def plan(self, overrides: Sequence[str]) -> Planned:
        """The job's parsed overrides and checked spec; a bad value stops the whole launch in one
        line, before anything runs. A derivable job's spec is the template's values with the job's
        override values: no config is built for it here."""
        parsed = self._parse(overrides)
        shape = self._shape(parsed)
        if self._derivable(shape):
            template = self.templates[shape]
            if template.values is None:
                return Planned(parsed, None)
            values = dict(template.values)
            tracking = {}
            for override in parsed:
                key = override.key_or_group
                if key in values:
                    values[key] = override.value()
                elif key in TRACKING_KEYS and override.input_line not in template.lines:
                    tracking[key.split(".")[1]] = override.value()
            if tracking:  # not from a sweep (tracking.* cannot be swept), but check it if it comes
                _checked(check_tracking, OmegaConf.create({"tracking": {**template.tracking, **tracking}}))
            return Planned(parsed, _checked(spec_from_values, values))
        cfg = self._compose(overrides, parsed, shape)
        if not all(key in cfg for key in RESULT_KEYS):
            return Planned(parsed, None, cfg)
        return Planned(parsed, _checked(to_run_spec, cfg), cfg)

    def _parse(self, overrides: Sequence[str]) -> list[Override]:
        """``parser.parse_overrides(overrides)``, each line parsed once per launch (Hydra parses each
        line on its own, and a grid repeats its lines). A bad line
        raises Hydra's own error, as it would there."""
        missing = [line for line in dict.fromkeys(overrides) if line not in self.parsed]
        if missing:
            self.parsed.update(zip(missing, self.parser.parse_overrides(missing), strict=True))
        return [self.parsed[line] for line in overrides]

    def job_configs(self, planned: Planned, job_idx: int | None) -> JobConfigs:
        """The job's configs with its ``hydra.job.id``/``num`` set (unless ``job_idx`` is None),
        made once for the job."""
        shape = self._shape(planned.parsed)
        if planned.cfg is None and not self._derivable(shape):  # only if the shortcut was turned off
            planned.cfg = self.full([o.input_line for o in planned.parsed])
        derived = self._derivable(shape) and (
            self.templates[shape].hydra_yaml is not None or not mechanisms.on("yaml_templates")
        )
        if planned.cfg is not None and not derived:
            config = planned.cfg
            _set_job(config, job_idx)
            task, hydra = split(config)
            return JobConfigs(config, task, hydra)
        template = self.templates[shape]
        config, task = (pickle.loads(b) for b in (template.config, template.task))
        changed = [
            mine for mine, theirs in zip(planned.parsed, template.parsed, strict=True)
            if mine.input_line != theirs.input_line
        ]
        for cfg in (config, task):
            for override in changed:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        dirname = config.hydra.job.config.override_dirname
        task_lines = [override.input_line for override in planned.parsed]
        override_dirname = overrides_dirname(
            planned.parsed, list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep
        )
        with read_write(config.hydra), open_dict(config.hydra):  # one block: each costs a copy
            config.hydra.overrides.task = task_lines
            config.hydra.job.override_dirname = override_dirname
            _job_fields(config, job_idx)
        OmegaConf.set_readonly(config.hydra, True)
        return JobConfigs(config, task, None, template.hydra_yaml, template.task_yaml)

    def _derivable(self, shape: tuple | None) -> bool:
        return shape is not None and self.enabled and shape in self.templates and shape in self.checked

    def _compose(self, overrides: Sequence[str], parsed: list[Override], shape: tuple | None) -> DictConfig:
        if shape is None or not self.enabled:
            return self.full(overrides)
        if shape not in self.templates:
            cfg = self.full(overrides)
            if not all(_is_leaf(cfg, key) for key in shape):  # e.g. a config group: not derivable
                return cfg
            self.templates[shape] = _template(parsed, cfg)
            return cfg
        composed = self.full(overrides)
        self.checked.add(shape)
        planned = Planned(parsed, None)
        derived = self.job_configs(planned, None)  # the shortcut, checked once against Hydra
        same = OmegaConf.to_container(derived.config) == OmegaConf.to_container(composed)
        if same and derived.hydra_yaml is not None:  # and the hydra.yaml template, with other values
            _set_job(derived.config, 0)
            with read_write(derived.config.hydra), open_dict(derived.config.hydra):
                derived.config.hydra.runtime.output_dir = "/checked/output/dir"
            hydra = OmegaConf.masked_copy(derived.config, "hydra")  # as Hydra's run_job makes it
            same = derived.hydra_yaml.render(derived.config) == OmegaConf.to_yaml(hydra)
        if same and derived.task_yaml is not None:  # and the config.yaml template
            same = derived.task_yaml.render(derived.task) == OmegaConf.to_yaml(derived.task)
        if not same:
            log.warning("vectorized launcher: a derived job config differs from Hydra's; composing all")
            self.enabled = False
        return composed

    def _shape(self, parsed: list[Override]) -> tuple | None:
        choices = self.choices
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


def _set_job(config: DictConfig, job_idx: int | None) -> None:
    """What a launcher sets on each job's config (Hydra's basic launcher does the same)."""
    if job_idx is None:
        return
    with read_write(config.hydra), open_dict(config.hydra):
        _job_fields(config, job_idx)


def _job_fields(config: DictConfig, job_idx: int | None) -> None:
    """``_set_job``'s fields, on a config whose hydra node is writable."""
    if job_idx is not None:
        config.hydra.job.id = f"{config.hydra.job.name}_{job_idx}"
        config.hydra.job.num = job_idx


def _template(parsed: list[Override], cfg: DictConfig) -> _Template:
    values = None
    if all(key in cfg for key in RESULT_KEYS):  # what ``to_run_spec`` reads of a config
        values = {key: cfg[key] for key in RESULT_KEYS}
    blank = copy.deepcopy(cfg)
    task, hydra = split(blank)
    templates = mechanisms.on("yaml_templates")
    return _Template(
        parsed=parsed,
        config=cloudpickle.dumps(cfg),
        task=cloudpickle.dumps(task),
        hydra=cloudpickle.dumps(hydra),
        values=values,
        hydra_yaml=YamlTemplate.of(hydra, HYDRA_SLOTS) if templates else None,
        task_yaml=YamlTemplate.of(task, [tuple(o.key_or_group.split(".")) for o in parsed])
        if templates
        else None,
        lines=frozenset(override.input_line for override in parsed),
        tracking={key.split(".")[1]: OmegaConf.select(cfg, key) for key in TRACKING_KEYS},
    )


def _checked(check, source) -> RunSpec:
    try:
        return check(source)
    except ConfigError as error:
        fail(error)
