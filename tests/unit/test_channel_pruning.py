"""ChannelPruningModifier: conv output channels removed for real (smaller tensors, every coupled
dimension consistent), masks of later pruning only on the shrunk tensors, the ONNX export with
the smaller shapes, and a checkpoint restored into a fresh model from the recorded channels."""

import copy
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import MissingExtraError, RecipeError
from sparsify.modifiers.channel_pruning import ChannelPruningModifier
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import load_recipe, parse_recipe
from sparsify.trainers.common import restore_checkpoint
from sparsify.trainers.vision_models import build_arch

pytest.importorskip("torch_pruning")

SPE = 4
SIZE = 32


def images(seed=1, batch=4):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def model_of(arch, seed=0):
    torch.manual_seed(seed)
    return build_arch(arch, 10).eval()


def recipe(keep=0.5, quant=False, extra=""):
    # the shrinking modifier comes last: the lifecycle still initialises it first
    text = """
pruning_modifiers:
  - !GMPruningModifier
      params: __COMPUTE_LAYERS__
      init_sparsity: 0.5
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: 2.0
      update_frequency: 0.5
"""
    if quant:
        text += "quantization_modifiers:\n  - !QuantizationModifier\n      start_epoch: 0.0\n"
    text += ("structure_modifiers:\n  - !ChannelPruningModifier\n"
             f"      keep_fraction: {keep}\n{extra}")
    return parse_recipe(text)


def train_steps(model, lc, steps=2, optimizer_first=True):
    """Real optimizer steps through the lifecycle's events."""
    if not optimizer_first:
        lc.initialize_structure()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    lc.initialize(opt, SPE)
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    for step in range(steps):
        lc.batch_start()
        out = model(images(step))
        loss = lc.loss_calculated(F.cross_entropy(out, labels), None, out)
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    return opt


def conv_shapes(model):
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}


@pytest.fixture(scope="module")
def shrunk():
    """ResNet-18 and MobileNetV2 at keep 0.5, trained two steps with GMP (masks on the shrunk
    tensors); the dense original kept beside each."""
    out = {}
    for arch in ("resnet18", "mobilenet_v2"):
        dense = model_of(arch)
        model = copy.deepcopy(dense)
        lc = ModifierLifecycle(recipe(0.5), model)
        opt = train_steps(model, lc)
        out[arch] = (dense, model.eval(), lc, opt)
    return out


def test_resnet18_keeps_half_of_each_group_but_the_stem_and_the_classes(shrunk):
    dense, model, lc, _ = shrunk["resnet18"]
    shapes = conv_shapes(model)
    assert shapes["conv1"] == (3, 64)  # the stem conv keeps its output ...
    assert shapes["layer1.0.conv2"] == (32, 64)  # ... so does the residual stream it feeds
    assert shapes["layer1.0.conv1"] == (64, 32)  # a block's inner channels halve
    assert shapes["layer2.0.conv1"] == (64, 64) and shapes["layer2.0.downsample.0"] == (64, 64)
    assert shapes["layer4.1.conv2"] == (256, 256)
    assert (model.fc.in_features, model.fc.out_features) == (256, 10)
    before = sum(p.numel() for p in dense.parameters())
    after = sum(p.numel() for p in model.parameters())
    assert before == 11_181_642 and after == 2_863_690  # about a quarter: both sides halve
    assert model(images()).shape == (4, 10)
    record = record_of(lc)
    assert record["parameters"] == [before, after] and len(record["groups"]) == 11


