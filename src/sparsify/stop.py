"""Stopping a training cleanly: Ctrl-C (SIGINT) or SIGTERM asks the training loop to stop at
its next optimizer step, where it writes a resumable checkpoint; a second signal stops at once.

Light: no torch. The CLI turns the exceptions into exit codes (130 for Ctrl-C, 143 for
SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send), handled like Ctrl-C."""


class Stopped(KeyboardInterrupt):
    """Training stopped at a step boundary after a signal; a resumable checkpoint was written.
    ``terminated`` tells SIGTERM from Ctrl-C."""

    def __init__(self, terminated: bool, message: str = "") -> None:
        super().__init__()
        self.terminated = terminated
        #: the one line the CLI prints (set by the pipeline: where to resume from)
        self.message = message


_requested: list[int] = []


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    if _requested:  # the second signal: stop now
        raise _interrupt(signum)
    _requested.append(signum)


def requested() -> int | None:
    """The signal that asked training to stop, or None."""
    return _requested[0] if _requested else None


@contextmanager
def graceful() -> Iterator[None]:
    """While training: the first SIGINT / SIGTERM only sets :func:`requested` (the loop checks
    it after each optimizer step); the second raises at once. Outside the main thread
    (signals cannot be caught there) signals keep their usual effect."""
    _requested.clear()
    try:
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


def stop_now() -> Stopped:
    """The exception a loop raises once its checkpoint is written (the first signal's kind)."""
    return Stopped(terminated=requested() == signal.SIGTERM)
