"""The ``ray`` backend of the vectorized launcher: chunks run as tasks on an existing Ray cluster.

With a sqlite store, workers only compute (``chunks.train_chunk``, ``chunks.render_many``: NumPy and
matplotlib); every result comes back to the launching process, which alone writes to the store. With a
tracking server, each task runs its chunk's whole jobs and logs their runs itself (``_core``). A task
whose worker process dies is run again by Ray (``max_retries``), so a lost worker loses no run; an
exception raised by the task itself is not retried (it would fail the same way) and fails its chunk alone.

The workers import ``xorexp`` by name: on the machine of the launching process Ray gives them its
``sys.path``; on the other machines of a cluster xorexp must be installed (same version, same Python
and Ray) unless ``runtime_env`` ships it (e.g. ``{"py_modules": ["/path/to/xorexp"]}``).

Only Ray's public API is used: ``ray.init``, ``ray.remote``, ``ray.put``, ``ObjectRef.future()``,
``ray.cancel``, ``ray.wait``, ``ray.cluster_resources``, ``ray.shutdown``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from xorexp.errors import fail

try:
    import ray
except ImportError:  # an optional extra: report it in one line when the backend is asked for
    ray = None

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # to reach the cluster's address before handing it to Ray
CANCEL_WAIT_S = 5.0  # how long cancelled tasks get to be stopped before this process disconnects


class RayBackendError(RuntimeError):
    """The Ray backend cannot be used: Ray missing, cluster unreachable or refusing the driver."""


def _field(conf: Any, name: str, default: Any = None) -> Any:
    """``conf.name`` for a DictConfig, a dataclass or a mapping; ``default`` if it has no such field."""
    if isinstance(conf, Mapping):
        return conf.get(name, default)
    try:
        return getattr(conf, name, default)
    except Exception:  # a struct DictConfig without that key
        return default


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for what Ray resolves itself ("auto")."""
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise RayBackendError unless something accepts TCP connections at ``address``.

    Ray itself retries an unreachable address for minutes before giving up; this fails in seconds.
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as error:
        raise RayBackendError(
            f"hydra.launcher.ray.address={address}: no Ray cluster reachable there "
            f"({error.strerror or error}); start one with `ray start --head --port=PORT` "
            "or fix the address"
        ) from None


class RayExecutor:
    """``submit(fn, *args) -> concurrent.futures.Future`` and ``shutdown()``, on a running Ray cluster.

    ``conf`` is the launcher's ``ray`` node: ``address`` (``HOST:PORT`` of the cluster's head; null
    means Ray's ``auto``: ``RAY_ADDRESS``, else a cluster started on this machine), ``max_retries``
    (runs of a task again after its worker died) and, if present, ``runtime_env`` and ``namespace``
    (passed to ``ray.init`` as they are). A new cluster is never started: nothing reachable at the
    address stops the command with one line and status 2.
    """

    def __init__(self, conf: Any) -> None:
        try:
            self._connect(conf)
        except RayBackendError as error:
            fail(error)
        self.max_retries = int(_field(conf, "max_retries", 3))
        self._remote: dict[Callable, Any] = {}
        self._refs: list[Any] = []  # every task submitted, to cancel those left at an early stop

    @staticmethod
    def check(conf: Any) -> str:
        """What can be checked before a sweep starts (Ray there, an address that answers); returns
        the address; raises RayBackendError."""
        if ray is None:
            raise RayBackendError(
                "hydra.launcher.backend=ray needs Ray in this environment: pip install 'xorexp[ray]'"
            )
        address = str(_field(conf, "address") or "auto")
        if address == "local":  # Ray would start a new cluster here: not what this backend is for
            raise RayBackendError(
                "hydra.launcher.ray.address=local would start a new Ray cluster; give HOST:PORT of a "
                "running one, or use hydra.launcher.backend=local"
            )
        check_reachable(address)
        return address

    @staticmethod
    def _connect(conf: Any) -> None:
        address = RayExecutor.check(conf)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage from here
        kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
        runtime_env = _field(conf, "runtime_env")
        if runtime_env:
            kwargs["runtime_env"] = _plain(runtime_env)
        namespace = _field(conf, "namespace")
        if namespace:
            kwargs["namespace"] = str(namespace)
        try:
            context = ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RayBackendError(
                f"hydra.launcher.ray.address={address}: cannot join the Ray cluster: {first_line}"
            ) from None
        log.info(f"Ray backend: connected to {address} (Ray {ray.__version__}, {_describe(context)})")

    def submit(self, fn: Callable, *args: Any) -> Future:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(max_retries=self.max_retries)(fn)
        ref = remote.remote(*args)
        self._refs.append(ref)
        return ref.future()

    def put(self, value: Any) -> Any:
        """``value`` in the cluster's object store once; pass the returned ref to many tasks."""
        return ray.put(value)

    def cpus(self) -> int:
        """The cluster's CPUs (at least 1)."""
        try:
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        except Exception:
            return 1

    def shutdown(self, cancel: bool = False) -> None:
        """Disconnect this process from the cluster; the cluster keeps running. ``cancel``: the
        launch stops early: tasks not done yet are stopped first (their worker processes killed,
        so none writes a run after this process has ended the sweep's runs)."""
        if cancel:
            left = [ref for ref in self._refs if not ray.wait([ref], timeout=0)[0]]
            for ref in left:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    log.debug("could not cancel a task", exc_info=True)
            if left:
                ray.wait(left, num_returns=len(left), timeout=CANCEL_WAIT_S)
        self._refs.clear()
        self._remote.clear()
        ray.shutdown()


def task_error(error: BaseException) -> BaseException:
    """What a failed task raised itself (Ray wraps it in a RayTaskError whose text is a traceback)."""
    cause = getattr(error, "cause", None) if ray is not None and isinstance(
        error, ray.exceptions.RayTaskError) else None
    return cause if isinstance(cause, BaseException) else error


def _plain(node: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:
        pass
    return node


def _describe(context: Any) -> str:
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        return f"{int(cpus)} CPUs, {len(ray.nodes())} node(s)"
    except Exception:
        return str(context)
