"""Resuming the image loop: a training stopped by a signal mid-pruning or mid-QAT and resumed
from its checkpoint ends bit-identical to the uninterrupted one (CPU, no loader workers):
the same weights, masks, sparsity and metrics."""

from __future__ import annotations

import pytest
import torch
from resume_helpers import assert_same_training, schedule, stop_after

from sparsify.plan import build_plan
from sparsify.recipe.parser import parse_recipe
from sparsify.stop import Stopped
from sparsify.trainers import resume as resume_module
from sparsify.trainers.resume import PREVIOUS, RESUME, find_resume
from sparsify.usecases import resolve_use_case

#: 5 epochs of 4 steps: gradual pruning 0-2, QAT from 3 (observers frozen at 4)
RECIPE = schedule(epochs=5, prune_end=2, qat_start=3, init_lr=0.005)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import torchvision

    from sparsify.data.synthetic import make_synthetic_image_folder

    root = tmp_path_factory.mktemp("resume")
    make_synthetic_image_folder(root / "data", classes=("a", "b"), per_class=9, size=24,
                                split=True, val_per_class=3, seed=0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2)
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, root / "init.pth")
    return root


def _task(root, name, **kw):
    from sparsify.trainers.image_classification import ImageClassificationTask

    plan = build_plan(resolve_use_case("ic"), 0.5, model=str(root / "init.pth"),
                      train_kwargs={"batch_size": 4, "num_workers": 0, "image_size": 24, **kw})
    run_dir = root / name
    run_dir.mkdir()
    task = ImageClassificationTask(plan, str(root / "data"), run_dir)
    task.load_model()
    return task


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    task = _task(workspace, "whole")
    result = task.train(parse_recipe(RECIPE))
    return task.model.state_dict(), result



@pytest.mark.parametrize("stop_at, where", [(6, "mid-pruning"), (14, "mid-QAT")])
def test_resumed_run_ends_bit_identical(workspace, uninterrupted, monkeypatch, stop_at, where):
    recipe = parse_recipe(RECIPE)
    first = _task(workspace, f"stopped_{stop_at}")
    stop_after(monkeypatch, stop_at)
    with pytest.raises(Stopped):
        first.train(recipe)
    monkeypatch.undo()
    artifacts = first.run_dir / "training_artifacts"
    saved = torch.load(find_resume(artifacts), weights_only=True)
    assert saved["lifecycle"]["step"] == stop_at, where
    # a fresh process: the starting model again, then the checkpoint
    second = _task(workspace, f"resumed_{stop_at}")
    second.run_dir = first.run_dir
    result = second.train(parse_recipe(RECIPE), resume=find_resume(artifacts))
    expected_state, expected = uninterrupted
    assert_same_training(result, second.model.state_dict(), expected, expected_state, where)


def test_checkpoints_keep_the_last_two_and_fall_back(workspace, monkeypatch):
    task = _task(workspace, "steps", checkpoint_steps=1)
    stop_after(monkeypatch, 3)
    with pytest.raises(Stopped):
        task.train(parse_recipe(RECIPE))
    artifacts = task.run_dir / "training_artifacts"
    newest = torch.load(artifacts / RESUME, weights_only=True)
    previous = torch.load(artifacts / PREVIOUS, weights_only=True)
    assert (previous["lifecycle"]["step"], newest["lifecycle"]["step"]) == (2, 3)
    # a newest checkpoint cut short by a crash: the one before it is used
    (artifacts / RESUME).write_bytes((artifacts / RESUME).read_bytes()[:1000])
    saved = resume_module.load_resume(artifacts / RESUME, parse_recipe(RECIPE))
    assert saved["lifecycle"]["step"] == 2


def test_a_checkpoint_of_another_recipe_is_refused(workspace, monkeypatch):
    from sparsify.errors import ModelNotFoundError

    task = _task(workspace, "other_recipe")
    stop_after(monkeypatch, 2)
    with pytest.raises(Stopped):
        task.train(parse_recipe(RECIPE))
    with pytest.raises(ModelNotFoundError, match="another recipe"):
        resume_module.load_resume(find_resume(task.run_dir / "training_artifacts"),
                                  parse_recipe(RECIPE.replace("0.7", "0.6")))
