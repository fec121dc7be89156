"""xorexp: hyperparameter sweeps of small XOR networks, every run tracked in MLflow."""

import sys as _sys


def _unsupported_dependency(kind, error, tb):
    """``sys.excepthook``: a dependency outside the declared range that fails to import (or lacks a
    name) while a command starts is one ``xorexp:`` line, not a traceback."""
    from xorexp.compat import unsupported

    line = unsupported(error) if error is not None else None
    if line is None:
        _previous_hook(kind, error, tb)
        return
    print(f"xorexp: {line}", file=_sys.stderr, flush=True)


_previous_hook = _sys.excepthook
_sys.excepthook = _unsupported_dependency
