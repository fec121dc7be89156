from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class VectorizedLauncher(Launcher):
    def __init__(self, n_jobs: int = -1, chunk_size: int = 1000, backend: str = "local", ray=None) -> None:
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.backend = backend
        self.ray = ray
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    @staticmethod
    def check_config(conf: DictConfig) -> None:
        """The launcher's settings, checked before the sweep creates anything (raises ConfigError)."""
        from xorexp.errors import ConfigError

        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"invalid config: hydra.launcher.{key}={conf.get(key)!r}: must be {allowed}")

        if conf.get("backend") not in ("local", "ray"):
            raise bad("backend", "'local' or 'ray'")
        n_jobs = conf.get("n_jobs")
        if type(n_jobs) is not int or n_jobs == 0 or n_jobs < -1:
            raise bad("n_jobs", "-1 (one per CPU) or an integer >= 1")
        chunk_size = conf.get("chunk_size")
        if type(chunk_size) is not int or chunk_size < 1:
            raise bad("chunk_size", "an integer >= 1")
        if conf.get("backend") == "ray":
            from ._ray_backend import RayBackendError, RayExecutor

            try:
                RayExecutor.check(conf.get("ray"))
            except RayBackendError as error:
                raise ConfigError(str(error)) from None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides=job_overrides, initial_job_idx=initial_job_idx)
