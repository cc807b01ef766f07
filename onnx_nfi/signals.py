"""Ctrl-C and SIGTERM held while something must run whole (a database write and what follows it,
a scan-state file, the scan's statistics update), then acted on as the handler in place would have.

Signals are handled by Python in the main thread between bytecodes, so holding them means
swapping in a handler that records the signal; the held one is delivered when the block ends.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")


class SignalHold:
    """Inside, Ctrl-C and SIGTERM act as usual until a model's results start being written
    (``hold_signals()``); from then on they are recorded instead of raised, so neither the
    transaction nor what the holder does after it (bringing FAISS in step, the summary) is cut
    short, and the holder can say that the results were written. After the context,
    ``deliver()`` acts on the first one held as the handler in place would have. Signals are
    handled by the main thread only: in any other thread nothing is held."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalHold:
        self._token = _HOLD.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _HOLD.reset(self._token)
        for signum, handler in self._previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)

    def hold(self) -> None:
        """Record the signals from now on (once; main thread only)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: object) -> None:
        self.received = self.received or signum

    @property
    def holding(self) -> bool:
        """Whether signals are being recorded (the write has begun)."""
        return bool(self._previous)

    def deliver(self) -> None:
        """Act on the signal held, if any (once): raise (Ctrl-C, a Python handler) or end the process
        (the default action)."""
        signum, self.received = self.received, None
        handler = self._previous.get(signum) if signum is not None else None
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:  # put the default back first: while held, ours would just record it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


#: The SignalHold around the command running now, if any.
_HOLD: ContextVar[SignalHold | None] = ContextVar("signal_hold", default=None)


def hold_signals() -> None:
    """From here to the end of the current SignalHold (if there is one), Ctrl-C and SIGTERM wait."""
    hold = _HOLD.get()
    if hold is not None:
        hold.hold()


@contextmanager
def signals_wait() -> Iterator[None]:
    """Inside, Ctrl-C and SIGTERM wait for the block to end and then act as they would have (or,
    inside a SignalHold that already holds them, are left to it): what runs inside, a file being
    written, is never torn by a signal."""
    owner = _HOLD.get()
    if owner is not None and owner.holding:
        yield
        return
    with SignalHold() as local:
        local.hold()
        yield
    local.deliver()


def current_hold() -> SignalHold | None:
    """The SignalHold around the command running now, if any."""
    return _HOLD.get()


def future_result(future: Future[T]) -> T:
    """``future.result()``, with a Ctrl-C or SIGTERM kept as what it is. A handler that raises while
    ``Condition.wait`` takes its lock back leaves the ``with`` block releasing a lock it does not hold:
    Python then reports "cannot release un-acquired lock" (RuntimeError) in place of the interrupt,
    and everything that saves work on an interrupt would not see one. The interrupt is raised again."""
    try:
        return future.result()
    except RuntimeError as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        raise
