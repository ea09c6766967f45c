"""Resuming the Hugging Face Trainer (text, token classification, QA share it): a training
stopped by a signal mid-pruning or mid-QAT and resumed from its checkpoint folder in a fresh
task ends bit-identical to the uninterrupted one (CPU): the same weights, masks and metrics."""

from __future__ import annotations

import pytest
import torch
from resume_helpers import assert_same_training, schedule, stop_after

from sparsify.plan import build_plan
from sparsify.recipe.parser import parse_recipe
from sparsify.stop import Stopped
from sparsify.trainers import resume as resume_module
from sparsify.trainers.resume import HF_CHECKPOINTS, RESUME, find_resume, resume_candidates
from sparsify.usecases import resolve_use_case

#: 5 epochs of 4 steps (64 rows, batch 16): gradual pruning 0-2, QAT from 3 (observers frozen
#: at 4), the LR set by the recipe
RECIPE = schedule(epochs=5, prune_end=2, qat_start=3, init_lr=0.001)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv

    root = tmp_path_factory.mktemp("resume_nlp")
    make_tiny_bert(root / "bert")
    write_csv(root / "train.csv", sentiment_rows(64, seed=0))
    write_csv(root / "validation.csv", sentiment_rows(16, seed=1))
    return root


def _task(root, name, **kw):
    from sparsify.trainers.nlp import NLPTask

    plan = build_plan(resolve_use_case("sentiment"), 0.5, model=str(root / "bert"),
                      train_kwargs={"batch_size": 16, "max_seq_length": 32, **kw})
    run_dir = root / name
    run_dir.mkdir()
    task = NLPTask(plan, str(root), run_dir)
    task.load_model()
    return task


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    task = _task(workspace, "whole")
    result = task.train(parse_recipe(RECIPE))
    return task.model.state_dict(), result



@pytest.mark.parametrize("stop_at, where", [(6, "mid-pruning, mid-epoch"),
                                            (14, "mid-QAT, mid-epoch"),
                                            (12, "mid-QAT, at an epoch's end")])
def test_resumed_run_ends_bit_identical(workspace, uninterrupted, monkeypatch, stop_at, where):
    first = _task(workspace, f"stopped_{stop_at}")
    # stop_requested is asked once per step, except at an epoch's last step (asked after
    # the epoch's evaluation instead): the count of asks equals the step reached
    stop_after(monkeypatch, stop_at)
    with pytest.raises(Stopped):
        first.train(parse_recipe(RECIPE))
    monkeypatch.undo()
    artifacts = first.run_dir / "training_artifacts"
    path = find_resume(artifacts)
    assert path.parent.name == f"checkpoint-{stop_at}", where
    assert path.parent.parent.name == HF_CHECKPOINTS
    saved = torch.load(path, weights_only=True)
    assert saved["lifecycle"]["step"] == stop_at
    # the Trainer's own state beside ours; no second copy of the weights
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in path.parent.iterdir()}
    assert not list(path.parent.glob("*.safetensors"))
    # a fresh task: the starting model again, then the checkpoint
    second = _task(workspace, f"resumed_{stop_at}")
    second.run_dir = first.run_dir
    result = second.train(parse_recipe(RECIPE), resume=path)
    expected_state, expected = uninterrupted
    assert_same_training(result, second.model.state_dict(), expected, expected_state, where)
    # a finished training leaves no resumable checkpoints behind
    assert find_resume(artifacts) is None


def test_step_checkpoints_keep_the_last_two_and_fall_back(workspace, monkeypatch):
    task = _task(workspace, "steps", checkpoint_steps=1)
    stop_after(monkeypatch, 3)
    with pytest.raises(Stopped):
        task.train(parse_recipe(RECIPE))
    artifacts = task.run_dir / "training_artifacts"
    newest, previous = resume_candidates(artifacts)
    assert (newest.parent.name, previous.parent.name) == ("checkpoint-3", "checkpoint-2")
    # the newest cut short by a crash: the one before it is read
    newest.write_bytes(newest.read_bytes()[:1000])
    saved = resume_module.load_resume(newest, parse_recipe(RECIPE))
    assert saved["lifecycle"]["step"] == 2
    assert saved["loaded_from"] == str(previous)
    # a folder the Trainer wrote but ours never reached is not a checkpoint
    newest.unlink()
    assert resume_candidates(artifacts) == [previous]


def test_a_full_disk_on_the_trainers_own_save_is_named(workspace, monkeypatch):
    import errno

    from transformers import Trainer

    from sparsify.errors import TrainingError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    task = _task(workspace, "full_disk")
    monkeypatch.setattr(Trainer, "_save_checkpoint", full)
    with pytest.raises(TrainingError, match="No space left on the device writing a checkpoint"):
        task.train(parse_recipe(RECIPE))
    assert not (task.run_dir / "training_artifacts" / HF_CHECKPOINTS / "checkpoint-4"
                / RESUME).exists()
