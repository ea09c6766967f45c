"""QAT preparation (:func:`prepare_qat_`), the switches used while QAT runs (observers,
BatchNorm statistics), and what a model has had prepared."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from sparsify.errors import did_you_mean
from sparsify.quantization.config import QuantizationConfig
from sparsify.quantization.fake_quant import FakeQuantizer, WeightFakeQuantizer
from sparsify.quantization.graph import (
    _followed_by_bn,
    _fusable_activations,
    _fx_trace,
    _residual_output_modules,
    conv_bn_pairs,
)
from sparsify.quantization.modules import (
    _ACTIVATION_SWAPS,
    _WEIGHTED_SWAPS,
    QATConv1d,
    QATConv2d,
    QATConv3d,
    QATEmbedding,
    QATLinear,
    QATModule,
    _qat_bn_class,
    _QATBatchNormMixin,
)
from sparsify.quantization.tagging import tag_of

logger = logging.getLogger(__name__)

__all__ = [
    "prepare_qat_",
    "disable_observers_",
    "enable_observers_",
    "freeze_bn_stats_",
    "is_qat_prepared",
    "quantized_module_names",
]


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _select_modules(
    model: nn.Module, config: QuantizationConfig
) -> Iterator[tuple[str, nn.Module, type[nn.Module]]]:
    excluded_types = set(config.exclude_module_types) | set(config.ignore)
    prefixes = [""] if config.submodules is None else list(config.submodules)
    for name, module in model.named_modules():
        if not any(_under(name, p) for p in prefixes):
            continue
        if type(module).__name__ in excluded_types:
            continue
        if any(_under(name, ig) for ig in config.ignore if ig):
            continue
        target = _WEIGHTED_SWAPS.get(type(module))
        if target is not None:
            yield name, module, target
        elif type(module) is nn.Embedding and config.quantize_embeddings:
            yield name, module, QATEmbedding
        elif config.quantize_conv_activations and type(module) in _ACTIVATION_SWAPS:
            if type(module) is nn.MaxPool2d and module.return_indices:
                continue
            yield name, module, _ACTIVATION_SWAPS[type(module)]


def prepare_qat_(model: nn.Module, config: QuantizationConfig | None = None) -> nn.Module:
    """Insert fake quantization into ``model`` in place, for QAT and INT8 ONNX export.

    Quantized: ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (input, per-channel weight, int32 bias,
    output as configured), ``nn.Embedding`` (table), and with ``quantize_conv_activations``
    the ReLU/ReLU6/pooling/flatten modules between convolutions. Only exact torch types are
    swapped; subclasses with their own ``forward`` are left alone. Observers start enabled:
    run a few training-mode forward passes to calibrate, and call :func:`disable_observers_`
    to freeze the scales. Parameter names do not change (see the module docstring).

    Args:
        model: the model, changed in place.
        config: what to quantize; defaults to :class:`QuantizationConfig()`.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: the model was already prepared, or a ``submodules`` prefix names no module.
    """
    config = config or QuantizationConfig()
    if is_qat_prepared(model):
        raise ValueError(
            f"{type(model).__name__} already has fake quantization; prepare_qat_ must run once "
            "per model (re-load a fresh model to prepare it again)."
        )
    names = [n for n, _ in model.named_modules() if n]
    for prefix in config.submodules or []:
        if not any(_under(n, prefix) for n in names):
            raise ValueError(
                f"QuantizationModifier submodule '{prefix}' matches no module of "
                f"{type(model).__name__}.{did_you_mean(prefix, names)} Top-level modules: "
                f"{', '.join(n for n, _ in model.named_children())}."
            )
    gm = _fx_trace(model)
    pairs = conv_bn_pairs(model, gm) if config.fold_batchnorm else []
    bn_of = dict(pairs)
    paired_bns = set(bn_of.values())
    fusable = _fusable_activations(model, gm, paired_bns) if gm is not None else {}

    selected = list(_select_modules(model, config))
    swapped: set[str] = set()
    for name, module, target in selected:
        original = type(module).__name__
        if target is QATLinear:
            quantize_output = config.quantize_linear_activations
        else:
            quantize_output = config.quantize_conv_activations
        if (target in (QATConv1d, QATConv2d, QATConv3d) and name not in bn_of
                and gm is not None and _followed_by_bn(gm, model, name)):
            # A conv whose BatchNorm is not folded would stay float in ONNX Runtime with Q/DQ
            # around it: slower than no quantization. Leave it float.
            logger.warning("%s is followed by a BatchNorm that is not folded: left float.", name)
            continue
        module.__class__ = target
        module._qat_original_type = original
        module._qat_setup(config, quantize_output)
        swapped.add(name)
        if name in bn_of:
            bn_name = bn_of[name]
            bn = model.get_submodule(bn_name)
            bn_type = type(bn).__name__
            bn.__class__ = _qat_bn_class(type(bn))
            bn._qat_original_type = bn_type
            bn._qat_setup(config, module.output_quant is not None)
            module.output_quant = None
            module.__dict__["_qat_bn"] = bn
            module.__dict__["_qat_bn_name"] = bn_name
            swapped.add(bn_name)

    for name, (act_name, kind) in fusable.items():
        module = model.get_submodule(name)
        if name in paired_bns and name not in swapped:
            continue
        # Fuse only if the activation module itself is swapped: it must pass the tensor
        # through instead of applying the activation a second time after the Q/DQ.
        if name in swapped and act_name in swapped and getattr(module, "output_quant", None) \
                is not None:
            module._qat_fused_activation = kind
            module.output_quant.fused_activation = kind

    residuals = 0
    if gm is not None and config.quantize_conv_activations:
        for name in _residual_output_modules(model, gm):
            if not any(_under(name, p) for p in (config.submodules or [""])):
                continue
            block = model.get_submodule(name)
            block.add_module("residual_output_quant", FakeQuantizer(config.averaging_constant))
            block.register_forward_hook(_quantize_residual_output)
            residuals += 1

    n_weighted = sum(1 for _, _, t in selected if t in _WEIGHTED_SWAPS.values())
    logger.info(
        "Prepared QAT: %d conv/linear layers, %d other modules fake-quantized (%d ReLUs fused "
        "into the layer before, %d residual sums quantized).",
        n_weighted, len(selected) - n_weighted,
        sum(1 for n in fusable if n in swapped and model.get_submodule(n)._qat_fused_activation),
        residuals,
    )
    return model


def _quantize_residual_output(module: nn.Module, inputs: tuple, output: object) -> object:
    """Forward hook: quantize a residual block's sum when the block runs on quantized input
    (a block in a float region, e.g. outside the recipe's ``submodules``, stays float)."""
    if not isinstance(output, torch.Tensor) or tag_of(output) is not None:
        return output
    first = inputs[0] if inputs else None
    if not isinstance(first, torch.Tensor) or tag_of(first) is None:
        return output
    return module.residual_output_quant(output)


def _quantizers(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if isinstance(module, (FakeQuantizer, WeightFakeQuantizer)):
            yield module


def disable_observers_(model: nn.Module) -> int:
    """Freeze every observer: scales and zero points stay as they are from now on.

    Used at a recipe's ``disable_quantization_observer_epoch``.

    Returns:
        The number of quantizers frozen.
    """
    # Not torch.ao.quantization.disable_observer: it acts only on torch's FakeQuantizeBase
    # modules, which the quantizers here are not (see fake_quant.py).
    n = 0
    for quantizer in _quantizers(model):
        quantizer.observer_enabled.fill_(False)
        n += 1
    return n


def enable_observers_(model: nn.Module) -> int:
    """Undo :func:`disable_observers_`.

    Returns:
        The number of quantizers re-enabled.
    """
    n = 0
    for quantizer in _quantizers(model):
        quantizer.observer_enabled.fill_(True)
        n += 1
    return n


def freeze_bn_stats_(model: nn.Module) -> int:
    """Stop updating the running statistics of the BatchNorms that train beside QAT convs
    (recipe ``freeze_bn_stats_epoch``); they normalise with their running averages from now on.

    Returns:
        The number of BatchNorm layers frozen.
    """
    # Not torch.ao.nn.intrinsic.qat.freeze_bn_stats: it acts only on torch's fused ConvBn
    # modules; here the BatchNorm stays a module of its own beside the QAT conv.
    n = 0
    for module in model.modules():
        if isinstance(module, _QATBatchNormMixin):
            module._qat_stats_frozen = True
            n += 1
    return n


def is_qat_prepared(model: nn.Module) -> bool:
    """True if :func:`prepare_qat_` has inserted fake quantization into ``model``."""
    return any(isinstance(m, QATModule) for m in model.modules())


def quantized_module_names(model: nn.Module) -> dict[str, str]:
    """Modules that carry fake quantization, mapped to their original class name.

    Returns:
        ``{module name: original type name}``, e.g. ``{"layer1.0.conv1": "Conv2d"}``, in
        module order.
    """
    return {
        name: module._qat_original_type
        for name, module in model.named_modules()
        if isinstance(module, QATModule)
    }
