"""A real Ray cluster for tests and benchmarks, started here and kept on loopback.

Ray does not stay on 127.0.0.1 when asked (``ray start --node-ip-address=127.0.0.1`` still picked the
machine's address, bound its servers to ``*`` and probed 8.8.8.8:53 to find its address), so the
cluster runs in namespaces of its own (``unshare``, as root): a network namespace whose only
interface is ``lo``, where 127.0.0.1 is the only address there is, and a PID namespace, so that
killing the ``unshare`` process kills every process of the cluster. Every command that talks to the
cluster (the CLI, ``ss``) enters those namespaces with ``nsenter``.

A worker-side hook (a ``sitecustomize`` on the cluster's PYTHONPATH, not in the package) counts the
chunks the workers train, and can make one task kill its own worker process, once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tests.conftest import ROOT

RAY_PORT = 6379  # inside the cluster's own network namespace, where nothing else listens

# Imported by every Python process of the cluster; acts only in a process that imports a module of FAULTS.
# Each fault wraps one function: every call is counted in <faults>/calls-<function>.log; an armed fault
# (the file <faults>/<arm file> exists, holding the call number per process it fires at, default 1)
# fires once: the process dies (os._exit, as if its machine were lost) or the call raises.
WORKER_HOOK = '''
import importlib.abc, importlib.util, os, sys

FAULTS = os.environ.get("XOREXP_TEST_FAULTS")
# module -> [(function, arm file, action)]
POINTS = {
    "xorexp.chunks": [("train_chunk", "arm", "exit")],
    "xorexp.tracking.writing": [
        ("log_result", "arm-exit-log", "exit"),
        ("start_run", "arm-exit-created", "exit-after"),
    ],
    "hydra_plugins.xorexp_vectorized_launcher._hydra_job": [("run_job", "arm-raise-job", "raise")],
}
CALLS = {}


def _wrap(real, function, arm, action):
    def wrapper(*args, **kwargs):
        CALLS[function] = CALLS.get(function, 0) + 1
        size = len(args[0]) if function == "train_chunk" else 1
        with open(os.path.join(FAULTS, "calls.log" if function == "train_chunk" else f"calls-{function}.log"),
                  "a") as calls:
            calls.write(f"{os.getpid()} {size}\\n")
        path = os.path.join(FAULTS, arm)
        try:
            at = int(open(path).read().strip() or 1)
        except (OSError, ValueError):
            return real(*args, **kwargs)
        if CALLS[function] < at:
            return real(*args, **kwargs)
        try:  # atomic: one call of one sweep takes the fault
            os.rename(path, os.path.join(FAULTS, "fired" if arm == "arm" else f"fired-{arm[4:]}"))
        except FileNotFoundError:
            return real(*args, **kwargs)
        if action == "exit":
            os._exit(1)
        if action == "exit-after":  # the call's effect (the run created) lands, its caller never knows
            real(*args, **kwargs)
            os._exit(1)
        raise RuntimeError(f"injected fault in {function}")

    return wrapper


class _Patch(importlib.abc.MetaPathFinder):
    """After a module of POINTS is imported, wrap its functions."""

    def find_spec(self, name, path, target=None):
        if name not in POINTS or not FAULTS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            for function, arm, action in POINTS[name]:
                setattr(module, function, _wrap(getattr(module, function), function, arm, action))

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch())
'''


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    host = host.removeprefix("::ffff:").split("%")[0]
    return host in ("*", "0.0.0.0", "::", "::1") or host.startswith("127.")


class LoopbackRayCluster:
    """``ray start --head`` in new network, PID and mount namespaces whose only interface is lo.

    ``run``/``popen`` run a command inside (``nsenter``); ``stop`` kills the ``unshare`` process,
    which takes every process of the cluster with it, and checks that none is left.
    """

    def __init__(self, workdir: Path, *, num_cpus: int = 2, object_store_bytes: int = 200_000_000,
                 root: Path = ROOT) -> None:
        self.workdir = workdir
        self.root = root  # the checkout the cluster's workers and ``cli`` import xorexp from
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self.faults = workdir / "faults"
        self.address = f"127.0.0.1:{RAY_PORT}"
        self.holder: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.pid_ns: str | None = None
        self.temp_dir: Path | None = None

    def start(self, timeout: float = 120) -> LoopbackRayCluster:
        if os.geteuid() != 0:
            raise RuntimeError("the loopback Ray cluster needs root (unshare --net)")
        for tool in ("unshare", "nsenter", "ip", "ss"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"the loopback Ray cluster needs `{tool}` (util-linux, iproute2)")
        hooks = self.workdir / "worker_hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / "sitecustomize.py").write_text(textwrap.dedent(WORKER_HOOK))
        self.faults.mkdir(exist_ok=True)
        # Ray's unix socket paths live under the temp dir and must fit in 107 bytes: keep it short
        self.temp_dir = Path(tempfile.mkdtemp(prefix="xr-ray-", dir="/tmp"))
        ray_start = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}", f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={self.object_store_bytes}", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
        ]
        env = ray_env(PYTHONPATH=f"{hooks}{os.pathsep}{self.root}", XOREXP_TEST_FAULTS=str(self.faults))
        self.log_path = self.workdir / "ray-head.log"
        with open(self.log_path, "w") as log:
            self.holder = subprocess.Popen(
                ["unshare", "--net", "--pid", "--mount-proc", "--fork", "--kill-child",
                 "bash", "-c", f"ip link set lo up && {' '.join(ray_start)}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError(f"ray start exited {self.holder.returncode}:\n{self.log_path.read_text()}")
            if self.init_pid is None:
                pid = self.holder.pid
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if children:
                    self.init_pid = int(children[0])
                    self.pid_ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
            if "Ray runtime started" in self.log_path.read_text():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Ray cluster did not start in {timeout} s:\n{self.log_path.read_text()}")

    def enter(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the cluster's namespaces (e.g. a server its workers can reach)."""
        return self._enter(argv, None)

    def _enter(self, argv: list[str], cwd: Path | None) -> list[str]:
        wd = [f"--wd={cwd}"] if cwd is not None else []
        return ["nsenter", f"--target={self.init_pid}", "--net", "--pid", "--mount", *wd, "--", *argv]

    def run(self, argv: list[str], *, cwd: Path | None = None, timeout: float = 60, env: dict | None = None):
        return subprocess.run(
            self._enter(argv, cwd), capture_output=True, text=True, timeout=timeout, env=env or ray_env(),
            stdin=subprocess.DEVNULL,
        )

    def popen(self, argv: list[str], *, cwd: Path, env: dict, stdout, stderr) -> subprocess.Popen:
        return subprocess.Popen(self._enter(argv, cwd), env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL)

    def interfaces(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]

    def sockets(self) -> list[tuple[str, str, str]]:
        """(state, local, peer) of every TCP and UDP socket in the cluster's network namespace."""
        out = self.run(["ss", "-Htuan"]).stdout
        rows = [line.split() for line in out.splitlines()]
        return [(row[1], row[4], row[5]) for row in rows if len(row) >= 6]

    def processes(self) -> list[int]:
        """Pids (as seen from here) of the processes still in the cluster's PID namespace."""
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "pid") == self.pid_ns:
                        left.append(int(entry.name))
                except OSError:
                    continue
        return left

    def stop(self, timeout: float = 20) -> list[int]:
        """Kill the cluster; the pids still in its namespace after ``timeout`` (none expected)."""
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()  # --kill-child: the namespace's init dies, and every process in it
        if self.holder is not None:
            self.holder.wait(timeout)
        left: list[int] = []
        deadline = time.monotonic() + timeout
        while self.pid_ns is not None and time.monotonic() < deadline:
            left = self.processes()
            if not left:
                break
            time.sleep(0.2)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def chunk_calls(self) -> list[str]:
        """One line ``<worker pid> <runs>`` per chunk the cluster's workers trained (worker hook)."""
        path = self.faults / "calls.log"
        return path.read_text().splitlines() if path.is_file() else []

    def cli(self, cwd: Path, *args: str, timeout: float = 600, sample_sockets: bool = False,
            private: Path | None = None):
        """``python -m xorexp args`` inside, on this cluster; (CompletedProcess-like, sockets seen).

        ``private``: a directory the command sees as an empty tmpfs of its own (a mount namespace of
        its own), while the cluster's workers see the real one: as if they ran on another machine."""
        argv = [sys.executable, "-m", "xorexp", *args, "hydra.launcher.backend=ray",
                f"hydra.launcher.ray.address={self.address}", f"hydra.sweep.dir={cwd}/multirun"]
        if private is not None:
            mount = 'mount -t tmpfs xorexp-private "$0" && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", mount, str(private),
                    *argv]
        out, err = cwd / "cli.out", cwd / "cli.err"
        seen: set[tuple[str, str, str]] = set()
        with open(out, "w") as stdout, open(err, "w") as stderr:
            env = ray_env(PYTHONPATH=str(self.root))
            proc = self.popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise TimeoutError(f"{argv} ran over {timeout} s")
                if sample_sockets:
                    seen.update(self.sockets())
                time.sleep(0.3)
        proc.stdout, proc.stderr = out.read_text(), err.read_text()
        return proc, seen


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of the cluster and of every command run on it. ``RAY_AUTH_MODE=disabled``: Ray
    2.60 turns token authentication on by itself in any process that finds ``~/.ray/auth_token`` when
    the variable is unset, and any ``ray.init()`` on the machine may create that file: a cluster started
    before it appeared then refused the sweep's driver ("InvalidAuthToken: Authentication token is
    missing or incorrect", seen 2026-12-01 when another developer's Ray run made the file mid-suite).
    The cluster is on loopback in its own network namespace: no authentication needed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}
