"""Resuming the Ultralytics trainer: a YOLO training stopped by a signal mid-pruning or mid-QAT
and resumed in a fresh task from the last epoch's checkpoint ends bit-identical to the
uninterrupted one (CPU, no loader workers): weights, masks, metrics and history."""

from __future__ import annotations

import pytest
import torch
from resume_helpers import assert_same_training, schedule, stop_after

from sparsify.plan import build_plan
from sparsify.recipe.parser import parse_recipe
from sparsify.stop import Stopped
from sparsify.trainers.resume import RESUME, find_resume
from sparsify.usecases import resolve_use_case

pytest.importorskip("ultralytics")

#: 6 epochs of 3 batches: pruning 0-3, QAT from 4 (observers frozen at 5), the LR set by the
#: recipe, mosaic on until the last 2 epochs
RECIPE = schedule(epochs=6, prune_end=3, qat_start=4, init_lr=0.002, final_sparsity=0.6,
                  update_frequency=1.0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset

    root = tmp_path_factory.mktemp("resume_yolo")
    make_synthetic_yolo_dataset(root / "data", "detect", train_images=12, val_images=4,
                                size=64, seed=0)
    return root


@pytest.fixture(autouse=True)
def _offline(workspace, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(workspace / "ultralytics_config"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")


def _task(root, name):
    from sparsify.trainers.detection import DetectionTask

    plan = build_plan(resolve_use_case("yolo"), 0.5, model="yolov8n.yaml",
                      train_kwargs={"batch_size": 4, "image_size": 64, "num_workers": 0})
    run_dir = root / name
    run_dir.mkdir(exist_ok=True)
    task = DetectionTask(plan, str(root / "data"), run_dir)
    torch.manual_seed(0)
    task.load_model()
    return task


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    from _pytest.monkeypatch import MonkeyPatch

    with MonkeyPatch.context() as patch:
        patch.setenv("YOLO_CONFIG_DIR", str(workspace / "ultralytics_config"))
        patch.setenv("YOLO_OFFLINE", "1")
        task = _task(workspace, "whole")
        result = task.train(parse_recipe(RECIPE))
    return task.model.state_dict(), result



@pytest.mark.parametrize("stop_at, epochs_done, where", [(8, 2, "mid-pruning"),
                                                         (17, 5, "mid-QAT")])
def test_resumed_run_ends_bit_identical(workspace, uninterrupted, monkeypatch, stop_at,
                                        epochs_done, where):
    first = _task(workspace, f"stopped_{stop_at}")
    stop_after(monkeypatch, stop_at)  # asked after every batch: 3 a epoch
    with pytest.raises(Stopped):
        first.train(parse_recipe(RECIPE))
    monkeypatch.undo()
    artifacts = first.run_dir / "training_artifacts"
    path = find_resume(artifacts)
    assert path.name == RESUME
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == epochs_done, where  # the stopped epoch is repeated
    assert saved["qat_ready"] == (epochs_done > 4)
    # a fresh task (the data staged again in the same folder), then the checkpoint
    second = _task(workspace, f"stopped_{stop_at}")
    result = second.train(parse_recipe(RECIPE), resume=path)
    expected_state, expected = uninterrupted
    assert_same_training(result, second.model.state_dict(), expected, expected_state, where)


def test_a_full_disk_on_ultralytics_own_save_is_named(workspace, monkeypatch):
    import errno

    from sparsify.errors import TrainingError

    task = _task(workspace, "full_disk")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(task.trainer, "save_model", full)
    with pytest.raises(TrainingError, match="No space left on the device writing a checkpoint"):
        task.train(parse_recipe(RECIPE))
