from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class RayConf:
    address: str | None = None  # HOST:PORT of a running Ray cluster (ray start --head ...)
    max_retries: int = 3  # a chunk whose task dies is run again up to this many times


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher.VectorizedLauncher"
    # worker processes that train chunks and render plots; -1: one per CPU; 1: all in this process
    n_jobs: int = -1
    # most runs per engine batch (train.train's own default is 2,000). benchmarks/README.md: at h=32
    # ~1,000 is the fastest, at h=2 larger batches still gain a little; a local sweep's worker tasks
    # are smaller anyway (_core.TASKS_PER_WORKER)
    chunk_size: int = 1000
    # where chunks are trained: "local" (processes on this machine) or "ray" (an existing cluster)
    backend: str = "local"
    ray: RayConf = field(default_factory=RayConf)


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="xorexp"
)
