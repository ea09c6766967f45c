"""QAT preparation: BatchNorm folding, fake-quant placement, names, observers."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.quantization import (
    FakeQuantizer,
    QATConv2d,
    QATLinear,
    QuantizationConfig,
    conv_bn_pairs,
    disable_observers_,
    enable_observers_,
    fold_qat_batchnorm_,
    freeze_bn_stats_,
    has_unfolded_qat_batchnorm,
    is_qat_prepared,
    prepare_qat_,
    quantized_module_names,
)

from tiny_models import TinyResNet, TinyTransformer, randomize_bn_  # noqa: E402

torchvision = pytest.importorskip("torchvision")


def calibrate(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape))


# --- config -----------------------------------------------------------------------------------


def test_config_weight_grid_is_7bit_by_default_and_validated():
    assert QuantizationConfig().weight_qmax == 63
    assert QuantizationConfig(weight_quant_range_7bit=False).weight_qmax == 127
    assert QuantizationConfig(weight_quant_range_7bit=False, reduce_range=True).weight_qmax == 63
    assert QuantizationConfig(weight_bits=4).weight_qmax == 7
    with pytest.raises(ValueError, match="activation_bits=4"):
        QuantizationConfig(activation_bits=4)
    with pytest.raises(ValueError, match="weight_bits=9"):
        QuantizationConfig(weight_bits=9)


# --- BatchNorm folding ------------------------------------------------------------------------


def test_folding_keeps_names_and_parameter_objects_and_zeros():
    torch.manual_seed(0)
    model = randomize_bn_(TinyResNet())
    with torch.no_grad():
        model.conv1.weight[:, ::2] = 0.0  # a pruned weight
    zeros_before = model.conv1.weight == 0
    prepare_qat_(model)
    weight_obj, bn_bias_obj = model.conv1.weight, model.bn1.bias

    assert fold_qat_batchnorm_(model) == 2

    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn2, nn.Identity)
    assert model.conv1.weight is weight_obj  # same Parameter: masks and optimizer still valid
    assert model.conv1.bias is bn_bias_obj  # BN's bias Parameter re-used as the conv bias
    assert torch.equal(model.conv1.weight == 0, zeros_before)
    names = {n for n, _ in model.named_parameters()}
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"} <= names
    assert not any(n.startswith("bn") for n in names)


@pytest.mark.parametrize("arch, n_bn", [("resnet18", 20), ("mobilenet_v2", 52)])
def test_every_batchnorm_of_torchvision_models_is_paired_and_folded(arch, n_bn):
    model = getattr(torchvision.models, arch)(num_classes=5)
    assert len(conv_bn_pairs(model)) == n_bn
    prepare_qat_(model)
    assert fold_qat_batchnorm_(model) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(self.features(x)))
        return y if y.sum() > 0 else -y


def test_conv_bn_pairs_fall_back_to_structure_when_fx_fails():
    model = randomize_bn_(Untraceable())
    assert sorted(conv_bn_pairs(model)) == [("conv", "bn"), ("features.0", "features.1")]
    prepare_qat_(model)
    assert fold_qat_batchnorm_(model) == 2
    assert isinstance(model.bn, nn.Identity) and isinstance(model.features[1], nn.Identity)



def test_folding_by_name_warns_once_per_model(caplog):
    """A YOLO folds dozens of conv/bn attribute pairs by name: one warning line, not one each."""

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Untraceable() for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x[:, :3].repeat(1, 1, 1, 1))
            return x

    with caplog.at_level(logging.DEBUG, logger="sparsify.quantization.graph"):
        pairs = conv_bn_pairs(Blocks())
    assert len([p for p in pairs if p[0].endswith(".conv")]) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Folding 3 BatchNorm(s)" in warnings[0].getMessage()
    assert "blocks.2.bn into blocks.2.conv" in caplog.text  # every pair at debug level

# --- prepare_qat_ -----------------------------------------------------------------------------


def test_prepare_keeps_parameter_names_and_objects_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    before = dict(model.named_parameters())

    prepare_qat_(model)

    after = dict(model.named_parameters())
    assert after.keys() == before.keys()  # fake-quantizers add buffers, never parameters
    assert all(after[n] is before[n] for n in before)
    assert "layer1.0.conv1.weight" in after
    conv = model.get_submodule("layer1.0.conv1")
    assert isinstance(conv, QATConv2d) and isinstance(conv, nn.Conv2d)
    assert isinstance(model.fc, QATLinear) and isinstance(model.fc, nn.Linear)
    state = model.state_dict()
    assert "layer1.0.conv1.weight_quant.scale" in state
    assert "layer1.0.conv1.input_quant.zero_point" in state
    names = quantized_module_names(model)
    assert sum(1 for t in names.values() if t == "Conv2d") == 20
    assert names["fc"] == "Linear"


def test_prepare_keeps_batchnorm_training_then_folds_it_and_refuses_a_second_call():
    model = randomize_bn_(TinyResNet())
    assert not is_qat_prepared(model)
    prepare_qat_(model)
    assert is_qat_prepared(model)
    # BatchNorm keeps training during QAT, beside its conv; it holds the output quantization.
    assert type(model.bn1).__name__ == "QATBatchNorm2d" and model.conv1.output_quant is None
    assert has_unfolded_qat_batchnorm(model)
    calibrate(model, (8, 3, 16, 16))
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(8, 3, 16, 16))
    assert not torch.equal(before, model.bn1.running_mean)  # statistics still update
    assert freeze_bn_stats_(model) == 2
    frozen = model.bn1.running_mean.clone()
    model(torch.randn(8, 3, 16, 16))
    assert torch.equal(frozen, model.bn1.running_mean)  # frozen from freeze_bn_stats_epoch
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    assert fold_qat_batchnorm_(model) == 2
    assert isinstance(model.bn1, nn.Identity) and model.conv1.output_quant is not None
    assert not has_unfolded_qat_batchnorm(model)
    with torch.no_grad():
        got = model(x)
    # the folded INT8 conv computes what the conv + BatchNorm pair computed (up to a rounding
    # tie of one output quantization step)
    step = float(model.fc.input_quant.scale) if hasattr(model.fc, "input_quant") else 1e-3
    assert (got - expected).abs().max() <= 0.05 * (expected.max() - expected.min()) + step
    with pytest.raises(ValueError, match="already has fake quantization"):
        prepare_qat_(model)


def test_exclude_module_types_leaves_layernorm_untouched_and_quantizes_linears():
    model = TinyTransformer()
    prepare_qat_(model, QuantizationConfig(exclude_module_types=["LayerNorm"]))
    names = quantized_module_names(model)
    assert set(names) == {"emb", "q", "k", "v", "fc1", "fc2", "head"}
    for ln in (model.ln1, model.ln2):
        assert type(ln) is nn.LayerNorm
        assert not list(ln.children())
    assert all(isinstance(model.get_submodule(n), QATLinear) for n in ("q", "k", "fc1", "head"))


def test_submodules_ignore_and_embedding_flag():
    model = TinyTransformer()
    config = QuantizationConfig(
        submodules=["fc1", "fc2", "head", "emb"], ignore=["head"], quantize_embeddings=False
    )
    prepare_qat_(model, config)
    assert set(quantized_module_names(model)) == {"fc1", "fc2"}
    assert type(model.emb) is nn.Embedding
    assert type(model.q) is nn.Linear

    model = TinyTransformer()
    prepare_qat_(model, QuantizationConfig(ignore=["Embedding", "q"]))
    assert "emb" not in quantized_module_names(model)
    assert "q" not in quantized_module_names(model)
    assert "k" in quantized_module_names(model)


def test_unknown_submodule_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="'fc3'.*Did you mean 'fc[12]'.*Top-level modules: emb"):
        prepare_qat_(TinyTransformer(), QuantizationConfig(submodules=["fc3"]))


def test_linear_output_quantization_follows_the_flag():
    model = TinyTransformer()
    prepare_qat_(model, QuantizationConfig(quantize_linear_activations=False))
    assert model.fc1.output_quant is None
    model = TinyTransformer()
    prepare_qat_(model)
    assert isinstance(model.fc1.output_quant, FakeQuantizer)


def test_weights_fake_quantized_on_the_7bit_grid_and_zeros_stay_zero():
    torch.manual_seed(0)
    for flag, qmax in ((True, 63), (False, 127)):
        layer = nn.Sequential(nn.Conv2d(4, 6, 3))
        with torch.no_grad():
            layer[0].weight[:, :2] = 0.0
        prepare_qat_(layer, QuantizationConfig(weight_quant_range_7bit=flag))
        conv = layer[0]
        wq, scale = conv.weight_quant(conv.weight)
        grid = wq / scale.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(grid, grid.round(), atol=1e-4, rtol=0)
        assert grid.abs().max().round() == qmax  # the largest weight of a channel hits qmax
        assert torch.all(wq[:, :2] == 0)


def test_activation_observers_update_in_training_only_and_freeze():
    torch.manual_seed(0)
    model = TinyResNet()
    prepare_qat_(model)
    calibrate(model, (8, 3, 16, 16))
    quantizer = model.conv1.input_quant
    scale = quantizer.scale.clone()
    assert bool(quantizer.initialized) and scale != 1.0

    model.eval()
    with torch.no_grad():
        model(10 * torch.randn(8, 3, 16, 16))
    assert torch.equal(quantizer.scale, scale)  # eval data never moves the ranges

    model.train()
    with torch.no_grad():
        model(10 * torch.randn(8, 3, 16, 16))
    assert quantizer.scale > scale
    moved = quantizer.scale.clone()

    assert disable_observers_(model) > 0
    weight_scale = model.conv1.weight_quant.scale.clone()
    with torch.no_grad():
        model.conv1.weight.mul_(0.5)
        model(100 * torch.randn(8, 3, 16, 16))
    assert torch.equal(quantizer.scale, moved)
    assert torch.equal(model.conv1.weight_quant.scale, weight_scale)
    enable_observers_(model)
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    assert not torch.equal(model.conv1.weight_quant.scale, weight_scale)


def test_qat_training_step_updates_weights_through_fake_quant():
    torch.manual_seed(0)
    model = TinyResNet()
    prepare_qat_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    before = model.conv1.weight.detach().clone()
    model.train()
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    # the conv trains through its fake quantization, its BatchNorm trains beside it
    assert model.conv1.weight.grad is not None and model.bn1.bias.grad is not None
    assert not torch.equal(model.conv1.weight, before)


def test_relu_after_conv_is_applied_once_and_inplace_relu_is_safe():
    """The conv applies the ReLU before its output fake-quant; the ReLU module passes through."""
    torch.manual_seed(0)
    model = randomize_bn_(TinyResNet())
    prepare_qat_(model)
    calibrate(model, (8, 3, 16, 16))
    model.eval()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record_first_call(module, inputs, output):
        seen.setdefault("first", (inputs[0], output))

    model.relu.register_forward_hook(record_first_call)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    first_in, first_out = seen["first"]
    assert first_out is first_in  # passed through: no second ReLU after the Q/DQ
    assert bool((first_out >= 0).all())
    # during QAT the BatchNorm after each conv holds the output quantization
    assert model.bn1.output_quant.fused_activation == "relu"
    assert model.bn2.output_quant.fused_activation is None  # bn2 feeds the residual add
    fold_qat_batchnorm_(model)
    assert model.conv1.output_quant.fused_activation == "relu"
    assert model.conv2.output_quant.fused_activation is None


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_fused_activation_fake_quant_equals_the_two_steps_and_keeps_one_bool(activation):
    """``activate_and_quantize``: the values, the gradient and the observer's range of the
    activation followed by the quantizer, with a single bool tensor saved for backward."""
    torch.manual_seed(0)
    act = F.relu if activation == "relu" else F.relu6
    y = (torch.randn(4, 8, 6, 6) * 4).requires_grad_()
    fused, plain = FakeQuantizer(), FakeQuantizer()
    fused.train(), plain.train()
    for step in range(3):  # first observation, then the moving average
        y2 = y.detach().clone().requires_grad_()
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            out = fused.activate_and_quantize(y, activation)
        ref = plain(act(y2))
        assert torch.equal(out, ref)
        for name in ("scale", "zero_point", "min_val", "max_val"):
            assert torch.equal(getattr(fused, name), getattr(plain, name)), name
        grad = torch.randn_like(out)
        (g,) = torch.autograd.grad(out, y, grad)
        (g_ref,) = torch.autograd.grad(ref, y2, grad)
        assert torch.equal(g, g_ref)
        assert [t.dtype for t in saved if t.numel() == y.numel()] == [torch.bool]
        # values at the grid's top and (relu6) above 6 get no gradient, as in the two steps
        assert bool((g_ref == 0).any()) and bool((g_ref != 0).any())
    # outside training's forward (no grad) it is the two steps as well
    with torch.no_grad():
        assert torch.equal(fused.activate_and_quantize(y, activation), plain(act(y)))


def test_qat_conv_bn_relu_keeps_one_bool_for_backward_not_the_relu_result():
    """Conv + BatchNorm + ReLU under QAT: the fused output keeps one bool per element for its
    backward, not the ReLU's float result beside the quantizer's mask."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    prepare_qat_(model)
    model.train()
    x = torch.randn(4, 3, 8, 8)
    model(x)  # calibrate
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(x)
    out.sum().backward()
    assert model[0].weight.grad is not None and model[1].weight.grad is not None
    big = [t for t in saved if t.shape == out.shape]
    # the conv's output (BatchNorm's input, signed) and one bool mask; no float tensor >= 0
    assert [t.dtype for t in big if t.dtype == torch.bool] == [torch.bool]
    assert not [t for t in big if t.dtype == torch.float32 and bool((t >= 0).all())]


