"""Hydra's per-job machinery (``hydra.core.utils.run_job``) for the launcher's xorexp jobs, made cheap.

``run_job`` does what Hydra's does, in the same order, with the same files: output dir,
``HydraConfig``, chdir (if asked), the job's logging, ``.hydra/{config,hydra,overrides}.yaml``,
``hydra.job.env_set``, the callbacks' ``on_job_start``/``on_job_end``, the task function, and a
``JobReturn`` with status, return value, working dir, task name, cfg and hydra_cfg (for a job derived
from its shape's template, the whole job config, whose ``hydra`` node is the one Hydra would give).
What it does not do per job (most of Hydra's time outside the task: benchmarks/README.md):

- copy the job's config three times (two ``copy.deepcopy`` and ``HydraConfig.set_config``'s masked
  copy, twice): ``JobConfigs`` come made, from a per-shape template (see ``_compose``);
- dump the whole hydra node and the task config to YAML: a ``YamlTemplate`` renders each once per
  shape with markers in the fields that differ between jobs (five of the hydra node, the overridden
  keys of the task config) and fills them per job from texts kept per value (checked against a full
  dump); ``overrides.yaml`` too is written from texts kept per override;
- configure logging with ``logging.config.dictConfig``: ``JobLogs`` configures it once per process
  and points the configured log files at each job's, unless anything else in the config differs.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override
from hydra.types import TaskFunction
from omegaconf import (
    AnyNode,
    DictConfig,
    IntegerNode,
    ListConfig,
    Node,
    OmegaConf,
    StringNode,
    open_dict,
    read_write,
)

from xorexp.compat import hydra as compat_hydra

log = logging.getLogger(__name__)

# the fields of the hydra node that differ between the jobs of one shape: the slots of hydra.yaml
HYDRA_SLOTS: tuple[tuple[str, ...], ...] = (
    ("hydra", "overrides", "task"),
    ("hydra", "job", "override_dirname"),
    ("hydra", "job", "id"),
    ("hydra", "job", "num"),
    ("hydra", "runtime", "output_dir"),
)


_dump = compat_hydra.yaml_dump


def _rendered(path: tuple[str, ...], value: Any) -> str:
    """How ``value`` at the keys ``path`` is written in a config's YAML: its whole lines, from its
    key's indentation (a value, or a list or mapping on the next lines), at the same depth, hence the
    same wrapping. (Each key above it is one line.)"""
    nested = value
    for key in reversed(path):
        nested = {key: nested}
    text = _dump(nested)
    return text.split("\n", len(path) - 1)[-1] if path else text


KEPT_TEXTS = 4096  # slot texts a process keeps, per distinct (keys, value): a grid repeats its values
_texts_by_value: dict[tuple, str] = {}
_PLAIN = (str, int, float, type(None))  # scalars: a scalar's text depends on itself and its key alone


def _text_for_value(path: tuple[str, ...], value: Any) -> str:
    """``_rendered(path, value)``, kept per value (its type and repr: 1 and 1.0, -0.0 and 0.0 differ)."""
    key = (path, type(value), repr(value))
    text = _texts_by_value.get(key)
    if text is None:
        text = _rendered(path, value)
        if len(_texts_by_value) >= KEPT_TEXTS:
            _texts_by_value.clear()
        _texts_by_value[key] = text
    return text


def _scalar(value: Any) -> bool:
    """A plain value whose text is kept: one of ``_PLAIN``, a string without a line break."""
    return type(value) in _PLAIN and not (type(value) is str and "\n" in value)


def _slot_text(path: tuple[str, ...], value: Any) -> str:
    """``_rendered(path, value)`` from kept texts: a plain value's text is kept as it is; a list of
    one-line plain values is its key's line and then each item's lines (written one after the other
    by YAML's block sequence, at the same column: each item's text depends on that item alone).
    Anything else is dumped."""
    if _scalar(value):
        return _text_for_value(path, value)
    if type(value) is list and value and all(_scalar(item) for item in value):
        items = [_text_for_value(path, [item]) for item in value]
        head = items[0][: items[0].index("\n") + 1] if path else ""
        return head + "".join(item[len(head) :] for item in items)
    return _rendered(path, value)


def list_yaml(items: list) -> str:
    """``OmegaConf.to_yaml`` of a list (e.g. ``.hydra/overrides.yaml``), from kept texts."""
    return _slot_text((), items)


_NOT_A_VALUE = object()


def _node_at(cfg: DictConfig, path: tuple[str, ...]) -> Node | None:
    """The node at the keys ``path`` of ``cfg``; None when a key on the way is missing or not a mapping."""
    node: Any = cfg
    for key in path:
        if not isinstance(node, DictConfig):
            return None
        node = compat_hydra.child_node(node, key)
    return node


def _value_at(cfg: DictConfig, path: tuple[str, ...]) -> Any:
    """What ``OmegaConf.to_yaml(cfg)`` writes at ``path``, unresolved, as a plain value or container;
    ``_NOT_A_VALUE`` when there is no node there."""
    node = _node_at(cfg, path)
    if node is None:
        return _NOT_A_VALUE
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, enum_to_str=True)
    value = compat_hydra.node_value(node)
    return value.name if isinstance(value, Enum) else value


class YamlTemplate:
    """A config's YAML text (as ``OmegaConf.to_yaml`` writes it) for configs that differ only in the
    values at a few keys (its slots): the text between the slots rendered once, each slot's lines
    written per config (``_slot_text``). Used for the jobs of a shape: their ``.hydra/hydra.yaml``
    (slots ``HYDRA_SLOTS``) and ``.hydra/config.yaml`` (slots: the keys the shape's overrides set)."""

    def __init__(self, slots: Sequence[tuple[str, ...]], pieces: Sequence[str], order: Sequence[int]) -> None:
        self.slots = list(slots)
        self.pieces = list(pieces)  # len(order) + 1 texts around the slots
        self.order = list(order)  # which slot comes at each gap

    @classmethod
    def of(cls, cfg: DictConfig, slots: Sequence[tuple[str, ...]]) -> YamlTemplate | None:
        """The template of configs like ``cfg``; None when a slot cannot take a marker or the text
        cannot be cut at the markers exactly (then each config is dumped whole, as Hydra does)."""
        marked = copy.deepcopy(cfg)
        markers = []
        try:
            for i, path in enumerate(slots):
                marker = _marker(i, _node_at(marked, path))
                if marker is None:
                    return None
                parent = _node_at(marked, path[:-1])
                with read_write(parent), open_dict(parent):
                    parent[path[-1]] = marker
                markers.append(marker)
        except Exception:  # a typed node refusing the marker: no template
            log.debug("no YAML template for slots %s", slots, exc_info=True)
            return None
        text = "\n" + OmegaConf.to_yaml(marked)
        found = []
        for i, (path, marker) in enumerate(zip(slots, markers, strict=True)):
            rendered = "\n" + _rendered(path, marker)
            if text.count(rendered) != 1:
                return None
            found.append((text.index(rendered) + 1, len(rendered) - 1, i))
        found.sort()
        pieces, start = [], 1
        for at, length, _ in found:
            pieces.append(text[start:at])
            start = at + length
        pieces.append(text[start:])
        template = cls(slots, pieces, [i for _, _, i in found])
        return template if template.render(marked) == text[1:] else None

    def render(self, cfg: DictConfig) -> str | None:
        """The YAML text of ``cfg``, a config of this template; None if a slot holds no value (or
        reading one fails: the caller's full dump then fails as Hydra's would)."""
        try:
            values = [_value_at(cfg, path) for path in self.slots]
        except Exception:
            log.debug("a slot of %s could not be read", self.slots, exc_info=True)
            return None
        if any(value is _NOT_A_VALUE for value in values):
            return None
        out = [self.pieces[0]]
        for i, piece in zip(self.order, self.pieces[1:], strict=True):
            out += [_slot_text(self.slots[i], values[i]), piece]
        return "".join(out)


def _marker(i: int, node: Any) -> Any:
    """A value the slot ``node`` takes that appears nowhere else in a config (None: none known)."""
    if isinstance(node, ListConfig):
        return [f"XOREXP-SLOT-{i}"]
    if isinstance(node, IntegerNode):
        return 918273645546372819 + i
    if isinstance(node, (AnyNode, StringNode)):
        return f"XOREXP-SLOT-{i}"
    return None


@dataclass
class JobConfigs:
    """What a job runs with, as Hydra's ``run_job`` would make it: ``config`` (the whole job config),
    ``task`` (``config`` without its ``hydra`` node: the task function's argument) and ``hydra``
    (``config``'s ``hydra`` node alone: HydraConfig's and the JobReturn's), and, when the job's shape
    has them, the templates of its ``.hydra/hydra.yaml`` and ``.hydra/config.yaml``.

    A job derived from its shape's template has no ``hydra`` of its own (None): HydraConfig gets
    ``config`` itself, whose ``hydra`` node is the same, and its hydra.yaml comes from the template;
    that spares unpickling a second copy of the hydra node per job."""

    config: DictConfig
    task: DictConfig
    hydra: DictConfig | None
    hydra_yaml: YamlTemplate | None = None
    task_yaml: YamlTemplate | None = None


class JobLogs:
    """Hydra's job logging (``hydra.job_logging``), configured once per process.

    Hydra reconfigures logging (``dictConfig``) for each job, so that the job's lines go to its log
    file ``<job dir>/<job name>.log``. Here, a job whose resolved logging config is the configured
    one but for the handlers' ``filename`` gets those handlers pointed at its files (opened as
    ``FileHandler`` opens them: the file exists from the job's start, as with Hydra); any other
    difference configures logging again, Hydra's way.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.files: dict[str, logging.FileHandler] = {}

    def reset(self) -> None:
        """Something else configured logging since (e.g. the launcher's own logging)."""
        self.key = None
        self.files = {}

    def start(self, config: DictConfig) -> None:
        """The job of ``config`` logs to its own files from now on (HydraConfig is the job's)."""
        job_logging, verbose = config.hydra.job_logging, config.hydra.verbose
        if job_logging is None:
            self.reset()
            configure_log(job_logging, verbose)
            return
        resolved = OmegaConf.to_container(job_logging, resolve=True)
        filenames = {}
        for name, handler in (resolved.get("handlers") or {}).items():
            if isinstance(handler, dict) and "filename" in handler:
                filenames[name] = handler.pop("filename")
        plain_verbose = OmegaConf.to_container(verbose) if OmegaConf.is_config(verbose) else verbose
        key = repr((resolved, plain_verbose))
        if key == self.key and set(self.files) == set(filenames):
            for name, filename in filenames.items():
                _repoint_file_handler(self.files[name], filename)
            return
        self.reset()
        configure_log(job_logging, verbose)
        handlers = _handlers_named(set(filenames))
        if all(isinstance(handlers.get(name), logging.FileHandler) for name in filenames):
            self.key, self.files = key, {name: handlers[name] for name in filenames}


def _handlers_named(names: set[str]) -> dict[str, logging.Handler]:
    """The handlers ``dictConfig`` made for ``names`` (it names each after its config key)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return {h.name: h for logger in loggers for h in logger.handlers if h.name in names}


def _repoint_file_handler(handler: logging.FileHandler, filename: str) -> None:
    """``handler`` writes to ``filename`` from now on (the previous file is closed)."""
    path = os.path.abspath(filename)
    handler.acquire()
    try:
        previous = handler.stream
        handler.baseFilename = path
        if getattr(handler, "delay", False):
            handler.stream = None  # opened at its first line, as FileHandler(delay=True) does
        else:
            handler.stream = open(path, handler.mode, encoding=handler.encoding, errors=handler.errors)  # noqa: SIM115
        if previous is not None:
            previous.flush()
            previous.close()
    finally:
        handler.release()


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # as Hydra: a handler that cannot flush does not stop the job
            pass


def run_job(
    hydra_context, task_function: TaskFunction, configs: JobConfigs, logs: JobLogs
) -> JobReturn:
    """One job as ``hydra.core.utils.run_job(..., job_dir_key="hydra.sweep.dir",
    job_subdir_key="hydra.sweep.subdir")`` runs it, with the job's configs made by the launcher."""
    callbacks = hydra_context.callbacks
    config = configs.config
    # HydraConfig.set_config would hold the hydra node alone, seeing the job's config in its
    # interpolations; a derived job's is ``config`` itself (HydraConfig.get() is its hydra node)
    hydra_cfg = configs.hydra if configs.hydra is not None else config
    if hydra_cfg is not config and not compat_hydra.set_parent(hydra_cfg.hydra, config):
        hydra_cfg = config  # its interpolations must see the job's config: the whole config serves
    old_cwd = os.getcwd()
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.cfg = hydra_cfg
    output_dir = os.path.join(
        str(OmegaConf.select(config, "hydra.sweep.dir")), str(OmegaConf.select(config, "hydra.sweep.subdir"))
    )
    for node in {id(n): n for n in (config.hydra, hydra_cfg.hydra)}.values():
        with read_write(node.runtime), open_dict(node.runtime):
            node.runtime.output_dir = os.path.abspath(output_dir)
    chdir = False
    try:
        ret = JobReturn()
        ret.cfg = configs.task
        ret.hydra_cfg = hydra_cfg
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = hydra_cfg.hydra.job.chdir
        if chdir is None:  # Hydra's default: no chdir from version_base 1.2 on (xorexp's is 1.3)
            chdir = not version.base_at_least("1.2")
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        logs.start(config)
        if config.hydra.output_subdir is not None:
            hydra_dir = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            hydra_dir.mkdir(parents=True, exist_ok=True)
            hydra_yaml = configs.hydra_yaml.render(hydra_cfg) if configs.hydra_yaml is not None else None
            if hydra_yaml is None:
                hydra_yaml = OmegaConf.to_yaml(OmegaConf.masked_copy(hydra_cfg, "hydra"))
            task_yaml = configs.task_yaml.render(configs.task) if configs.task_yaml is not None else None
            if task_yaml is None:
                task_yaml = OmegaConf.to_yaml(configs.task)
            for name, text in (
                ("config.yaml", task_yaml),
                ("hydra.yaml", hydra_yaml),
                ("overrides.yaml", list_yaml(ret.overrides)),
            ):
                with open(hydra_dir / name, "w", encoding="utf-8") as file:
                    file.write(text)
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(configs.task)
                ret.status = JobStatus.COMPLETED
            except Exception as error:
                ret.return_value = error
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_logs()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        instance.cfg = previous
        if chdir:
            os.chdir(old_cwd)

