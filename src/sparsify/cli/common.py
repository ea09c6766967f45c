"""What every console script shares: turning a ``SparsifyError`` into one ``Error:`` line, a
``Hint:`` line and the error's exit code (2 for usage errors, 1 for failures)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import click

from sparsify.errors import SparsifyError
from sparsify.rundir import launch_rank
from sparsify.stop import Stopped, Terminated


def _rank_prefix() -> str:
    """``[rank N] `` for the other processes of a torchrun / accelerate launch, else empty."""
    rank, world = launch_rank()
    return f"[rank {rank}] " if world > 1 and rank != 0 else ""


def fail(error: SparsifyError, debug: bool) -> NoReturn:
    """Print ``error`` (with its traceback under ``--debug``) and exit with its code."""
    if debug:
        traceback.print_exc()
    prefix = _rank_prefix()
    click.secho(f"{prefix}Error: {error.message}", fg="red", err=True)
    if error.hint:
        click.echo(f"{prefix}Hint: {error.hint}", err=True)
    sys.exit(error.exit_code)


def fail_unexpected(exc: BaseException, debug: bool) -> NoReturn:
    """A bug or an unforeseen failure: say so cleanly, exit 1."""
    if debug:
        traceback.print_exc()
    prefix = _rank_prefix()
    click.secho(f"{prefix}Error: unexpected failure: {type(exc).__name__}: {exc}", fg="red",
                err=True)
    if launch_rank()[1] > 1:
        click.echo(f"{prefix}Hint: under a distributed launch this often follows the failure "
                   "of another process (a closed connection): read every process's message "
                   "first.", err=True)
    click.echo(f"{prefix}Hint: run again with --debug for the traceback, and report it if it "
               "looks like a bug.", err=True)
    sys.exit(1)


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def guarded(debug: bool, body: Callable[[], object]) -> None:
    """Run a command's body; every failure ends as one clean message and its exit code
    (``SparsifyError``: its code; Ctrl-C: 130; SIGTERM: 143; anything else: 1, "unexpected
    failure")."""
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. a test runner): leave SIGTERM alone
        previous = None
    try:
        body()
    except SparsifyError as error:
        fail(error, debug)
    except Stopped as stop:  # a resumable checkpoint was written: the message says how to go on
        click.echo(stop.message or ("Terminated (SIGTERM)." if stop.terminated
                                    else "Interrupted."), err=True)
        sys.exit(143 if stop.terminated else 130)
    except Terminated:
        click.echo("Terminated (SIGTERM).", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure: say so cleanly
        fail_unexpected(exc, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
