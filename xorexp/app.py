"""The Hydra task function: job config -> RunSpec -> train -> track -> objective."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xorexp import plots, tracking
from xorexp.config import ConfigError, register, to_run_spec
from xorexp.train import RunResult, train

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register()


def fail(error: ConfigError) -> None:
    """Report bad input in one line and stop with status 2."""
    print(f"xorexp: {error}", file=sys.stderr)
    raise SystemExit(2)


@functools.cache
def store_for(uri: str | None, experiment: str, launch_dir: str) -> tracking.Store:
    return tracking.open_store(tracking.resolve_uri(uri, launch_dir), experiment)


def job_store(cfg: DictConfig) -> tracking.Store:
    return store_for(cfg.tracking.uri, cfg.tracking.experiment, HydraConfig.get().runtime.cwd)


def track(store: tracking.Store, result: RunResult, cfg: DictConfig, parent_run_id: str | None = None) -> str:
    """Log one result with its job's config, Hydra files and plots; returns the run id."""
    hc = HydraConfig.get()
    name = tracking.run_name(result.spec)
    figures = {
        "plots/learning_curve.png": plots.learning_curve(result.trace_steps, result.loss_trace, name),
        "plots/decision_boundary.png": plots.decision_boundary(result.params, name),
    }
    dirs = {}
    if hc.output_subdir:
        dirs[".hydra"] = Path(hc.runtime.output_dir) / hc.output_subdir
    return tracking.log_result(
        store,
        result,
        tags={tracking.TAG_OVERRIDES: " ".join(hc.overrides.task)},
        figures=figures,
        files={"config.yaml": OmegaConf.to_yaml(cfg, resolve=True)},
        dirs=dirs,
        parent_run_id=parent_run_id,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        spec = to_run_spec(cfg)
    except ConfigError as error:
        fail(error)
    store = job_store(cfg)
    [result] = train([spec])
    run_id = track(store, result, cfg)
    log.info(
        "%s: %s, final_loss %.6g, run %s", tracking.run_name(spec), result.outcome, result.final_loss, run_id
    )
    return result.final_loss
