"""Hydra's per-job machinery (``hydra.core.utils.run_job``) for the launcher's xorexp jobs, made cheap.

``run_job`` does what Hydra's does, in the same order, with the same files: output dir,
``HydraConfig``, chdir (if asked), the job's logging, ``.hydra/{config,hydra,overrides}.yaml``,
``hydra.job.env_set``, the callbacks' ``on_job_start``/``on_job_end``, the task function, and a
``JobReturn`` with status, return value, working dir, task name, cfg and hydra_cfg (for a job derived
from its shape's template, the whole job config, whose ``hydra`` node is the one Hydra would give).
What it does not do per job (about 40 ms of Hydra's ~60 ms outside the task, measured with cProfile):

- copy the job's config three times (two ``copy.deepcopy`` and ``HydraConfig.set_config``'s masked
  copy, twice): ``JobConfigs`` come made, from a per-shape template (see ``_compose``);
- dump the whole hydra node to YAML: ``HydraYaml`` renders it once per shape with markers in the
  five fields that differ between jobs, and fills them per job (checked against a full dump);
- configure logging with ``logging.config.dictConfig``: ``JobLogs`` configures it once per process
  and points the configured log files at each job's, unless anything else in the config differs;
- parse the same interpolations again: OmegaConf parses an interpolation's text with its ANTLR
  grammar each time it resolves it (``hydra.sweep.dir``, ``hydra.sweep.subdir``, the log file's
  name: ~0.1-0.5 ms each, several per job); ``memoize_interpolation_parsing`` keeps the parse trees.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override
from hydra.types import TaskFunction
from omegaconf import DictConfig, OmegaConf, grammar_parser, open_dict, read_write
from omegaconf import _utils as omegaconf_utils
from omegaconf import base as omegaconf_base
from omegaconf._utils import get_omega_conf_dumper

if TYPE_CHECKING:
    from ._compose import JobConfigs

log = logging.getLogger(__name__)

# the fields of the hydra node that differ between the jobs of one shape: (group, key, a marker)
SLOTS: tuple[tuple[str, str, Any], ...] = (
    ("overrides", "task", ["XOREXP-SLOT-overrides-task"]),
    ("job", "override_dirname", "XOREXP-SLOT-job-override_dirname"),
    ("job", "id", "XOREXP-SLOT-job-id"),
    ("job", "num", 918273645546372819),
    ("runtime", "output_dir", "XOREXP-SLOT-runtime-output_dir"),
)


PARSES_KEPT = 1024  # distinct interpolation texts whose parse trees a process keeps


def memoize_interpolation_parsing() -> None:
    """From now on, this process's OmegaConf parses each distinct interpolation text once.

    OmegaConf (2.3) resolves ``${...}`` by parsing the text (``grammar_parser.parse``), then visiting
    the tree; the tree depends on the text alone and visiting it changes nothing, so one tree per
    text serves every resolution (a text that does not parse raises each time, as before). Only the
    two places that parse a node's value (``base``, ``_utils``) are pointed at the kept trees, and
    only when they are OmegaConf's own ``parse``: any other OmegaConf is left as it is."""
    original = grammar_parser.parse
    if omegaconf_base.parse is not original or omegaconf_utils.parse is not original:
        return  # done already, or not the OmegaConf this was written for
    kept = functools.lru_cache(maxsize=PARSES_KEPT)(original)
    omegaconf_base.parse = kept
    omegaconf_utils.parse = kept


def _dump(container: Any) -> str:
    """``OmegaConf.to_yaml``'s dump of a plain container."""
    dumper = get_omega_conf_dumper()
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper)


def _rendered(group: str, key: str, value: Any) -> str:
    """How ``hydra.<group>.<key>: value`` is written in hydra.yaml: its whole lines, from the key's
    indentation (a value, or a list on the next lines), at the same depth, hence the same wrapping."""
    text = _dump({"hydra": {group: {key: value}}})
    return text[text.index(f"\n    {key}:") + 1 :]


class HydraYaml:
    """A shape's ``.hydra/hydra.yaml``: the text between the per-job fields, rendered once."""

    def __init__(self, pieces: Sequence[str], order: Sequence[int]) -> None:
        self.pieces = list(pieces)  # len(order) + 1 texts around the slots
        self.order = list(order)  # which slot comes at each gap

    @classmethod
    def of(cls, hydra_cfg: DictConfig) -> HydraYaml | None:
        """The template of a job's hydra config (``{"hydra": ...}``); None when the text cannot be
        cut at the markers exactly (then the job's hydra.yaml is dumped whole, as Hydra does)."""
        marked = copy.deepcopy(hydra_cfg)
        with read_write(marked.hydra), open_dict(marked.hydra):
            for group, key, marker in SLOTS:
                marked.hydra[group][key] = marker
        text = OmegaConf.to_yaml(marked)
        found = []
        for i, (group, key, marker) in enumerate(SLOTS):
            rendered = _rendered(group, key, marker)
            if text.count(f"\n{rendered}") != 1:
                return None
            found.append((text.index(f"\n{rendered}") + 1, len(rendered), i))
        found.sort()
        pieces, start = [], 0
        for at, length, _ in found:
            pieces.append(text[start:at])
            start = at + length
        pieces.append(text[start:])
        template = cls(pieces, [i for _, _, i in found])
        return template if template.render(marked) == text else None

    def render(self, hydra_cfg: DictConfig) -> str:
        """The hydra.yaml of a job of this shape."""
        node = hydra_cfg.hydra
        values = [
            OmegaConf.to_container(node[group][key]) if group == "overrides" else node[group][key]
            for group, key, _ in SLOTS
        ]
        out = [self.pieces[0]]
        for i, piece in zip(self.order, self.pieces[1:], strict=True):
            group, key, _ = SLOTS[i]
            out += [_rendered(group, key, values[i]), piece]
        return "".join(out)


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
                _point(self.files[name], filename)
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


def _point(handler: logging.FileHandler, filename: str) -> None:
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
    old_cwd = os.getcwd()
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.cfg = hydra_cfg
    if hydra_cfg is not config:
        hydra_cfg.hydra._set_parent(config)
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
            if configs.hydra_yaml is not None:
                hydra_yaml = configs.hydra_yaml.render(hydra_cfg)
            else:
                hydra_yaml = OmegaConf.to_yaml(OmegaConf.masked_copy(hydra_cfg, "hydra"))
            for name, text in (
                ("config.yaml", OmegaConf.to_yaml(configs.task)),
                ("hydra.yaml", hydra_yaml),
                ("overrides.yaml", OmegaConf.to_yaml(config.hydra.overrides.task)),
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

