"""How a command of xorexp stops: one line on stderr and an exit status, never a traceback.

Imported by the app, the callbacks and the Hydra plugins alike; it imports nothing of xorexp.

- ``ConfigError``: bad input, found before anything is created (exit 2).
- ``Abort``: stop the command now, from anywhere, with one line and a status. It is a
  ``BaseException`` on purpose: Hydra's job runner and its callback dispatcher catch ``Exception``
  (a job's error becomes a failed job, a callback's a warning), and neither must swallow this.
- ``Interrupted``: Ctrl-C (SIGINT) or SIGTERM; a ``KeyboardInterrupt``, so every library's own
  clean-up for Ctrl-C runs for SIGTERM too.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

BAD_INPUT = 2  # bad input or an unusable store, found before anything was created
FAILED = 1  # jobs failed, or the store failed during the command


class ConfigError(ValueError):
    """Bad input: str(error) is the one line shown to the user."""


class Abort(BaseException):
    """Stop the command with one line (``message``, shown after ``xorexp: ``) and ``status``."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by a signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum  # 130 for Ctrl-C, 143 for SIGTERM

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


def fail(error: Exception | str, status: int = BAD_INPUT) -> NoReturn:
    """Stop the command with one line; status 2 (bad input or unusable store) by default."""
    raise Abort(str(error), status)


def say(message: str) -> None:
    """One line for the user on stderr, prefixed ``xorexp:``."""
    print(f"xorexp: {message}", file=sys.stderr, flush=True)


def unwrapped(error: BaseException) -> BaseException:
    """The interrupt behind an error, if a library turned one into its own exception (Hydra makes a
    Ctrl-C or SIGTERM that lands in OmegaConf while it composes a job's config a
    ``ConfigCompositionException``); else the error itself."""
    if isinstance(error, Abort):  # xorexp's own decision, whatever it was handling: it stands
        return error
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return error
