"""Loading image-classification starting models from local files."""

import pytest
import torch
import torchvision
from torch import nn

from sparsify.errors import ModelNotFoundError, UsageError
from sparsify.plan import ModelChoice
from sparsify.trainers.vision_models import load_image_model, replace_head_


def _choice(path):
    return ModelChoice(str(path), "user", "local", str(path))


def test_sparseml_style_checkpoint_and_head_replaced_only_when_needed(tmp_path):
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        model.layer1[0].conv1.weight[:, :8] = 0.0
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, tmp_path / "m.pth")
    same = load_image_model(_choice(tmp_path / "m.pth"), 3)
    assert not same.head_replaced and same.arch_key == "resnet18"
    assert torch.equal(same.model.fc.weight, model.fc.weight)  # kept: same class count
    assert (same.model.layer1[0].conv1.weight[:, :8] == 0).all()  # zeros of the file kept
    other = load_image_model(_choice(tmp_path / "m.pth"), 5)
    assert other.head_replaced and other.model.fc.out_features == 5


def test_plain_state_dict_needs_arch_key(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(UsageError, match="does not say which architecture"):
        load_image_model(_choice(tmp_path / "sd.pth"), 2)
    loaded = load_image_model(_choice(tmp_path / "sd.pth"), 2, arch_key="resnet18")
    assert loaded.model.fc.out_features == 2


def test_pickled_model_is_refused_by_weights_only_load(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pth")  # a pickled module
    with pytest.raises(ModelNotFoundError, match="Cannot read checkpoint") as info:
        load_image_model(_choice(tmp_path / "whole.pth"), 2, arch_key="resnet18")
    assert "weights_only=True" in info.value.hint


def test_zoo_folder_layout_and_mismatched_keys(tmp_path):
    folder = tmp_path / "stub" / "training"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}, "arch_key": "resnet18"},
               folder / "model.pth")
    with pytest.raises(ModelNotFoundError, match="does not match torchvision's 'resnet18'"):
        load_image_model(_choice(tmp_path / "stub"), 2)
    with pytest.raises(ModelNotFoundError, match="No checkpoint"):
        (tmp_path / "empty").mkdir()
        load_image_model(_choice(tmp_path / "empty"), 2)


def test_replace_head_finds_the_last_linear():
    model = torchvision.models.mobilenet_v2(num_classes=4)
    assert replace_head_(model, 7) and model.classifier[-1].out_features == 7
    assert not replace_head_(model, 7)


@pytest.mark.parametrize("spec", ["./missing.pth", "missing.pt", "/no/such/dir", "a/b/c"])
def test_missing_local_path_is_reported_as_missing(spec):
    from sparsify.zoo.resolve import resolve_model_path

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(spec)


@pytest.mark.parametrize("spec", ["resnet50", "neuralmagic/oBERT-12-upstream-pretrained-dense"])
def test_model_names_and_hub_ids_are_left_to_the_framework(spec):
    from sparsify.zoo.resolve import resolve_model_path

    assert resolve_model_path(spec) is None


def test_teacher_path_is_loaded_by_the_task(tmp_path):
    from types import SimpleNamespace

    from sparsify.pipeline import resolve_teacher
    from sparsify.plan import build_plan
    from sparsify.trainers.image_classification import ImageClassificationTask
    from sparsify.usecases import resolve_use_case

    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict(),
                "arch_key": "resnet18"}, tmp_path / "t.pth")
    plan = build_plan(resolve_use_case("ic"), 0.5, teacher=str(tmp_path / "t.pth"))
    task = SimpleNamespace(class_names=["a", "b"], baseline=None)
    task.load_teacher = lambda choice: ImageClassificationTask.load_teacher(task, choice)
    teacher = resolve_teacher(plan, task)
    assert teacher.fc.out_features == 2  # head fitted to this run's classes
    plan.teacher = "disable"
    assert resolve_teacher(plan, task) is None
