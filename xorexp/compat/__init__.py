"""The only place xorexp names another package's private internals (a leading underscore, a module
under ``_internal``): one module per package (``mlflow``, ``matplotlib``, ``hydra``, ``futures``).

Each function there says which public path it replaces and what that saves; each falls back to the
public path when the internal is missing or changed, so a new release of a package costs speed,
never a crash. ``tests/test_compat.py`` holds every internal to the installed versions and fails
when a private name of those packages appears anywhere else in ``xorexp/`` or ``hydra_plugins/``.

``XOREXP_PUBLIC_ONLY`` (``all``, or package names separated by commas: ``mlflow,matplotlib``) turns
the internals of those packages off: xorexp then takes the public paths only (the tests compare both).

``unsupported`` turns an ImportError or AttributeError raised inside a dependency (a release outside
the range xorexp declares) into one line naming the package, its version and the supported range.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import sys
from pathlib import Path

# distributions whose range pyproject.toml declares, by the top-level module a traceback shows
_DISTRIBUTIONS = {
    "mlflow": "mlflow",
    "matplotlib": "matplotlib",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "numpy": "numpy",
    "optuna": "optuna",
    "sqlalchemy": "SQLAlchemy",
    "alembic": "alembic",
    "pandas": "pandas",
    "contourpy": "contourpy",
    "yaml": "PyYAML",
    "isal": "isal",
    "cloudpickle": "cloudpickle",
}


PUBLIC_ONLY_ENV = "XOREXP_PUBLIC_ONLY"


class Unsupported(RuntimeError):
    """A dependency's release lacks what xorexp needs and has no public way to it: str() is the line."""


def private_ok(package: str) -> bool:
    """Whether xorexp may use ``package``'s internals (not named by ``XOREXP_PUBLIC_ONLY``)."""
    named = {name.strip() for name in os.environ.get(PUBLIC_ONLY_ENV, "").split(",")}
    return not (named & {package, "all"})


@functools.cache
def declared_range(distribution: str) -> str:
    """The version range xorexp's metadata declares for ``distribution`` (e.g. ``>=3.10,<3.19``)."""
    try:
        requirements = importlib.metadata.requires("xorexp") or []
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    wanted = distribution.lower().replace("_", "-")
    for requirement in requirements:
        if ";" in requirement:  # an extra's
            continue
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", requirement)
        if match and match.group(1).lower().replace("_", "-") == wanted:
            return match.group(3).strip() or "any"
    return "unknown"


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(distribution: str) -> str:
    """``mlflow 3.0.0 (xorexp supports >=3.10,<3.19)``."""
    version, wanted = installed_version(distribution), declared_range(distribution)
    return f"{distribution} {version} (xorexp supports {wanted})"


def culprit(error: BaseException) -> str | None:
    """The declared distribution inside which ``error`` was raised (its innermost frame in that
    package, or the module an ImportError names), None if none of them."""
    names = []
    module_name = getattr(error, "name", None)
    if isinstance(error, ImportError) and module_name:
        names.append(module_name.split(".")[0])
    if isinstance(error, AttributeError) and getattr(error, "obj", None) is not None:
        owner = error.obj if isinstance(error.obj, type) else type(error.obj)
        names.append(getattr(owner, "__module__", "").split(".")[0])
    tb = error.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    names += [name.split(".")[0] for name in reversed(frames)]
    own = {"xorexp", "hydra_plugins", "__main__"}
    for name in names:
        if name in own:
            continue
        if name in _DISTRIBUTIONS:
            return _DISTRIBUTIONS[name]
    return None


def unsupported(error: BaseException) -> str | None:
    """One line for an ImportError/AttributeError raised by a declared dependency (a release xorexp
    does not support), None for any other error."""
    if isinstance(error, Unsupported):
        return str(error)
    if not isinstance(error, ImportError | AttributeError):
        return None
    distribution = culprit(error)
    if distribution is None:
        return None
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{describe(distribution)}: {type(error).__name__}: {first}: install a supported set with "
        f"pip install -c constraints/tested.txt -e {Path(__file__).resolve().parents[2]}"
    )


def loaded(module: str):
    """``sys.modules[module]`` if this process imported it, else None (nothing is imported here)."""
    return sys.modules.get(module)