def test_mobilenet_v2_keeps_depthwise_convs_consistent(shrunk):
    dense, model, _, _ = shrunk["mobilenet_v2"]
    shapes = conv_shapes(model)
    assert shapes["features.0.0"] == (3, 32)  # stem
    assert shapes["features.2.conv.0.0"] == (8, 48)  # expand 96 -> 48, its input 16 -> 8
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:  # depthwise stays depthwise
            assert module.groups == module.in_channels == module.out_channels, name
    linear = model.classifier[1]
    assert (linear.in_features, linear.out_features) == (640, 10)
    ratio = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters())
    assert 0.2 < ratio < 0.3
    assert model(images()).shape == (4, 10)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_masks_live_only_on_the_shrunk_tensors(shrunk, arch):
    _, model, lc, opt = shrunk[arch]
    gmp = lc.modifiers_of("GMPruningModifier")[0]
    params = dict(model.named_parameters())
    assert gmp._masks
    for name, mask in gmp._masks.items():
        assert mask.shape == params[name].shape, name
        assert (params[name][mask == 0] == 0).all()
    # the optimizer built before the channels went steps the new (smaller) parameters
    stepped = {id(p) for group in opt.param_groups for p in group["params"]}
    assert stepped == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_onnx_export_has_the_smaller_convs(shrunk, arch, tmp_path):
    from onnx import numpy_helper

    from sparsify.export.inspect import run_onnx
    from sparsify.export.onnx_export import export_onnx

    _, model, _, _ = shrunk[arch]
    x = images(5, 2)
    path = export_onnx(model, (x,), tmp_path / "model.onnx", input_names=["input"],
                       output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {tuple(numpy_helper.to_array(i).shape) for i in graph.initializer}
    if arch == "resnet18":  # BN folded into the convs by the exporter or not: the conv stays
        assert (32, 64, 3, 3) in shapes and (256, 256, 3, 3) in shapes
        assert (512, 512, 3, 3) not in shapes
    else:
        assert (48, 8, 1, 1) in shapes and (640, 160, 1, 1) in shapes
        assert (1280, 320, 1, 1) not in shapes
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, {"input": x.numpy()})[0], expected, atol=1e-4)


@pytest.mark.parametrize("quant", [False, True])
def test_checkpoint_restores_into_a_fresh_model_from_the_record(tmp_path, quant):
    # the student starts from other weights than the fresh starting model (the dense teacher's)
    student = model_of("resnet18", seed=1)
    lc = ModifierLifecycle(recipe(0.5, quant=quant), student)
    train_steps(student, lc, optimizer_first=False)
    path = tmp_path / "model.pth"  # as the trainer saves it: before training ends
    torch.save({"state_dict": student.state_dict(), "started": lc.started_modifiers(),
                "structure": lc.structure_record()}, path)
    lc.finalize()  # QAT's conv-bn folding
    student.eval()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    fresh = model_of("resnet18", seed=0)
    record = saved["structure"][-1]["_removed"]
    assert _chosen(fresh) != record["groups"]  # its own magnitudes rank the channels otherwise
    qat = restore_checkpoint(fresh, recipe(0.5, quant=quant), saved["state_dict"],
                             saved["started"], path, structure=saved["structure"])
    assert qat == quant
    x = images(7)
    with torch.no_grad():
        assert torch.equal(fresh(x), student(x))


def _chosen(model):
    from sparsify.modifiers.channel_shrink import shrink_channels_

    return shrink_channels_(copy.deepcopy(model), 0.5)["groups"]


def record_of(lc):
    return lc.modifiers_of("ChannelPruningModifier")[0].structure_record()["_removed"]


def test_resume_adopts_the_saved_record_and_the_state_dict_loads():
    student = model_of("mobilenet_v2", seed=1)
    lc = ModifierLifecycle(recipe(0.5), student)
    opt = train_steps(student, lc, optimizer_first=False)
    saved = {"lifecycle": lc.resume_state(), "state_dict": student.state_dict(),
             "optimizer": opt.state_dict()}
    fresh = model_of("mobilenet_v2", seed=0)
    lc2 = ModifierLifecycle(recipe(0.5), fresh)
    lc2.initialize_structure()
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9)
    lc2.initialize(opt2, SPE)
    lc2.load_resume_state(saved["lifecycle"])
    fresh.load_state_dict(saved["state_dict"])
    opt2.load_state_dict(saved["optimizer"])
    assert lc2.structure_record() == lc.structure_record()
    assert lc2.step == 2


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_lite0", "timm:regnetx_002"])
def test_other_architectures_shrink_and_replay(arch):
    from sparsify.modifiers.channel_shrink import replay_record, shrink_channels_

    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    model = model_of(arch)
    before = sum(p.numel() for p in model.parameters())
    record = shrink_channels_(model, 0.5)
    assert record["parameters"][1] < 0.6 * before
    x = images(3, 2)
    assert model(x).shape == (2, 10)
    if arch.startswith("timm:"):  # grouped convs keep their width; the streams around shrink
        grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups
                   < m.in_channels]
        assert grouped and all(m.in_channels == m.out_channels for m in grouped)
    fresh = model_of(arch, seed=3)
    replay_record(fresh, record)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_shrunk_model_copies_and_pickles(shrunk):
    _, model, _, _ = shrunk["mobilenet_v2"]
    x = images()
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(model)(x), model(x))
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))


