"""What a job takes from its Hydra context (``HydraConfig``, while it is the current job): its run's
tags, the files its run logs (resolved config, Hydra's files, plots), and its label and log file
for the lines that report its end.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xorexp.chunks import render_run_plots
from xorexp.params import run_name
from xorexp.tracking.tags import TAG_JOB, TAG_OVERRIDES, TAG_TRIAL
from xorexp.tracking.uri import redact
from xorexp.train import RunResult

log = logging.getLogger("xorexp.job")  # the job's lines, under the job's name with the rest of them


def job_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags of the job's run: its overrides, its number in a sweep, its trial under a search."""
    hc = HydraConfig.get()
    tags = {TAG_OVERRIDES: redact(" ".join(hc.overrides.task))}
    if hc.mode == RunMode.MULTIRUN:
        tags[TAG_JOB] = str(hc.job.num)
    if cfg.tracking.trial is not None:
        tags[TAG_TRIAL] = str(cfg.tracking.trial)
    return tags


def track_args(
    result: RunResult, cfg: DictConfig, pngs: dict[str, bytes] | None = None, params_logged: bool = True
) -> dict:
    """``run_logging.log_result``'s arguments for one result of the current job: its config, Hydra
    files and plots (rendered now unless given)."""
    hc = HydraConfig.get()
    if pngs is None:
        pngs = render_run_plots(result, run_name(result.spec))
    dirs = {}
    if hc.output_subdir:
        dirs[".hydra"] = Path(hc.runtime.output_dir) / hc.output_subdir
    return {
        "blobs": pngs,
        "files": {"config.yaml": resolved_yaml(cfg, dirs.get(".hydra"))},
        "dirs": dirs,
        "params_logged": params_logged,
        "model": hc.mode != RunMode.MULTIRUN,  # a sweep's best run gets its model at the sweep's end
    }


@dataclass(frozen=True)
class JobContext:
    """What ending a job needs of its Hydra context, taken while it is the current job: a run left to
    the background ends while later jobs run. With ``log_files``, the job's log lines are appended to
    its log files by path (the process's handlers point at the current job's files by then)."""

    label: str  # the job in the user's one line
    log_file: Path  # the job's log file, named in that line
    multirun: bool
    log_files: tuple[tuple[str, logging.Formatter, int], ...] | None = None

    @classmethod
    def current(cls, detached: bool = False) -> JobContext:
        hc = HydraConfig.get()
        files = None
        if detached:  # the files this module's records go to now: (path, format, level) of each
            files, logger = [], log
            while logger is not None:
                files += [
                    (h.baseFilename, h.formatter or logging.Formatter(), h.level)
                    for h in logger.handlers
                    if isinstance(h, logging.FileHandler)
                ]
                logger = logger.parent if logger.propagate else None
            files = tuple(files)
        return cls(
            label=_job_label(hc),
            log_file=Path(hc.runtime.output_dir) / f"{hc.job.name}.log",
            multirun=hc.mode == RunMode.MULTIRUN,
            log_files=files,
        )

    def info(self, message: str, *args: object, exc_info: bool = False) -> None:
        if self.log_files is None:
            log.info(message, *args, exc_info=exc_info)
            return
        if not log.isEnabledFor(logging.INFO):
            return
        record = log.makeRecord(
            log.name, logging.INFO, __file__, 0, message, args, sys.exc_info() if exc_info else None
        )
        for path, formatter, level in self.log_files:
            if logging.INFO >= level:
                with open(path, "a", encoding="utf-8") as out:
                    out.write(formatter.format(record) + "\n")


def resolved_yaml(cfg: DictConfig, hydra_dir: Path | None) -> str:
    """The job's config as YAML, resolved. Hydra's job runners (each launcher's, the single run's)
    dump the very config the task gets, unresolved, to ``.hydra/config.yaml`` at the job's start:
    with no interpolation in it, that text is the resolved one already (spares a second dump of
    the config)."""
    if hydra_dir is not None:
        try:
            text = (hydra_dir / "config.yaml").read_text(encoding="utf-8")
        except OSError:
            text = None
        if text is not None and "${" not in text:
            return text
    return OmegaConf.to_yaml(cfg, resolve=True)


def _job_label(hc) -> str:
    """The job as the user's one line names it: ``job #3 (lr=0.5 seed=2)``, ``the run (lr=0.5)``."""
    overrides = redact(" ".join(hc.overrides.task))
    if hc.mode == RunMode.MULTIRUN:
        return f"job #{hc.job.num} ({overrides})"
    return f"the run ({overrides})" if overrides else "the run"
