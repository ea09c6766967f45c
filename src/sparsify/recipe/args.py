"""``--recipe-args``: a JSON object or ``k=v,k2=v2`` (pure)."""

from __future__ import annotations

import json
from typing import Any

from sparsify.errors import RecipeError


def _scalar(text: str) -> Any:
    # int, then float (YAML 1.1 would leave "1e-4" a string), then true/false, else the text.
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def json_object(text: str, option: str, error: type[Exception], usage: str) -> dict[str, Any]:
    """``text`` as a JSON object, for an option that takes one.

    Raises:
        error: not JSON (where it broke and ``usage``), or JSON that is not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{option} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}. "
                    f"{usage}") from None
    if not isinstance(value, dict):
        raise error(f"{option} must be a JSON object, got {text!r}.")
    return value


def parse_recipe_args(text: str | None) -> dict[str, Any]:
    """Parse ``--recipe-args``.

    Raises:
        RecipeError: not a JSON object and not a ``k=v`` list (with the offending part named).
    """
    if text is None or not text.strip():
        return {}
    stripped = text.strip()
    if stripped.startswith("{") or stripped.startswith("["):
        value = json_object(stripped, "--recipe-args", RecipeError,
                            'Use a JSON object (\'{"num_epochs": 12}\') or k=v pairs '
                            "(num_epochs=12,init_lr=1e-4).")
        for key in value:
            if not isinstance(key, str) or not key.isidentifier():
                raise RecipeError(f"--recipe-args key {key!r} is not a variable name.")
        return value
    out: dict[str, Any] = {}
    for part in stripped.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise RecipeError(
                f"--recipe-args part {part.strip()!r} is not 'name=value'. "
                "Use k=v pairs (num_epochs=12,init_lr=1e-4) or a JSON object."
            )
        if key in out:
            raise RecipeError(f"--recipe-args sets '{key}' twice.")
        out[key] = _scalar(raw.strip())
    return out
