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
    from sparsify.recipe.teacher import teacher_recipe

    recipe = load_recipe(plan.recipe, plan.recipe_args)
    out: dict[str, Any] = {"recipe_as_applied": recipe.summary()}
    if plan.teacher == "auto":
        phase = teacher_recipe(recipe)
        out["dense_teacher"] = (
            {"epochs": phase.max_epochs, "then": "the student starts from it and distils from it"}
            if phase is not None else
            "none: the recipe does not prune gradually with distillation")
    return out