def test_keep_fraction_one_changes_nothing_and_needs_no_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model = nn.Sequential(nn.Linear(4, 4))  # not even a CNN: no model is looked at
    lc = ModifierLifecycle(parse_recipe(
        "modifiers:\n  - !ChannelPruningModifier\n      keep_fraction: 1.0\n"), model)
    lc.initialize(None, SPE)
    assert lc.structure_record() == [{}]


def test_missing_extra_names_prune_when_the_recipe_is_read(monkeypatch):
    lc = ModifierLifecycle(recipe(0.5), model_of("resnet18"))
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(MissingExtraError) as error:  # before any training (a dense teacher)
        load_recipe("image_classification_gmp", {"keep_channels": 0.5})
    assert error.value.extra == "prune" and "sparsify-transfer[prune]" in error.value.hint
    with pytest.raises(MissingExtraError, match="ChannelPruningModifier"):  # and at the model
        lc.initialize(None, SPE)
    assert load_recipe("image_classification_gmp")  # keep_channels 1.0 needs nothing


class LayerScaled(nn.Module):
    """A conv block with a layer-scale parameter outside any layer (ConvNeXt-like)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(16, 1, 1))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.gamma * self.conv(x)
        return self.head(x.mean((2, 3)))


def yolo():
    ultralytics = pytest.importorskip("ultralytics.nn.tasks")
    return ultralytics.DetectionModel("yolov8n.yaml", nc=2, verbose=False)


@pytest.mark.parametrize("build,words", [
    (yolo, ["DetectionModel", "not an image classifier"]),
    (LayerScaled, ["LayerScaled", "LayerScaled (the model itself)"]),
    (lambda: nn.Sequential(nn.Linear(8, 3)), ["Sequential", "no convolution"]),
])
def test_what_cannot_shrink_is_refused_naming_the_model_and_field(build, words):
    lc = ModifierLifecycle(recipe(0.5), build())
    with pytest.raises(RecipeError) as error:
        lc.initialize(None, SPE)
    text = str(error.value)
    assert "ChannelPruningModifier.keep_fraction" in text and "keep_fraction to 1.0" in text
    for word in words:
        assert word in text


def test_ignore_keeps_named_convs_and_refuses_unknown_names():
    model = model_of("resnet18")
    lc = ModifierLifecycle(recipe(0.5, extra="      ignore: ['re:layer4\\.']\n"), model)
    lc.initialize(None, SPE)
    assert conv_shapes(model)["layer4.0.conv1"] == (128, 512)  # its input stream still shrank
    lc = ModifierLifecycle(recipe(0.5, extra="      ignore: [layer9.conv1]\n"),
                           model_of("resnet18"))
    with pytest.raises(RecipeError, match="ChannelPruningModifier.ignore: 'layer9.conv1'"):
        lc.initialize(None, SPE)


@pytest.mark.parametrize("total,fraction,multiple,expected", [
    (64, 0.5, 8, 32), (64, 0.75, 8, 48), (24, 0.5, 8, 16), (16, 0.75, 8, 16), (8, 0.5, 8, 8),
    (96, 0.6, 8, 56), (3, 0.5, 8, 3), (10, 0.5, 1, 5), (64, 0.01, 8, 8)])
def test_kept_channels(total, fraction, multiple, expected):
    from sparsify.modifiers.channel_shrink import kept_channels

    assert kept_channels(total, fraction, multiple) == expected


@pytest.mark.parametrize("fields,field", [
    ({"keep_fraction": 0}, "keep_fraction"), ({"keep_fraction": 1.5}, "keep_fraction"),
    ({"keep_fraction": "half"}, "keep_fraction"), ({"keep_fraction": True}, "keep_fraction"),
    ({"keep_fraction": 0.5, "importance": "l3"}, "importance"),
    ({"keep_fraction": 0.5, "channel_multiple": 0}, "channel_multiple"),
    ({"keep_fraction": 0.5, "channel_multiple": 2.5}, "channel_multiple"),
    ({"keep_fraction": 0.5, "ignore": "conv1"}, "ignore"),
    ({"keep_fraction": 0.5, "ignore": ["re:("]}, "ignore"),
    ({"keep_fraction": 0.5, "start_epoch": 2}, "start_epoch"),
    ({"keep_fraction": 0.5, "end_epoch": 3}, "end_epoch"),
])
def test_bad_fields_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ChannelPruningModifier(**fields)


def test_bad_field_in_a_recipe_is_a_recipe_error_at_parse_time():
    with pytest.raises(RecipeError, match=r"ChannelPruningModifier\) keep_fraction: must be"):
        parse_recipe("modifiers:\n  - !ChannelPruningModifier\n      keep_fraction: 2\n")
    with pytest.raises(RecipeError, match="keep_fraction"):
        parse_recipe("modifiers:\n  - !ChannelPruningModifier\n      importance: l1\n")


@pytest.mark.parametrize("name", ["image_classification_gmp", "image_classification_transfer"])
def test_shipped_image_recipes_carry_keep_channels(name):
    assert load_recipe(name).variables["keep_channels"] == 1.0
    shrink = load_recipe(name, {"keep_channels": 0.75}).of_type("ChannelPruningModifier")
    assert shrink[0].build().keep_fraction == 0.75


def test_image_trainer_resumes_a_shrunk_model_bit_identical(tmp_path, monkeypatch):
    """The image loop removes the channels before building its optimizer; stopped mid-QAT and
    resumed in a fresh task (the starting model again, then the checkpoint), it ends as the
    uninterrupted training; its checkpoint restores into a fresh starting model."""
    from resume_helpers import assert_same_training, schedule, stop_after

    from sparsify.data.synthetic import make_synthetic_image_folder
    from sparsify.plan import build_plan
    from sparsify.stop import Stopped
    from sparsify.trainers.image_classification import ImageClassificationTask
    from sparsify.trainers.resume import find_resume
    from sparsify.usecases import resolve_use_case

    make_synthetic_image_folder(tmp_path / "data", classes=("a", "b"), per_class=9, size=24,
                                split=True, val_per_class=3, seed=0)
    torch.save({"state_dict": model_of("resnet18", seed=0).state_dict(),
                "arch_key": "resnet18"}, tmp_path / "init.pth")
    text = schedule(epochs=3, prune_end=1, qat_start=2, init_lr=0.005) + (
        "  - !ChannelPruningModifier\n    keep_fraction: 0.5\n")

    def task(name):
        plan = build_plan(resolve_use_case("ic"), 0.5, model=str(tmp_path / "init.pth"),
                          train_kwargs={"batch_size": 4, "num_workers": 0, "image_size": 24})
        (tmp_path / name).mkdir()
        made = ImageClassificationTask(plan, str(tmp_path / "data"), tmp_path / name)
        made.load_model()
        return made

    whole = task("whole")
    expected = whole.train(parse_recipe(text))
    assert whole.model.fc.in_features == 256 and whole.model.layer4[1].conv2.out_channels == 256
    first = task("stopped")
    stop_after(monkeypatch, 7)
    with pytest.raises(Stopped):
        first.train(parse_recipe(text))
    monkeypatch.undo()
    second = task("resumed")
    second.run_dir = first.run_dir
    artifacts = first.run_dir / "training_artifacts"
    result = second.train(parse_recipe(text), resume=find_resume(artifacts))
    assert_same_training(result, second.model.state_dict(), expected,
                         whole.model.state_dict(), "mid-QAT")
    restored = task("restored")
    restored.restore(parse_recipe(text), whole.run_dir / "training_artifacts")
    x = images(2)
    with torch.no_grad():
        assert torch.equal(restored.model.eval()(x), whole.model.eval()(x))
