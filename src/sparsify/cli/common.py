"""What every console script shares: turning a ``SparsifyError`` into one ``Error:`` line, a
``Hint:`` line and the error's exit code (2 for usage errors, 1 for failures)."""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click

from sparsify.errors import SparsifyError


def fail(error: SparsifyError, debug: bool) -> NoReturn:
    """Print ``error`` (with its traceback under ``--debug``) and exit with its code."""
    if debug:
        traceback.print_exc()
    click.secho(f"Error: {error.message}", fg="red", err=True)
    if error.hint:
        click.echo(f"Hint: {error.hint}", err=True)
    sys.exit(error.exit_code)


def fail_unexpected(exc: BaseException, debug: bool) -> NoReturn:
    """A bug or an unforeseen failure: say so cleanly, exit 1."""
    if debug:
        traceback.print_exc()
    click.secho(f"Error: unexpected failure: {type(exc).__name__}: {exc}", fg="red", err=True)
    click.echo("Hint: run again with --debug for the traceback, and report it if it looks "
               "like a bug.", err=True)
    sys.exit(1)
