"""The one error hierarchy of the project.

Only the CLI turns these into exit codes: 2 for usage errors (what the user typed is wrong),
1 for failures of a run (data, model, export). Every message names what was given, what is
valid, and what to do next; ``hint`` carries the "what to do next" when it is long.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SparsifyError(Exception):
    """Base of every error the tool reports to a user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(SparsifyError):
    """The command line is wrong (exit code 2)."""

    exit_code = 2


class UseCaseError(UsageError):
    """Unknown use case."""


class OptimLevelError(UsageError):
    """Optim level outside [0, 1] / (1, 100]."""


class StubError(UsageError):
    """Malformed or unsafe ``zoo:`` stub."""


class TrainKwargsError(UsageError):
    """Bad ``--train-kwargs``."""


class RecipeError(UsageError):
    """One or more problems in a recipe, reported together.

    Attributes:
        problems: every problem found, each prefixed with where it is.
    """

    def __init__(self, problems: Iterable[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"Recipe problem{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} recipe problems{where}:\n{lines}"
        super().__init__(message)


class ModelNotFoundError(SparsifyError):
    """No source could provide the model."""


class DataError(SparsifyError):
    """The training data is missing or malformed."""


class MissingExtraError(SparsifyError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed.",
            hint=f"Install it with: pip install 'sparsify-transfer[{extra}]'",
        )
        self.package = package
        self.extra = extra


class ExportError(SparsifyError):
    """ONNX export or its checks failed."""


class TrainingError(SparsifyError):
    """Training failed (e.g. the loss became NaN)."""


def did_you_mean(given: str, valid: Iterable[str], n: int = 1) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest valid name, or an empty string."""
    matches = difflib.get_close_matches(given, list(valid), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
