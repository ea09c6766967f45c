"""The QAT module classes swapped in place of the originals, and which class replaces which.

A swapped module keeps its object identity, its place in the module tree and its parameters;
only its class changes (``nn.Conv2d`` -> :class:`QATConv2d`, still ``isinstance`` of
``nn.Conv2d``) and fake-quantizer children holding buffers only are added (see
:mod:`sparsify.quantization`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.quantization.config import _INT32_SAFE, _W_QMAX, _W_QMIN, QuantizationConfig
from sparsify.quantization.fake_quant import (
    FakeQuantizer,
    WeightFakeQuantizer,
    _fake_quant,
    _fake_quant_bias,
)
from sparsify.quantization.tagging import quantized_input, requantize_like_input, tag_of

__all__ = [
    "QATModule",
    "QATConv1d",
    "QATConv2d",
    "QATConv3d",
    "QATBatchNorm1d",
    "QATBatchNorm2d",
    "QATBatchNorm3d",
    "QATLinear",
    "QATEmbedding",
    "QATReLU",
    "QATReLU6",
    "QATMaxPool2d",
    "QATFlatten",
    "QATAdaptiveAvgPool2d",
    "QATAvgPool2d",
    "QATSiLU",
]


class QATModule:
    """Marker base of every module class :func:`prepare_qat_` swaps in (and of :class:`QATSiLU`):
    ``isinstance(m, QATModule)`` tells a module that carries fake quantization."""

    _qat_original_type: str = ""


def _bias_min_scale(bias: torch.Tensor | None, input_scale: torch.Tensor) -> torch.Tensor | None:
    # A channel whose weights are (almost) all pruned gets a tiny weight scale; its bias,
    # quantized with input_scale * weight_scale, would overflow int32. Raising that channel's
    # weight scale costs nothing (its weights are ~0 anyway).
    if bias is None:
        return None
    return bias.detach().abs() / (input_scale.detach() * _INT32_SAFE)


class _QATWeightedMixin(QATModule):
    """Shared forward logic of quantized Conv/Linear."""

    input_quant: FakeQuantizer
    weight_quant: WeightFakeQuantizer
    output_quant: FakeQuantizer | None
    _qat_fused_activation: str | None

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.input_quant = FakeQuantizer(config.averaging_constant)
        self.weight_quant = WeightFakeQuantizer(config.weight_qmax, self.weight.shape[0])
        self.output_quant = FakeQuantizer(config.averaging_constant) if quantize_output else None
        self._qat_fused_activation = None

    def _qat_quantized_operands(
        self, x: torch.Tensor, quantize_bias: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, in_q = quantized_input(x, self.input_quant)
        bias = self.bias
        weight, w_scale = self.weight_quant(self.weight, _bias_min_scale(bias, in_q.scale))
        if bias is not None and quantize_bias:
            bias = _fake_quant_bias(bias, in_q.scale.detach() * w_scale.detach())
        return x, weight, bias

    def _qat_output(self, y: torch.Tensor) -> torch.Tensor:
        activation = self._qat_fused_activation
        if self.output_quant is not None:
            if activation in ("relu", "relu6"):
                return self.output_quant.activate_and_quantize(y, activation)
            return self.output_quant(y)
        if activation == "relu":
            return F.relu(y)
        if activation == "relu6":
            return F.relu6(y)
        return y


def _bn_factor(bn: nn.Module) -> torch.Tensor:
    """``gamma / sqrt(running_var + eps)`` per channel, kept away from 0 (it is divided by)."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
    factor = gamma / std
    tiny = torch.full_like(factor, 1e-12)
    return torch.where(factor.abs() < 1e-12, torch.where(factor < 0, -tiny, tiny), factor)


