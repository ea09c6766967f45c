"""The recipe as it would be applied, for ``--dry-run`` (pure, no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparsify.recipe.parser import load_recipe

if TYPE_CHECKING:
    from sparsify.plan import Plan


def preview_recipe(plan: Plan) -> dict[str, Any]:
    """``{"recipe_as_applied": {...}}``: epochs, QAT start, modifiers, overrides.

    Raises:
        RecipeError: the recipe cannot be read or has problems (all listed).
    """
    recipe = load_recipe(plan.recipe, plan.recipe_args)
    return {"recipe_as_applied": recipe.summary()}
