"""The dense teacher's own recipe for ``--teacher auto`` (pure, no torch)."""

from __future__ import annotations

from sparsify.recipe.parser import Recipe


def teacher_recipe(recipe: Recipe) -> Recipe | None:
    """The dense teacher's fine-tune for ``--teacher auto``: ``teacher_epochs`` (a recipe
    variable; default 30% of the epochs of a recipe without it) with the recipe's own LR function, initial
    LR and weight decay, no pruning, no quantization. ``None`` when the recipe has nothing to
    distil (no DistillationModifier or PerLayerDistillationModifier) or nothing a dense teacher helps (no gradual pruning:
    a dense fine-tune, or a pre-sparsified model whose dense original is not here)."""
    from sparsify.recipe.parser import parse_recipe

    kinds = {m.type for m in recipe.modifiers}
    gradual = {"GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier",
               "OBSPruningModifier"}
    if not kinds & {"DistillationModifier", "PerLayerDistillationModifier"} \
            or not kinds & gradual:
        return None
    variables = recipe.variables
    epochs = variables.get("teacher_epochs") or max(1, round(recipe.max_epochs * 0.3))
    lines = ["version: 1.1.0", f"num_epochs: {float(epochs)}", "training_modifiers:",
             "  - !EpochRangeModifier", "      start_epoch: 0.0",
             "      end_epoch: eval(num_epochs)"]
    lr_funcs = recipe.of_type("LearningRateFunctionModifier")
    if "init_lr" in variables:
        lr_func = lr_funcs[0].args.get("lr_func", "cosine") if lr_funcs else "cosine"
        lines += ["  - !LearningRateFunctionModifier", f"      lr_func: {lr_func}",
                  "      start_epoch: 0.0", "      end_epoch: eval(num_epochs)",
                  f"      init_lr: {float(variables['init_lr'])}", "      final_lr: 0.0"]
    if "weight_decay" in variables and recipe.of_type("SetWeightDecayModifier"):
        lines += ["  - !SetWeightDecayModifier", "      start_epoch: 0.0",
                  f"      weight_decay: {float(variables['weight_decay'])}"]
    return parse_recipe("\n".join(lines) + "\n", None, "teacher fine-tune (--teacher auto)")
