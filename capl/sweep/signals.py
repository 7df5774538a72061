"""Stopping a sweep on SIGTERM the way Ctrl-C stops it: the running point stays unrecorded.

SLURM sends SIGTERM at a job's time limit or on preemption. Lightning's own handler only sets a
flag and raises ``SIGTERMException`` (a ``SystemExit``) at the next batch boundary, which the
runner would record as a failed point before going on with the next one; outside the loops (a
benchmark, an export) the signal is not acted on at all. :func:`stops_on_sigterm` instead turns
SIGTERM into :class:`Interrupted`, a ``KeyboardInterrupt``: Lightning shuts the run down as for
Ctrl-C, the runner records nothing for the point (a rerun does it again) and the sweep stops.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

__all__ = ["INTERRUPTED_MESSAGE", "Interrupted", "exit_code", "stops_on_sigterm"]

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED_MESSAGE = "interrupted; rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """A sweep stopped by a signal (``signum``); handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def stops_on_sigterm(function: F) -> F:
    """Run ``function`` with SIGTERM raising :class:`Interrupted` (main thread only)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)
        previous = signal.signal(signal.SIGTERM, _raise)
        try:
            return function(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit status for a process stopped by this signal (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)
