"""The entry point: ``python -m xorexp`` (one run) or ``python -m xorexp -m ...`` (a sweep).

``cli`` is what ``python -m xorexp`` runs: Hydra's app (``main``) inside a guard that turns every
way a command can stop into one ``xorexp:`` line and an exit status (0 done, 1 failed jobs or a
failed store, 2 bad input or unusable store, 130 Ctrl-C, 143 SIGTERM). Full tracebacks go to log
files, never to the terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from xorexp import compat, sweep
from xorexp.config import register, to_run_spec
from xorexp.errors import BAD_INPUT, FAILED, Abort, ConfigError, Interrupted, fail, say, unwrapped
from xorexp.job import current_handover, run_tracked
from xorexp.subprocesses import quick_teardown

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """The task function: one job. Under the vectorized launcher the job's spec comes checked with
    the launcher's handover (``job.current_handover``); otherwise (a single run, another launcher) it is
    checked here, once."""
    handover = current_handover()
    if handover is not None:
        return run_tracked(cfg, handover.spec, handover)
    try:
        spec = to_run_spec(cfg)
    except ConfigError as error:
        fail(error)
    return run_tracked(cfg, spec)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


REDELIVERY_S = 0.05  # how soon an interrupt a finalizer dropped comes again
_dropped: list[int] = []  # signals whose Interrupted a finalizer dropped, not seen by ``cli`` since


def _interrupt_dropped(unraisable) -> None:
    """``sys.unraisablehook``. A signal's handler runs in whatever Python code the main thread is
    in, a finalizer too (a weakref callback, a ``__del__``, run when an object goes), and Python
    drops an exception raised there ("Exception ignored in ..."): the command would go on as if the
    signal never came. Such an Interrupted is sent again from another thread, shortly, so that it
    lands in the command's own code; anything else is reported as Python reports it."""
    error = unraisable.exc_value
    if not isinstance(error, Interrupted):
        sys.__unraisablehook__(unraisable)
        return
    _dropped.append(error.signum)
    timer = threading.Timer(REDELIVERY_S, os.kill, (os.getpid(), error.signum))
    timer.daemon = True
    timer.start()


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _traceback_file(error: BaseException) -> Path:
    """Where the full traceback of an unexpected error is kept: the sweep's log dir, else a temp file."""
    running = sweep.current()
    text = "".join(traceback.format_exception(error))
    if running is not None:
        path = running.sweep_dir / "xorexp_error.txt"
        try:
            path.write_text(text)
            return path
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix="xorexp-error-", suffix=".txt")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return Path(name)


def outcome(error: BaseException) -> tuple[int, str]:
    """The exit status and the one line for an error that stopped the command."""
    error = unwrapped(error)
    if isinstance(error, Abort):
        return error.status, error.message
    if isinstance(error, KeyboardInterrupt):
        interrupt = error if isinstance(error, Interrupted) else Interrupted(signal.SIGINT)
        return interrupt.status, f"interrupted ({interrupt.name})"
    if isinstance(error, ConfigError):
        return BAD_INPUT, str(error)
    unsupported = compat.unsupported(error)  # a dependency outside the declared range
    if unsupported is not None:
        return FAILED, unsupported
    if isinstance(error, HydraException | OmegaConfBaseException):  # bad overrides, unknown keys, ...
        return BAD_INPUT, _one_line(str(error)) or type(error).__name__
    where = _traceback_file(error)
    return FAILED, f"internal error: {type(error).__name__}: {_one_line(str(error))} (traceback: {where})"


def cli() -> None:
    quick_teardown()  # first: its handler runs after every other one
    # Hydra would print an error's traceback and exit 1 itself; it re-raises it to us instead
    os.environ["HYDRA_FULL_ERROR"] = "1"
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    sys.unraisablehook = _interrupt_dropped
    try:
        main()
        if _dropped:  # the command ended before a dropped interrupt came again: it was interrupted
            raise Interrupted(_dropped[0])
    except SystemExit:
        raise
    except BaseException as error:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _dropped.clear()
        error = unwrapped(error)  # an interrupt ends the sweep's runs KILLED, however it reached here
        status, message = outcome(error)
        running = sweep.current()
        if running is not None:
            message = f"{message}: {running.abort(error)}"
        elif getattr(error, "killed_run_id", None):
            message += f": run {error.killed_run_id} marked KILLED"
        say(message)
        sys.exit(status)