def test_prepared_model_survives_pickle_deepcopy_and_state_dict_reload():
    torch.manual_seed(0)
    model = randomize_bn_(TinyResNet())
    prepare_qat_(model)
    calibrate(model, (8, 3, 16, 16))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), expected)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)

    fresh = prepare_qat_(TinyResNet())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.eval()(x), expected)


def test_observers_frozen_before_the_first_forward_still_calibrate_once():
    # a recipe may freeze observers at the epoch QAT starts: the quantizers must still take
    # their scales from the first batch, not keep the placeholder 1.0 (which zeroes weights)
    from sparsify.quantization import (
        QuantizationConfig, WeightFakeQuantizer, disable_observers_, prepare_qat_,
    )

    torch.manual_seed(0)
    model = TinyResNet()
    prepare_qat_(model, QuantizationConfig())
    disable_observers_(model)
    model.train()
    x = torch.randn(4, 3, 8, 8)
    model(x)
    weights = [m for m in model.modules() if isinstance(m, WeightFakeQuantizer)]
    assert weights and all(float(w.scale.max()) < 0.5 for w in weights)
    scales = [w.scale.clone() for w in weights]
    model(x * 3)  # frozen from then on
    assert all(torch.equal(a, w.scale) for a, w in zip(scales, weights))
    fresh = TinyResNet()
    prepare_qat_(fresh, QuantizationConfig())
    fresh.load_state_dict(model.state_dict())  # a loaded scale counts as computed
    assert all(w.calibrated for w in fresh.modules() if isinstance(w, WeightFakeQuantizer))
