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


# --- checkpoints in other projects' key layouts ------------------------------------------------

def _to_sparseml_resnet_names(state):
    """torchvision ResNet names -> SparseML's (written from SparseML's ResNet module tree:
    ResNet.input/_Input.conv,bn; ResNet.sections[i][j] blocks with conv1..3/bn1..3 and an
    _IdentityModifier 'identity' (conv, bn); ResNet.classifier/_Classifier.fc)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")):
            new = "input." + key.replace("1.", ".", 1)
        elif key.startswith("layer"):
            layer, block, *rest = key.split(".")
            if rest[0] == "downsample":
                rest = ["identity", {"0": "conv", "1": "bn"}[rest[1]], *rest[2:]]
            new = ".".join(["sections", str(int(layer[5:]) - 1), block, *rest])
        elif key.startswith("fc."):
            new = "classifier." + key
        else:
            raise AssertionError(f"unexpected torchvision key {key}")
        renamed[new] = value
    return renamed


def _randomize_bn_(model):
    """Non-trivial BatchNorm statistics, so a BatchNorm loaded in the wrong place shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize(("sparseml_key", "builder"), [
    ("resnet18", "resnet18"), ("resnet-50", "resnet50"), ("resnext50", "resnext50_32x4d")])
def test_sparseml_resnet_layout_loads_into_torchvision(tmp_path, sparseml_key, builder):
    torch.manual_seed(0)
    reference = _randomize_bn_(getattr(torchvision.models, builder)(num_classes=7))
    state = _to_sparseml_resnet_names(reference.state_dict())
    assert "input.conv.weight" in state and "classifier.fc.weight" in state
    if builder != "resnet18":  # bottleneck: projection shortcut already in the first section
        assert "sections.0.0.identity.bn.running_var" in state
    torch.save({"state_dict": state, "arch_key": sparseml_key}, tmp_path / "sparseml.pth")
    loaded = load_image_model(_choice(tmp_path / "sparseml.pth"), 7)
    assert loaded.arch_key == builder and not loaded.head_replaced
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), reference(x))


def test_sparseml_resnet_without_torchvision_equivalent_is_refused(tmp_path):
    state = _to_sparseml_resnet_names(torchvision.models.resnet18(num_classes=2).state_dict())
    torch.save({"state_dict": state, "arch_key": "resnext101"}, tmp_path / "m.pth")
    with pytest.raises(UsageError, match="no torchvision equivalent"):
        load_image_model(_choice(tmp_path / "m.pth"), 2)
    # ResNet V2: the projection shortcut is a bare conv (identity.weight)
    state["sections.1.0.identity.weight"] = state.pop("sections.1.0.identity.conv.weight")
    torch.save({"state_dict": state, "arch_key": "resnetv2_18"}, tmp_path / "v2.pth")
    with pytest.raises(UsageError, match="ResNet V2"):
        load_image_model(_choice(tmp_path / "v2.pth"), 2)


def _to_efficientnet_pytorch_names(state):
    """Our EfficientNet-Lite names -> efficientnet_pytorch's (_conv_stem, _bn0, _blocks.N with
    _expand_conv/_bn0, _depthwise_conv/_bn1, _project_conv/_bn2, _conv_head, _bn1, _fc)."""
    top = {"stem.0": "_conv_stem", "stem.1": "_bn0", "head.0": "_conv_head", "head.1": "_bn1",
           "classifier": "_fc"}
    inner = {"expand.0": "_expand_conv", "expand.1": "_bn0", "depthwise.0": "_depthwise_conv",
             "depthwise.1": "_bn1", "project.0": "_project_conv", "project.1": "_bn2"}
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module.startswith("blocks."):
            _, index, sub = module.split(".", 2)
            module = f"_blocks.{index}.{inner[sub]}"
        else:
            module = top[module]
        renamed[f"{module}.{param}"] = value
    return renamed


def test_efficientnet_lite0_shape_and_efficientnet_pytorch_layout(tmp_path):
    from sparsify.trainers.vision_models import build_arch

    torch.manual_seed(0)
    reference = _randomize_bn_(build_arch("efficientnet_lite0", 1000))
    # EfficientNet-Lite0: 16 blocks, 4.65M parameters, 1280 features before the classifier.
    assert len(reference.blocks) == 16
    assert sum(p.numel() for p in reference.parameters()) == pytest.approx(4.65e6, rel=0.01)
    state = _to_efficientnet_pytorch_names(reference.state_dict())
    assert "_blocks.15._project_conv.weight" in state and "_blocks.0._expand_conv.weight" \
        not in state  # the first block has no expansion
    torch.save({"state_dict": state, "arch_key": "efficientnet_lite0"}, tmp_path / "lite0.pth")
    loaded = load_image_model(_choice(tmp_path / "lite0.pth"), 1000)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), reference(x))
    assert load_image_model(_choice(tmp_path / "lite0.pth"), 10).model.classifier.out_features \
        == 10


def test_efficientnet_lite_has_no_download():
    from sparsify.trainers.vision_models import build_arch

    with pytest.raises(UsageError, match="no downloadable weights"):
        build_arch("efficientnet_lite0", None, "DEFAULT")
    with pytest.raises(UsageError, match="Did you mean 'efficientnet_lite0'"):
        build_arch("efficientnet-lite0", 10)


def test_timm_checkpoint_loads_and_missing_timm_names_its_extra(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=3)
    torch.save({"state_dict": model.state_dict(), "arch_key": "timm:resnet10t"},
               tmp_path / "t.pth")
    loaded = load_image_model(_choice(tmp_path / "t.pth"), 5)
    assert loaded.arch_key == "timm:resnet10t" and loaded.head_replaced
    assert loaded.model.fc.out_features == 5
    assert torch.equal(loaded.model.conv1[0].weight, model.conv1[0].weight)
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # as if not installed
    from sparsify.errors import MissingExtraError

    with pytest.raises(MissingExtraError) as info:
        load_image_model(_choice(tmp_path / "t.pth"), 5)
    assert "sparsify-transfer[timm]" in info.value.hint
