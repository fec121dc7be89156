"""The Optuna sweep: its settings, the ask/launch/tell loop and the report of the best trial.

Trials are asked in batches of ``n_jobs``; each batch is one ``launcher.launch`` call, so a batching
launcher can train it as one NumPy batch. The results are told back (``_study.trial_result``), and
the best trial of the study is printed, written to ``<sweep dir>/optimization_results.yaml`` and
logged on the sweep's parent run. The search space is ``_space``'s, the study and its storage
``_study``'s. A bad setting or search space ends the command with one ``xorexp:`` line (exit 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial, TrialState

from hydra_plugins.xorexp_optuna_sweeper._space import (
    SearchSpace,
    SweepConfigError,
    params_text,
    parse_search_space,
    value_text,
)
from hydra_plugins.xorexp_optuna_sweeper._study import (
    DIRECTIONS,
    SAMPLERS,
    best_trial,
    open_study,
    trial_result,
    unvisited_grid_points,
)
from xorexp import parent_run, tracking
from xorexp.errors import fail

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIAL_KEY = "tracking.trial"  # every job gets tracking.trial=<trial number>
RESULTS_FILE = "optimization_results.yaml"


SETTINGS = ("sampler", "direction", "n_trials", "n_jobs", "seed", "storage", "study_name")


def check_settings(sweep: OptunaSweep) -> None:
    """A bad setting ends the command with one line (exit 2), before anything is created."""
    _report_errors(sweep.check_settings)


class OptunaSweep:
    def __init__(
        self,
        *,
        sampler: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        seed: int | None,
        storage: str | None,
        study_name: str,
        params: Mapping[str, Any] | None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.params = (
            OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        )
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> Launcher:
        check_settings(self)
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        return self.launcher

    def check_settings(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> SweepConfigError:
            return SweepConfigError(f"hydra.sweeper.{key}={value!r}: must be {allowed}")

        if self.sampler not in SAMPLERS:
            raise bad("sampler", self.sampler, " or ".join(SAMPLERS))
        if self.direction not in DIRECTIONS:
            raise bad("direction", self.direction, " or ".join(DIRECTIONS))
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if type(value) is not int or value < 1:
                raise bad(key, value, "an integer >= 1")
        if self.seed is not None and (type(self.seed) is not int or self.seed < 0):
            raise bad("seed", self.seed, "null or an integer >= 0")
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise bad("study_name", self.study_name, "a non-empty name")

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        return _report_errors(lambda: self._sweep(arguments))

    def _sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None, "setup() first"
        config = self.config
        space = parse_search_space(self.params, arguments)
        if not space.params:
            raise SweepConfigError("nothing to search: give hydra.sweeper.params or a sweep override")
        grid = space.grid() if self.sampler == "grid" else None
        study, storage_url = self.open_study(space)
        distributions = space.distributions(grid is not None)
        log.info(
            "Study %r (%s, %s, %s sampler): %d trials so far, running %d",
            self.study_name,
            storage_url or "in memory",
            self.direction,
            self.sampler,
            len(study.trials),
            self.n_trials,
        )
        returns: list[Sequence[JobReturn]] = []
        told = completed = 0
        first_failure = ""
        while told < self.n_trials:
            size = min(self.n_jobs, self.n_trials - told)
            if grid is not None:
                size = min(size, unvisited_grid_points(study, grid))
                if size == 0:
                    log.info("Every grid point has a trial: stopping after %d trials", told)
                    break
            trials = [study.ask(distributions) for _ in range(size)]
            batch = [self.job_overrides(space, trial) for trial in trials]
            try:
                # job number = trial number: a continued study adds job directories, never overwrites
                results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            except BaseException:
                for trial in trials:  # leave no trial RUNNING forever in a persistent study
                    study.tell(trial, state=TrialState.FAIL)
                raise
            for trial, ret in zip(trials, results, strict=True):
                state, value, text = trial_result(ret, self.direction)
                study.tell(trial, value, state=state)
                log.info("Trial %d %s: %s", trial.number, params_text(trial.params), text)
                completed += state is TrialState.COMPLETE
                first_failure = first_failure or (text if state is TrialState.FAIL else "")
            told += size
            returns.append(results)
        if told and not completed:  # each is a FAILED run: the sweep's end reports them and exits 1
            log.warning("all %d trials failed; the first %s", told, first_failure)
        self.report(study, storage_url, config)
        return returns

    def open_study(self, space: SearchSpace) -> tuple[optuna.Study, str | None]:
        config = self.config
        return open_study(
            study_name=self.study_name,
            storage=self.storage,
            direction=self.direction,
            sampler=self.sampler,
            seed=self.seed,
            space=space,
            launch_dir=config.hydra.runtime.cwd,
            tracking_uri=OmegaConf.select(config, "tracking.uri", default=None),
        )

    @staticmethod
    def job_overrides(space: SearchSpace, trial: Trial) -> list[str]:
        sampled = [f"{p.key}={value_text(trial.params[p.name])}" for p in space.params]
        return [*space.fixed, *sampled, f"{TRIAL_KEY}={trial.number}"]

    def report(self, study: optuna.Study, storage_url: str | None, config: DictConfig) -> None:
        best = best_trial(study)
        results = {
            "name": "xorexp_optuna",
            "study_name": self.study_name,
            "storage": storage_url,
            "sampler": self.sampler,
            "direction": self.direction,
            "n_trials": len(study.trials),
            "best_trial": best.number if best else None,
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
        }
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / RESULTS_FILE).write_text(text)
        # the CLI's final report
        if best is None:
            print(f"No trial of study {self.study_name!r} completed")
        else:
            print(f"Best trial: {best.number} of {len(study.trials)} in study {self.study_name!r}")
            print(f"Best parameters: {params_text(best.params)}")
            print(f"Best value: {best.value!r}")
        print(f"Results: {sweep_dir / RESULTS_FILE}")
        record = parent_run.read(sweep_dir)
        if record is None or best is None:
            return
        experiment = OmegaConf.select(config, "tracking.experiment", default="xorexp")
        tracking.log_to_run(
            tracking.open_store(record.tracking_uri, experiment),
            record.run_id,
            params={f"best.{name}": value_text(value) for name, value in best.params.items()},
            metrics={"best.value": best.value},
            tags={"xorexp.best_trial": str(best.number), "xorexp.study": self.study_name},
            files={RESULTS_FILE: text},
        )


def _report_errors(action: Callable[[], T]) -> T:
    """Run ``action``; a bad setting or search space ends the command with one line, like the app."""
    try:
        return action()
    except SweepConfigError as error:
        fail(SweepConfigError(f"invalid sweep: {error}"))
