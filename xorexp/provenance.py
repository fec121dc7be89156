"""Where a run's numbers came from, beyond its config: code, versions, machine, command.

Computed once per process (``functools.cache``): logging a run only copies a dict. Nothing here
imports MLflow; ``run_logging`` turns this into a run's tags and artifacts.

Anything that can change a run's bits and is not in its config is recorded: the commit and the
uncommitted changes of the checkout the code ran from, the versions of Python and the libraries,
the platform, the BLAS NumPy was built with, and the SIMD targets NumPy's loops dispatch to on
this CPU (``exp`` on AVX-512 and on AVX2 can differ in the last bit).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xorexp.tracking.uri import redact

PROJECT_DIR = Path(__file__).resolve().parent.parent

TAG_DIRTY = "xorexp.git.dirty"  # "true" / "false"; absent outside a git checkout
TAG_DIFF_HASH = "xorexp.git.diff_sha256"  # of the diff artifact, when dirty
TAG_COMMAND = "xorexp.command"
TAG_PLATFORM = "xorexp.platform"
TAG_BLAS = "xorexp.numpy.blas"
TAG_SIMD = "xorexp.numpy.simd"
TAG_DISPATCH = "xorexp.numpy.dispatch"
VERSION_PREFIX = "xorexp.version."
DISTRIBUTIONS = ("numpy", "hydra-core", "mlflow", "xorexp")
DIFF_ARTIFACT = "provenance/git_diff.patch"

# the float64 ufuncs the engine calls; their dispatch target is what differs between CPUs
ENGINE_UFUNCS = ("exp", "log", "divide", "add", "subtract", "multiply", "negative")
COMMAND_ENV = "XOREXP_COMMAND"  # the launching process's command, inherited by its worker processes
MAX_TAG = 5000  # MLflow tag values hold 8,000 characters
MAX_DIFF_BYTES = 5_000_000
_adopted_command: str | None = None  # a launcher's task process: its launching process's command


@dataclass(frozen=True)
class Checkout:
    """State of the git checkout xorexp's code runs from."""

    commit: str
    dirty: bool
    diff: str  # ``git diff HEAD`` plus the list of untracked files; "" when clean


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(PROJECT_DIR), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def checkout() -> Checkout | None:
    """The checkout's commit, dirty flag and diff; None outside a git checkout (or without git)."""
    if not (PROJECT_DIR / ".git").exists():
        return None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=normal")
    if not commit or status is None:
        return None
    if not status.strip():
        return Checkout(commit.strip(), False, "")
    diff = _git("diff", "--no-color", "--no-ext-diff", "HEAD") or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard") or "").splitlines()
    if untracked:
        diff += "\n# untracked files (contents not included):\n" + "".join(f"# {p}\n" for p in untracked)
    if len(diff) > MAX_DIFF_BYTES:
        diff = diff[:MAX_DIFF_BYTES] + f"\n# truncated at {MAX_DIFF_BYTES} characters\n"
    return Checkout(commit.strip(), True, diff)


def git_commit() -> str | None:
    """Commit of the checkout xorexp runs from, or None outside a git checkout."""
    state = checkout()
    return state.commit if state else None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def command() -> str:
    """The command line of the launching process (a worker process reports its launcher's)."""
    if _adopted_command is not None:
        return _adopted_command
    inherited = os.environ.get(COMMAND_ENV)
    if inherited and multiprocessing.parent_process() is not None:
        return inherited
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is not None and main_spec.name:
        module = main_spec.name.removesuffix(".__main__")
        argv = ["python", "-m", module, *sys.argv[1:]]
    else:
        argv = ["python", *sys.argv]
    text = shlex.join(argv)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 3] + "..."


def adopt_command(text: str) -> None:
    """This process runs jobs of the launching process whose command is ``text`` without being its
    child (a Ray task's worker): its runs' ``xorexp.command`` is that command, not the worker's."""
    global _adopted_command
    _adopted_command = text
    process_command.cache_clear()


def numpy_build() -> dict[str, str]:
    """BLAS name and version, SIMD extensions found, and the targets of the engine's ufuncs."""
    config = np.show_config(mode="dicts") or {}
    blas = config.get("Build Dependencies", {}).get("blas", {})
    simd = config.get("SIMD Extensions", {})
    out = {
        TAG_BLAS: f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip(),
        TAG_SIMD: f"baseline {' '.join(simd.get('baseline', []))}; found {' '.join(simd.get('found', []))}",
    }
    try:
        from numpy.lib import introspect

        pattern = "^(" + "|".join(ENGINE_UFUNCS) + ")$"
        info = introspect.opt_func_info(func_name=pattern, signature="^d+$")
        out[TAG_DISPATCH] = " ".join(
            f"{name}:{targets['current']}"
            for name in ENGINE_UFUNCS
            for targets in info.get(name, {}).values()
        )
    except (ImportError, AttributeError):  # NumPy < 2.0 has no introspect
        pass
    return out


@functools.cache
def environment_tags() -> dict[str, str]:
    """Tags of everything outside the config that shapes a run (the commit apart: ``git_commit``)."""
    tags = {
        f"{VERSION_PREFIX}python": platform.python_version(),
        **{f"{VERSION_PREFIX}{name}": _version(name) for name in DISTRIBUTIONS},
        TAG_PLATFORM: platform.platform(),
        **numpy_build(),
    }
    state = checkout()
    if state is not None:
        tags[TAG_DIRTY] = str(state.dirty).lower()
        if state.dirty:
            tags[TAG_DIFF_HASH] = hashlib.sha256(state.diff.encode()).hexdigest()[:16]
    return tags


@functools.cache
def process_command() -> str:
    """``command()``, once per process; a launching process passes it on to its workers."""
    text = command()
    if multiprocessing.parent_process() is None:
        os.environ[COMMAND_ENV] = text
    return text


def tags() -> dict[str, str]:
    """Provenance tags of a run."""
    return {**environment_tags(), TAG_COMMAND: redact(process_command())}


def artifacts() -> dict[str, str]:
    """Provenance artifacts of a run: the diff of a dirty checkout (the same text for every run)."""
    state = checkout()
    if state is None or not state.dirty:
        return {}
    return {DIFF_ARTIFACT: state.diff}


# tags that say which environment a run came from; replay compares them with its own
ENVIRONMENT_KEYS = (
    *(f"{VERSION_PREFIX}{name}" for name in ("python", *DISTRIBUTIONS)),
    TAG_PLATFORM,
    TAG_BLAS,
    TAG_SIMD,
    TAG_DISPATCH,
    TAG_DIRTY,
    TAG_DIFF_HASH,
)
