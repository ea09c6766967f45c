"""--teacher auto: a dense fine-tune first (no pruning, no QAT, its own checkpoints), the teacher
frozen, the student starting from it, and no teacher when it learned nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify.pipeline import train_teacher
from sparsify.plan import build_plan
from sparsify.recipe.parser import load_recipe
from sparsify.recipe.teacher import teacher_recipe
from sparsify.trainers.base import TrainResult
from sparsify.usecases import resolve_use_case


class FakeTask:
    """Records what the pipeline asks; 'training' shifts the weights and sets the metric."""

    def __init__(self, teacher_top1: float) -> None:
        self.model = nn.Linear(4, 3)
        self.run_dir = Path("unused-run-folder")  # only a resumed run reads it
        self.teacher_top1 = teacher_top1
        self.calls: list[tuple[str, object]] = []

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"top1": 0.40}

    def train(self, recipe, teacher, phase="main", resume=None) -> TrainResult:
        self.calls.append((phase, recipe))
        with torch.no_grad():
            self.model.weight.add_(1.0)
        return TrainResult({"top1": self.teacher_top1}, {"top1": self.teacher_top1}, 3, 3)


def _plan():
    return build_plan(resolve_use_case("ic"), 0.5, model="resnet18")


def test_teacher_phase_trains_a_dense_copy_and_the_student_starts_from_it():
    recipe = load_recipe("image_classification_gmp", {"target_sparsity": 0.78})
    task = FakeTask(teacher_top1=0.85)
    start = copy.deepcopy(task.model)
    original = task.model
    teacher, dense = train_teacher(_plan(), task, recipe)
    (phase, phase_recipe), = task.calls
    assert phase == "teacher"
    kinds = {m.type for m in phase_recipe.modifiers}
    assert kinds == {"EpochRangeModifier", "LearningRateFunctionModifier"}  # dense, FP32
    assert phase_recipe.max_epochs == recipe.variables["teacher_epochs"] == 10  # num_epochs
    assert dense.metrics["top1"] == 0.85 and dense.used
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())  # frozen
    # the student starts from the fine-tuned weights, as its own trainable copy
    assert task.model is not teacher and task.model is not original
    assert torch.equal(task.model.weight, teacher.weight)
    assert not torch.equal(task.model.weight, start.weight)
    assert all(p.requires_grad for p in task.model.parameters())
    assert torch.equal(original.weight, start.weight)  # the starting model itself untouched


def test_a_teacher_no_better_than_the_start_is_not_used():
    recipe = load_recipe("image_classification_gmp", {"target_sparsity": 0.78})
    task = FakeTask(teacher_top1=0.40)
    original = task.model
    teacher, dense = train_teacher(_plan(), task, recipe)
    assert teacher is None and dense is not None and not dense.used
    assert task.model is original  # the student trains from the starting model


@pytest.mark.parametrize("name", ["image_classification_finetune", "image_classification_quant",
                                  "image_classification_transfer", "detection_gmp"])
def test_recipes_without_gradual_pruning_and_distillation_get_no_teacher(name):
    assert teacher_recipe(load_recipe(name, {})) is None


def test_teacher_epochs_is_a_recipe_variable():
    recipe = load_recipe("nlp_gmp", {"teacher_epochs": 5, "init_lr": 1e-4})
    phase = teacher_recipe(recipe)
    assert phase.max_epochs == 5
    lr = phase.of_type("LearningRateFunctionModifier")[0].build()
    assert lr.init_lr == pytest.approx(1e-4) and lr.lr_func == "linear"
    assert phase.of_type("SetWeightDecayModifier")


def test_dry_run_shows_the_teacher_phase():
    from sparsify.recipe.preview import preview_recipe

    plan = build_plan(resolve_use_case("ic"), 0.5, model="resnet18",
                      recipe_args={"num_epochs": 20})
    plan.recipe = "image_classification_gmp"
    out = preview_recipe(plan)
    assert out["dense_teacher"]["epochs"] == 20  # teacher_epochs = num_epochs
    plan.teacher = "disable"
    assert "dense_teacher" not in preview_recipe(plan)