class _QATConvMixin(_QATWeightedMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.__dict__.get("_qat_bn")
        if bn is not None:
            return self._qat_forward_before_bn(x, bn)
        x, weight, bias = self._qat_quantized_operands(x)
        return self._qat_output(self._conv_forward(x, weight, bias))

    def _qat_forward_before_bn(self, x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
        # The weight is quantized as it will be after folding (w * factor), then divided back:
        # the BatchNorm that follows multiplies by the same factor at inference, so evaluation
        # here equals the folded INT8 conv. Gradients pass straight through (STE).
        x, _ = quantized_input(x, self.input_quant)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        factor = _bn_factor(bn).reshape(shape)
        folded, _ = self.weight_quant(self.weight * factor)
        return self._conv_forward(x, folded / factor, self.bias)


class QATConv1d(_QATConvMixin, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized input, weight, int32 bias and output."""


class QATConv2d(_QATConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input, weight, int32 bias and output."""


class QATConv3d(_QATConvMixin, nn.Conv3d):
    """``nn.Conv3d`` with fake-quantized input, weight, int32 bias and output."""


class _QATBatchNormMixin(QATModule):
    """BatchNorm after a fake-quantized conv: keeps training during QAT, quantizes its output
    (after the ReLU fused into it), and is folded into the conv by :func:`fold_qat_batchnorm_`."""

    output_quant: FakeQuantizer | None
    _qat_fused_activation: str | None
    _qat_stats_frozen: bool

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.output_quant = FakeQuantizer(config.averaging_constant) if quantize_output else None
        self._qat_fused_activation = None
        self._qat_stats_frozen = False
        if _bn_with_activation(self) and isinstance(self.drop, nn.Identity):
            # A ReLU/ReLU6 inside the BatchNorm is applied before the output quantization
            # (Conv -> Relu -> QuantizeLinear: fused into QLinearConv).
            kind = _ACTIVATION_KINDS.get(type(self.act))  # type: ignore[arg-type]
            if kind is not None:
                self._qat_fused_activation = kind
                if self.output_quant is not None:
                    self.output_quant.fused_activation = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._qat_stats_frozen and self.training:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)
        else:
            y = nn.modules.batchnorm._BatchNorm.forward(self, x)  # type: ignore[arg-type]
        y = _QATWeightedMixin._qat_output(self, y)  # type: ignore[arg-type]
        if _bn_with_activation(self) and self._qat_fused_activation is None:
            # BatchNorm + activation (timm): quantized before the activation, which stays
            # float (ONNX Runtime's QLinearConv needs the QuantizeLinear right after the conv).
            y = self.act(self.drop(y))  # type: ignore[operator]
        return y


_QAT_BN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _qat_bn_class(bn_type: type[nn.Module]) -> type[nn.Module]:
    """The QAT class for a BatchNorm class: ours for torch's, a subclass of the user's class
    with the QAT behaviour for one with an activation tail (timm's ``BatchNormAct2d``)."""
    if bn_type in _BN_SWAPS:
        return _BN_SWAPS[bn_type]
    if bn_type not in _QAT_BN_CLASSES:
        name = f"QAT{bn_type.__name__}"
        while name in globals():  # another library's class of the same name
            name += "_"
        cls = type(name, (_QATBatchNormMixin, bn_type), {"__module__": __name__})
        # so a pickled model finds its class again in this process (the package's
        # ``__getattr__`` finds it under ``sparsify.quantization.<name>`` too)
        globals()[name] = cls
        _QAT_BN_CLASSES[bn_type] = cls
    return _QAT_BN_CLASSES[bn_type]


class QATBatchNorm1d(_QATBatchNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` between a quantized conv and its output quantization."""


class QATBatchNorm2d(_QATBatchNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` between a quantized conv and its output quantization."""


class QATBatchNorm3d(_QATBatchNormMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` between a quantized conv and its output quantization."""


class QATLinear(_QATWeightedMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized input and weight (and output if configured).

    With a 2-D input ONNX gets a Gemm with an int32 bias (→ ``QGemm``); with more dimensions a
    MatMul followed by a float bias Add (→ ``MatMulIntegerToFloat`` or ``QLinearMatMul``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._qat_quantized_operands(x, quantize_bias=x.dim() == 2)
        return self._qat_output(F.linear(x, weight, bias))


class QATEmbedding(QATModule, nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized per tensor (symmetric int8).

    The looked-up rows are re-quantized with the table's own parameters (exact in PyTorch): the
    identical Q/DQ around the Gather let ONNX Runtime gather from the int8 table instead of
    dequantizing the whole table on every run.
    """

    weight_quant: WeightFakeQuantizer

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        # A gather does no integer arithmetic, so the AVX2 saturation issue (7-bit) does not
        # apply: use the full grid.
        self.weight_quant = WeightFakeQuantizer(2 ** (int(config.weight_bits) - 1) - 1, None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        weight, scale = self.weight_quant(self.weight)
        y = F.embedding(
            input,
            weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return _fake_quant(y, scale, self.weight_quant.zero_point, _W_QMIN, _W_QMAX)


class _QATActivationMixin(QATModule):
    """ReLU/ReLU6 that quantizes its output, or passes through what its producer quantized."""

    output_quant: FakeQuantizer
    _qat_kind = ""

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.output_quant = FakeQuantizer(config.averaging_constant)

    def _qat_activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found = tag_of(x)
        if found is not None and found[1] and found[0].fused_activation == self._qat_kind:
            # The conv before already applied this activation and quantized its result.
            return x
        # Never in place: the input may be a tagged tensor someone else still uses.
        return self.output_quant(self._qat_activation(x))


class QATReLU(_QATActivationMixin, nn.ReLU):
    """``nn.ReLU`` with a quantized output.

    ONNX Runtime drops a ReLU that is followed by a QuantizeLinear with zero point 0.
    """

    _qat_kind = "relu"

    def _qat_activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class QATReLU6(_QATActivationMixin, nn.ReLU6):
    """``nn.ReLU6`` with a quantized output."""

    _qat_kind = "relu6"

    def _qat_activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


class _QATRequantMixin(QATModule):
    """Max-pool/flatten: output keeps the input's quantization (exact; int8 in ONNX Runtime)."""

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return requantize_like_input(x, super().forward(x))  # type: ignore[misc]


class QATMaxPool2d(_QATRequantMixin, nn.MaxPool2d):
    """``nn.MaxPool2d`` that keeps its input's quantization."""


class QATFlatten(_QATRequantMixin, nn.Flatten):
    """``nn.Flatten`` that keeps its input's quantization."""


class _QATAvgPoolMixin(QATModule):
    """Average pooling of a quantized input gets its own output quantizer (new range)."""

    output_quant: FakeQuantizer

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.output_quant = FakeQuantizer(config.averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # type: ignore[misc]
        if tag_of(x) is None:
            return y  # float input: stays float (no integer kernel to gain)
        return self.output_quant(y)


class QATAdaptiveAvgPool2d(_QATAvgPoolMixin, nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` with a quantized output (→ ``QLinearGlobalAveragePool``)."""


class QATAvgPool2d(_QATAvgPoolMixin, nn.AvgPool2d):
    """``nn.AvgPool2d`` with a quantized output (→ ``QLinearAveragePool``)."""


class QATSiLU(QATModule, nn.SiLU):
    """SiLU between quantized tensors: ``x * sigmoid(x)`` with the sigmoid and the product
    fake-quantized, so ONNX Runtime runs QLinearSigmoid and QLinearMul on integers.

    Only applied where its input is already quantized (the output of a quantized Conv+BN); a
    float input passes through a plain SiLU. Put into Ultralytics' Conv blocks by
    :func:`sparsify.trainers.detection.quantize_conv_activations_`.
    """

    _qat_original_type = "SiLU"

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.sigmoid_quant = FakeQuantizer(averaging_constant)
        self.output_quant = FakeQuantizer(averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tag_of(x) is None:
            return F.silu(x)
        return self.output_quant(x * self.sigmoid_quant(torch.sigmoid(x)))


_WEIGHTED_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QATConv1d,
    nn.Conv2d: QATConv2d,
    nn.Conv3d: QATConv3d,
    nn.Linear: QATLinear,
}
_ACTIVATION_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: QATReLU,
    nn.ReLU6: QATReLU6,
    nn.MaxPool2d: QATMaxPool2d,
    nn.Flatten: QATFlatten,
    nn.AdaptiveAvgPool2d: QATAdaptiveAvgPool2d,
    nn.AvgPool2d: QATAvgPool2d,
}
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: QATBatchNorm1d, nn.BatchNorm2d: QATBatchNorm2d, nn.BatchNorm3d: QATBatchNorm3d,
}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACTIVATION_KINDS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6"}


def _bn_with_activation(bn: nn.Module) -> bool:
    """A BatchNorm that applies dropout and an activation after normalising (timm's
    ``BatchNormAct2d``: ``act(drop(batch_norm(x)))``)."""
    return isinstance(bn, _BN_TYPES) and isinstance(getattr(bn, "act", None), nn.Module) \
        and isinstance(getattr(bn, "drop", None), nn.Module)
