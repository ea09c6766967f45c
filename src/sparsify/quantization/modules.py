"""Quantization-aware training (QAT): fold BatchNorm, insert fake quantization.

The placement of fake quantization decides whether ONNX Runtime runs the exported graph with
integer kernels or with float arithmetic plus conversion overhead (see
``docs/INT8_EXPORT.md``). The rules followed here are ONNX Runtime's QDQ fusion rules:

* ``Conv``: DequantizeLinear on input, weight and int32 bias **and** QuantizeLinear on the output
  (after a ReLU/ReLU6 when one follows) → ``QLinearConv``.
* ``Linear``: DequantizeLinear on input and weight → ``MatMulIntegerToFloat`` / ``QGemm``; with
  a QuantizeLinear on the output as well → ``QLinearMatMul`` / ``QGemm`` with integer output.
* residual ``Add``: both inputs quantized and its output quantized (by the ReLU after it, or,
  for a block that returns the sum as MobileNetV2's inverted residuals do, by a
  ``residual_output_quant`` on the block's output) → ``QLinearAdd``; global average pooling
  → ``QLinearGlobalAveragePool``; max pooling and flattening keep the quantization
  parameters of their input, so ONNX Runtime runs them on integers.

How it is done, and what it means for parameter names (pruning masks are keyed by them):

* Quantized modules keep their object identity and their place in the module tree; only their
  class is switched to a subclass defined here (``nn.Conv2d`` → :class:`QATConv2d`, which still
  ``isinstance`` of ``nn.Conv2d``). **Parameter names do not change**: ``layer1.0.conv1.weight``
  stays ``layer1.0.conv1.weight`` and is the same ``nn.Parameter`` object, so masks, optimizer
  state and ``__ALL_PRUNABLE__`` selectors keep working. Fake-quantizers are added as child
  modules holding buffers only (``<module>.input_quant``, ``<module>.weight_quant``,
  ``<module>.output_quant``), so they appear in ``state_dict`` but never among parameters.
* BatchNorm folding (:func:`fuse_conv_bn_`) multiplies the conv weight in place (same Parameter
  object, zeros stay zero) and re-uses the BatchNorm's ``bias`` Parameter as the conv's bias:
  ``layer1.0.bn1.bias`` becomes ``layer1.0.conv1.bias`` (the same object, so an optimizer that
  held it keeps training it). The BatchNorm module is replaced by ``nn.Identity``, so its
  ``weight``/``bias``/running statistics disappear from ``named_parameters``/``state_dict``.
  A BatchNorm with its activation inside (timm's ``BatchNormAct2d``) is folded the same way;
  its activation stays in its place (a ReLU/ReLU6 moves into the conv before the output
  quantization, as for a separate ReLU module).
* Quantized activations are tracked by tagging the fake-quantized output tensor, so a tensor is
  quantized once by its producer and every consumer re-uses the same QuantizeLinear.

Exporting: fake quantization is exported by the legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) as QuantizeLinear/DequantizeLinear pairs through
``symbolic`` methods of the autograd functions below (``FakeQuantize`` cannot pass through the
dynamo exporter, pitfall 1). :func:`sparsify.export.export_onnx` then folds the constant weight
quantization into int8 initializers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "QuantizationConfig",
    "FakeQuantizer",
    "WeightFakeQuantizer",
    "fuse_conv_bn_",
    "conv_bn_pairs",
    "fold_qat_batchnorm_",
    "freeze_bn_stats_",
    "has_unfolded_qat_batchnorm",
    "prepare_qat_",
    "disable_observers_",
    "enable_observers_",
    "is_qat_prepared",
    "quantized_module_names",
    "QATConv1d",
    "QATConv2d",
    "QATConv3d",
    "QATLinear",
    "QATEmbedding",
    "QATReLU",
    "QATReLU6",
    "QATMaxPool2d",
    "QATAdaptiveAvgPool2d",
    "QATAvgPool2d",
    "QATFlatten",
]

# Activations are unsigned 8 bit (asymmetric), weights signed 8 bit storage (symmetric): the
# u8 x s8 combination is what ONNX Runtime's x86 integer kernels are built for.
_ACT_QMIN, _ACT_QMAX = 0, 255
_W_QMIN, _W_QMAX = -128, 127
# int32 bias: keep away from the int32 limits so that float32 rounding cannot overflow.
_INT32_SAFE = float(2**31 - 256)
_EPS = 1e-12
_TAG = "_sparsify_qtag"


@dataclass
class QuantizationConfig:
    """What :func:`prepare_qat_` quantizes and how.

    The scheme is fixed to what ONNX Runtime runs fast on x86 CPUs: weights symmetric per
    output channel (per tensor for embeddings), activations asymmetric per tensor (uint8).

    Attributes:
        weight_bits: bits of the weight grid (recipe ``weight_bits``), 2-8. Weights are stored
            as int8 whatever the value; fewer bits only narrow the grid.
        activation_bits: bits of activations (recipe ``activation_bits``). Only 8 is supported:
            ONNX ``QuantizeLinear`` saturates at the full uint8 range, so a narrower grid in
            PyTorch would not match ONNX Runtime.
        weight_quant_range_7bit: with ``weight_bits == 8`` use the grid -63..63 instead of
            -127..127. CPUs with AVX2 but without VNNI saturate u8 x s8 products in ONNX
            Runtime, which makes INT8 outputs drift 2-5 % of the logit range from PyTorch's
            fake quantization; 7-bit weights remove the drift (INT8_EXPORT.md pitfall 2).
            Default True because that is this project's target CPU; set False for VNNI/AVX-512
            or GPU targets.
        reduce_range: SparseML's recipe flag. Here it only forces 7-bit weights (like
            ``weight_quant_range_7bit``); activations are never reduced, because ONNX cannot
            express a 0..127 activation grid without an extra Clip that breaks ONNX Runtime's
            fusions.
        exclude_module_types: class names (``type(m).__name__``) never quantized, e.g.
            ``["LayerNorm", "Tanh"]`` (recipe ``exclude_module_types``).
        submodules: module-name prefixes to quantize (recipe ``submodules``); ``None`` means the
            whole model. ``"bert.encoder"`` selects ``bert.encoder`` and everything below it.
        ignore: module names (prefixes, as for ``submodules``) or class names not to quantize
            (newer recipe key ``ignore``).
        quantize_embeddings: fake-quantize ``nn.Embedding`` weights (per tensor, symmetric, so
            ONNX Runtime can gather from the int8 table).
        quantize_linear_activations: fake-quantize the *output* of ``nn.Linear`` layers. Their
            inputs are always quantized (that is what makes the MatMul integer). Without it
            ONNX Runtime produces ``MatMulIntegerToFloat``/``QGemm`` with float output.
        quantize_conv_activations: fake-quantize the output of convolutions, and of the
            ReLU/ReLU6/pooling/flatten modules between them. Without it convolutions cannot
            become ``QLinearConv`` (ONNX Runtime needs the output QuantizeLinear).
        fold_batchnorm: quantize each Conv followed by a BatchNorm as the folded pair
            (INT8_EXPORT.md pitfall 5). During QAT the BatchNorm keeps training (batch
            statistics, running averages updated until :func:`freeze_bn_stats_`) and the conv's
            weight is fake-quantized in its folded form ``w * gamma / sqrt(running_var + eps)``;
            :func:`fold_qat_batchnorm_` (called at finalize and by the export) then folds the
            pair into one conv whose weights lie on the same grid. Folding at QAT start instead
            made training unstable (bench/bench_image_classification.py: top-1 0.92 -> 0.38
            the epoch after QAT started). ``False`` leaves BatchNorm float and the convs before
            it unquantized.
        averaging_constant: weight of a new batch in the moving-average min/max of the
            activation observers (PyTorch's default for QAT is 0.01).
    """

    weight_bits: int = 8
    activation_bits: int = 8
    weight_quant_range_7bit: bool = True
    reduce_range: bool = False
    exclude_module_types: list[str] = field(default_factory=list)
    submodules: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    quantize_embeddings: bool = True
    quantize_linear_activations: bool = True
    quantize_conv_activations: bool = True
    fold_batchnorm: bool = True
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        if not 2 <= int(self.weight_bits) <= 8:
            raise ValueError(
                f"weight_bits={self.weight_bits} is not supported; valid: 2..8 "
                "(weights are stored as int8)."
            )
        if int(self.activation_bits) != 8:
            raise ValueError(
                f"activation_bits={self.activation_bits} is not supported; valid: 8. ONNX "
                "QuantizeLinear saturates at the uint8 range, so other widths would not match "
                "ONNX Runtime."
            )
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(
                f"averaging_constant={self.averaging_constant} must be in (0, 1]."
            )

    @property
    def weight_qmax(self) -> int:
        """Largest weight grid value; the grid is symmetric, ``-weight_qmax..weight_qmax``."""
        bits = int(self.weight_bits)
        if bits == 8 and (self.weight_quant_range_7bit or self.reduce_range):
            bits = 7
        return 2 ** (bits - 1) - 1


# --------------------------------------------------------------------------------------------
# Fake quantization ops that export as QuantizeLinear/DequantizeLinear
# --------------------------------------------------------------------------------------------


def _is_exporting() -> bool:
    """True while the legacy ONNX exporter traces the model."""
    in_export = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(in_export and in_export())


class _QDQ(torch.autograd.Function):
    """Fake quantization used only during ONNX export, to emit exactly one Q/DQ pair.

    Training uses ``torch.fake_quantize_*`` directly (with their straight-through gradients).
    The ``symbolic`` here controls the ONNX form: zero-point type from the range (uint8 for
    0..255, int8 otherwise) and per-axis attributes. Weights use the full int8 range in ONNX;
    a narrower grid (7 bit) is obtained through the scale, so values never reach the ends.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, axis):  # type: ignore[override]
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, axis):  # pragma: no cover - export only
        onnx_type = 2 if qmin >= 0 else 3  # TensorProto.UINT8 / TensorProto.INT8
        zp = g.op("Cast", zero_point, to_i=onnx_type)
        attrs = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale, zp, **attrs)
        return g.op("DequantizeLinear", q, scale, zp, **attrs)


class _BiasQDQ(torch.autograd.Function):
    """int32 bias quantization (scale = input scale x weight scale), export only.

    ONNX Runtime fuses a Conv/Gemm into an integer kernel only if its bias is an int32 tensor
    behind a DequantizeLinear. QuantizeLinear cannot produce int32, so the symbolic writes the
    quantization as Div/Round/Clip/Cast; all inputs are constants and
    :func:`sparsify.export.export_onnx` folds them into an int32 initializer.
    """

    @staticmethod
    def forward(ctx, bias, scale):  # type: ignore[override]
        return torch.round(bias / scale).clamp(-_INT32_SAFE, _INT32_SAFE) * scale

    @staticmethod
    def symbolic(g, bias, scale):  # pragma: no cover - export only
        q = g.op("Round", g.op("Div", bias, scale))
        lo = g.op("Constant", value_t=torch.tensor(-_INT32_SAFE, dtype=torch.float32))
        hi = g.op("Constant", value_t=torch.tensor(_INT32_SAFE, dtype=torch.float32))
        q = g.op("Cast", g.op("Clip", q, lo, hi), to_i=6)  # TensorProto.INT32
        sizes = bias.type().sizes()
        zp = g.op("Constant", value_t=torch.zeros(sizes, dtype=torch.int32))
        return g.op("DequantizeLinear", q, scale, zp, axis_i=0)


def _fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    if _is_exporting():
        return _QDQ.apply(x, scale, zero_point, qmin, qmax, axis)
    if x.dtype != torch.float32:
        # Mixed precision: torch's fake-quant kernels want float32; the grid is the same.
        return _fake_quant(x.float(), scale, zero_point, qmin, qmax, axis).to(x.dtype)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)


def _fake_quant_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if _is_exporting():
        return _BiasQDQ.apply(bias, scale)
    # Straight-through estimator: forward sees the int32 grid, gradient passes unchanged.
    quantized = torch.round(bias.detach() / scale).clamp(-_INT32_SAFE, _INT32_SAFE) * scale
    return bias + (quantized - bias.detach())


# --------------------------------------------------------------------------------------------
# Fake-quantizer modules (buffers only, no parameters)
# --------------------------------------------------------------------------------------------


class FakeQuantizer(nn.Module):
    """Per-tensor asymmetric uint8 fake quantization of activations.

    A moving-average min/max observer (range always widened to include 0, so zero and ReLU
    padding are exact) updates ``scale``/``zero_point`` in training mode while
    ``observer_enabled``. The first observation initialises the range even in eval mode, so an
    un-calibrated quantizer never exports a meaningless scale. Outside training the buffers are
    used as they are, so evaluation and export see the scales training ended with.

    Attributes:
        fused_activation: ``"relu"``/``"relu6"`` when the owning module applies that activation
            before quantizing (conv followed by ReLU); the activation module after it then
            passes the tensor through unchanged.
    """

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.qmin, self.qmax = _ACT_QMIN, _ACT_QMAX
        self.averaging_constant = float(averaging_constant)
        self.fused_activation: str | None = None
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("observer_enabled", torch.tensor(True))

    def extra_repr(self) -> str:
        return (
            f"uint8 per-tensor, scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"
            + (f", fused_activation={self.fused_activation}" if self.fused_activation else "")
        )

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the moving-average range and the quantization parameters from ``x``."""
        x = x.detach()
        lo = x.min().float().clamp(max=0.0)
        hi = x.max().float().clamp(min=0.0)
        if bool(self.initialized):
            c = self.averaging_constant
            lo = self.min_val + c * (lo - self.min_val)
            hi = self.max_val + c * (hi - self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        self.initialized.fill_(True)
        scale = ((hi - lo) / float(self.qmax - self.qmin)).clamp(min=1e-8)
        zero_point = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point.to(torch.int32))

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` with the current parameters, without observing it."""
        return _fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            bool(self.observer_enabled)
            and (self.training or not bool(self.initialized))
            and not _is_exporting()
        ):
            self.observe(x)
        return _tag(self.fake_quant(x), self)


class WeightFakeQuantizer(nn.Module):
    """Symmetric int8 fake quantization of a weight, per output channel or per tensor.

    The scale is recomputed from the current weight on every forward while the observer is
    enabled (weights change every step, and min/max of a weight is cheap), and frozen in the
    ``scale`` buffer once :func:`disable_observers_` is called.

    Args:
        qmax: largest grid value; the grid is ``-qmax..qmax`` (63 for 7-bit weights).
        num_channels: output channels for per-channel quantization, ``None`` for per tensor.
    """

    def __init__(self, qmax: int, num_channels: int | None) -> None:
        super().__init__()
        self.qmax = int(qmax)
        self.axis = None if num_channels is None else 0
        shape = () if num_channels is None else (num_channels,)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("observer_enabled", torch.tensor(True))

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.axis is None else "per-channel"
        return f"int8 symmetric {kind}, grid -{self.qmax}..{self.qmax}"

    def compute_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """Scale that maps the largest magnitude (per channel) to ``qmax``."""
        w = weight.detach()
        if self.axis is None:
            amax = w.abs().max()
        else:
            amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        return (amax / self.qmax).clamp(min=_EPS)

    def forward(
        self, weight: torch.Tensor, min_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake-quantize ``weight``.

        Args:
            weight: the float weight.
            min_scale: lower bound of the scale (per channel), used to keep the int32 bias
                of nearly empty (pruned) channels from overflowing.

        Returns:
            The fake-quantized weight and the scale used.
        """
        if bool(self.observer_enabled):
            scale = self.compute_scale(weight)
            if not _is_exporting():
                with torch.no_grad():
                    self.scale.copy_(scale)
        else:
            scale = self.scale
        if min_scale is not None:
            scale = torch.maximum(scale, min_scale)
        wq = _fake_quant(weight, scale, self.zero_point, _W_QMIN, _W_QMAX, self.axis)
        return wq, scale


# --------------------------------------------------------------------------------------------
# Tensor tags: which quantizer produced a tensor (quantize once, at the producer)
# --------------------------------------------------------------------------------------------


def _version(t: torch.Tensor) -> int:
    # Tensors made under ``torch.inference_mode`` (Ultralytics validates that way) have no
    # version counter; -1 stands for "not tracked".
    return -1 if t.is_inference() else t._version


def _tag(t: torch.Tensor, quantizer: FakeQuantizer) -> torch.Tensor:
    # The version counter detects in-place changes (``out += identity``) after tagging.
    setattr(t, _TAG, (quantizer, _version(t)))
    return t


def _tag_of(t: torch.Tensor) -> tuple[FakeQuantizer, bool] | None:
    """The quantizer ``t`` was produced by, and whether ``t`` is that very tensor.

    A view of a quantized tensor (``torch.flatten`` after pooling) holds values of the same
    grid; callers re-quantize it with the same quantizer, which is exact in PyTorch and lets
    ONNX Runtime run the reshape on integers (identical Q/DQ parameters around it).
    """
    info = getattr(t, _TAG, None)
    if info is not None and info[1] == _version(t):
        return info[0], True
    base = getattr(t, "_base", None)
    if base is not None:
        info = getattr(base, _TAG, None)
        if info is not None and info[1] == _version(base):
            return info[0], False
    return None


def _quantized_input(x: torch.Tensor, own: FakeQuantizer) -> tuple[torch.Tensor, FakeQuantizer]:
    """``x`` quantized: by its producer if it already was, else by ``own`` (which observes)."""
    found = _tag_of(x)
    if found is None:
        return own(x), own
    quantizer, same = found
    if same:
        return x, quantizer
    return _tag(quantizer.fake_quant(x), quantizer), quantizer


def _requantize_like_input(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Give ``y`` (a max-pool/reshape of ``x``) the quantization of ``x``, if ``x`` had one."""
    found = _tag_of(x)
    if found is None:
        return y
    quantizer = found[0]
    return _tag(quantizer.fake_quant(y), quantizer)


# --------------------------------------------------------------------------------------------
# QAT module classes (swapped in place of the originals, see module docstring)
# --------------------------------------------------------------------------------------------


class _QATModule:
    """Marker base of every module class this module swaps in."""

    _qat_original_type: str = ""


def _bias_min_scale(bias: torch.Tensor | None, input_scale: torch.Tensor) -> torch.Tensor | None:
    # A channel whose weights are (almost) all pruned gets a tiny weight scale; its bias,
    # quantized with input_scale * weight_scale, would overflow int32. Raising that channel's
    # weight scale costs nothing (its weights are ~0 anyway).
    if bias is None:
        return None
    return bias.detach().abs() / (input_scale.detach() * _INT32_SAFE)


class _QATWeightedMixin(_QATModule):
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
        x, in_q = _quantized_input(x, self.input_quant)
        bias = self.bias
        weight, w_scale = self.weight_quant(self.weight, _bias_min_scale(bias, in_q.scale))
        if bias is not None and quantize_bias:
            bias = _fake_quant_bias(bias, in_q.scale.detach() * w_scale.detach())
        return x, weight, bias

    def _qat_output(self, y: torch.Tensor) -> torch.Tensor:
        if self._qat_fused_activation == "relu":
            y = F.relu(y)
        elif self._qat_fused_activation == "relu6":
            y = F.relu6(y)
        if self.output_quant is not None:
            y = self.output_quant(y)
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
        x, _ = _quantized_input(x, self.input_quant)
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


class _QATBatchNormMixin(_QATModule):
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
        globals()[name] = cls  # so a pickled model finds its class again in this process
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


class QATEmbedding(_QATModule, nn.Embedding):
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


class _QATActivationMixin(_QATModule):
    """ReLU/ReLU6 that quantizes its output, or passes through what its producer quantized."""

    output_quant: FakeQuantizer
    _qat_kind = ""

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.output_quant = FakeQuantizer(config.averaging_constant)

    def _qat_activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found = _tag_of(x)
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


class _QATRequantMixin(_QATModule):
    """Max-pool/flatten: output keeps the input's quantization (exact; int8 in ONNX Runtime)."""

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _requantize_like_input(x, super().forward(x))  # type: ignore[misc]


class QATMaxPool2d(_QATRequantMixin, nn.MaxPool2d):
    """``nn.MaxPool2d`` that keeps its input's quantization."""


class QATFlatten(_QATRequantMixin, nn.Flatten):
    """``nn.Flatten`` that keeps its input's quantization."""


class _QATAvgPoolMixin(_QATModule):
    """Average pooling of a quantized input gets its own output quantizer (new range)."""

    output_quant: FakeQuantizer

    def _qat_setup(self, config: QuantizationConfig, quantize_output: bool) -> None:
        self.output_quant = FakeQuantizer(config.averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # type: ignore[misc]
        if _tag_of(x) is None:
            return y  # float input: stays float (no integer kernel to gain)
        return self.output_quant(y)


class QATAdaptiveAvgPool2d(_QATAvgPoolMixin, nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` with a quantized output (→ ``QLinearGlobalAveragePool``)."""


class QATAvgPool2d(_QATAvgPoolMixin, nn.AvgPool2d):
    """``nn.AvgPool2d`` with a quantized output (→ ``QLinearAveragePool``)."""


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


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


def _fx_trace(model: nn.Module):  # -> torch.fx.GraphModule | None
    try:
        import torch.fx

        class _Tracer(torch.fx.Tracer):
            # BatchNorm subclasses (timm's BatchNormAct2d: BatchNorm + activation) stay one
            # node, so a Conv -> BatchNorm pair is seen whatever the BatchNorm's class.
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return isinstance(m, _BN_TYPES) or super().is_leaf_module(m, qualname)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # any tracing failure means "no graph": callers fall back
        logger.debug("torch.fx cannot trace %s (%s)", type(model).__name__, exc)
        return None


def _call_counts(gm) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _conv_bn_pairs_fx(model: nn.Module, gm) -> list[tuple[str, str]]:
    counts = _call_counts(gm)
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or counts[node.target] != 1 or len(node.users) != 1:
            continue
        if type(model.get_submodule(node.target)) not in _CONV_TYPES:
            continue
        (user,) = node.users
        if user.op != "call_module" or counts[user.target] != 1:
            continue
        if isinstance(model.get_submodule(user.target), _BN_TYPES) and user.args[0] is node:
            pairs.append((node.target, user.target))
    return pairs


def _conv_bn_pairs_by_structure(model: nn.Module) -> list[tuple[str, str]]:
    # Used only when fx cannot trace. nn.Sequential runs its children in order, so a Conv
    # directly followed by a BatchNorm there is certain; conv/bn, convN/bnN attribute pairs are
    # the torchvision/ultralytics convention and are folded with a warning.
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        if type(parent) is nn.Sequential:
            for (cname, child), (bname, nxt) in zip(children, children[1:]):
                if type(child) in _CONV_TYPES and isinstance(nxt, _BN_TYPES):
                    pairs.append((prefix + cname, prefix + bname))
            continue
        named = dict(children)
        for cname, child in children:
            if type(child) not in _CONV_TYPES or not cname.startswith("conv"):
                continue
            bname = "bn" + cname[len("conv") :]
            if isinstance(named.get(bname), _BN_TYPES):
                logger.warning(
                    "Folding %s%s into %s%s by name only (torch.fx could not trace the model).",
                    prefix, bname, prefix, cname,
                )
                pairs.append((prefix + cname, prefix + bname))
    return pairs


@torch.no_grad()
def _fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    old_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
    new_bias = beta + (old_bias - bn.running_mean.double()) * factor
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    # In place: the Parameter object (and any pruning mask's zeros) is kept.
    conv.weight.mul_(factor.reshape(shape).to(conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))
    elif bn.bias is not None:
        # Re-use BN's bias Parameter: an optimizer that already holds it keeps training it.
        bn.bias.copy_(new_bias.to(bn.bias.dtype))
        conv.bias = bn.bias
    else:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        logger.warning(
            "Folded a BatchNorm without affine parameters: the new bias of a %s is a new "
            "parameter, add it to the optimizer if it should train.",
            type(conv).__name__,
        )


def fuse_conv_bn_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    The pattern is found with ``torch.fx`` (exact data flow; works for torchvision ResNet,
    MobileNet and plain ``nn.Sequential`` CNNs). When the model cannot be traced, Conv→BN
    pairs inside ``nn.Sequential`` and ``conv``/``bn`` (``convN``/``bnN``) sibling attributes
    are folded instead. Folding uses the running statistics (inference semantics), so it is
    done once at QAT start; ``freeze_bn_stats_epoch`` then has nothing left to freeze.

    Names after folding: the conv weight keeps its name and Parameter object (scaled in place,
    zeros stay zero); ``<bn>.bias`` becomes ``<conv>.bias`` (same Parameter object) when the
    conv had no bias; the BatchNorm is replaced by ``nn.Identity``.

    Args:
        model: the model, changed in place.

    Returns:
        The folded ``(conv_name, bn_name)`` pairs.
    """
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold_bn_into_conv(model.get_submodule(conv_name), bn)
        _replace_module(model, bn_name, _bn_tail(bn, activation_applied=False))
    if pairs:
        logger.info("Folded %d BatchNorm layers into convolutions.", len(pairs))
    return pairs


def conv_bn_pairs(model: nn.Module, gm=None) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every BatchNorm that directly follows a convolution and
    can be folded into it (see :func:`fuse_conv_bn_` for how pairs are found)."""
    gm = gm if gm is not None else _fx_trace(model)
    pairs = _conv_bn_pairs_fx(model, gm) if gm is not None else _conv_bn_pairs_by_structure(model)
    usable = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not _foldable_bn(bn):
            logger.warning("Not folding %s: %s has its own forward.", bn_name, type(bn).__name__)
        elif bn.running_mean is None or bn.running_var is None:
            logger.warning("Not folding %s: it tracks no running statistics.", bn_name)
        elif bn.num_features == conv.out_channels:
            usable.append((conv_name, bn_name))
    return usable


def _replace_module(model: nn.Module, name: str, by: nn.Module | None = None) -> None:
    """Put ``by`` (default ``nn.Identity()``) where the submodule ``name`` was."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, by if by is not None else nn.Identity())


def _bn_with_activation(bn: nn.Module) -> bool:
    """A BatchNorm that applies dropout and an activation after normalising (timm's
    ``BatchNormAct2d``: ``act(drop(batch_norm(x)))``)."""
    return isinstance(bn, _BN_TYPES) and isinstance(getattr(bn, "act", None), nn.Module) \
        and isinstance(getattr(bn, "drop", None), nn.Module)


def _foldable_bn(bn: nn.Module) -> bool:
    """Plain BatchNorm (or its QAT class), or one with a known activation tail."""
    return type(bn) in _BN_SWAPS or isinstance(bn, _QATBatchNormMixin) \
        or _bn_with_activation(bn)


def _bn_tail(bn: nn.Module, activation_applied: bool) -> nn.Module:
    """What stays where a folded BatchNorm was: nothing, or its dropout and activation (unless
    the conv before now applies that activation itself)."""
    if not _bn_with_activation(bn) or activation_applied:
        return nn.Identity()
    if isinstance(bn.drop, nn.Identity):
        return bn.act
    return nn.Sequential(bn.drop, bn.act)


def has_unfolded_qat_batchnorm(model: nn.Module) -> bool:
    """Whether QAT convs still train with their BatchNorm (fold before exporting)."""
    return any("_qat_bn" in m.__dict__ for m in model.modules())


@torch.no_grad()
def fold_qat_batchnorm_(model: nn.Module) -> int:
    """Fold each BatchNorm that trained beside a QAT conv into that conv, in place.

    The conv weight becomes ``w * gamma / sqrt(running_var + eps)`` (the form its fake
    quantization used, so it stays on the same grid; zeros stay zero), the bias absorbs the
    BatchNorm's shift, the BatchNorm's output quantization and fused ReLU move onto the conv,
    and the BatchNorm becomes ``nn.Identity``. Afterwards the model exports to ``QLinearConv``.

    Returns:
        The number of BatchNorm layers folded.
    """
    done = 0
    for conv in list(model.modules()):
        bn = conv.__dict__.pop("_qat_bn", None)
        if bn is None:
            continue
        bn_name = conv.__dict__.pop("_qat_bn_name")
        _fold_bn_into_conv(conv, bn)
        conv.output_quant = bn.output_quant
        conv._qat_fused_activation = bn._qat_fused_activation
        _replace_module(model, bn_name,
                               _bn_tail(bn, activation_applied=bn._qat_fused_activation
                                        is not None))
        done += 1
    if done:
        logger.info("Folded %d BatchNorm layers into their quantized convolutions.", done)
    return done


def freeze_bn_stats_(model: nn.Module) -> int:
    """Stop updating the running statistics of the BatchNorms that train beside QAT convs
    (recipe ``freeze_bn_stats_epoch``); they normalise with their running averages from now on.

    Returns:
        The number of BatchNorm layers frozen.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, _QATBatchNormMixin):
            module._qat_stats_frozen = True
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# QAT preparation
# --------------------------------------------------------------------------------------------


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _fusable_activations(model: nn.Module, gm, paired_bns: set[str] | frozenset = frozenset()
                         ) -> dict[str, tuple[str, str]]:
    """``{output module name: (activation module name, kind)}`` for Conv/Linear → ReLU(6).

    Only through ``nn.Identity`` or the conv's own BatchNorm (then the BatchNorm, which holds
    the output quantization during QAT, is the output module) and only if the output has no
    other user: the activation is applied before the output quantization, which is the
    Conv → Relu → QuantizeLinear order ONNX Runtime fuses into ``QLinearConv``.
    """
    counts = _call_counts(gm)
    found: dict[str, tuple[str, str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or counts[node.target] != 1:
            continue
        if type(model.get_submodule(node.target)) not in _WEIGHTED_SWAPS:
            continue
        cur, holder = node, node.target
        while len(cur.users) == 1:
            (user,) = cur.users
            if user.op != "call_module":
                break
            module = model.get_submodule(user.target)
            if type(module) is nn.Identity:
                cur = user
                continue
            if user.target in paired_bns and cur is node:
                cur, holder = user, user.target
                continue
            kind = _ACTIVATION_KINDS.get(type(module))
            if kind is not None:
                found[holder] = (user.target, kind)
            break
    return found


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


def _is_tensor_add(node) -> bool:
    import operator

    import torch.fx

    if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
        args = node.args[:2]
    elif node.op == "call_method" and node.target in ("add", "add_"):
        args = node.args[:2]
    else:
        return False
    return len(args) == 2 and all(isinstance(a, torch.fx.Node) for a in args)


def _residual_output_modules(model: nn.Module, gm) -> list[str]:
    """Modules whose output is a tensor sum made inside them (``return x + self.conv(x)``, the
    inverted-residual blocks of MobileNetV2 / EfficientNet-Lite).

    Such a sum often feeds both the next block and the next residual; with nothing quantizing
    it, ONNX Runtime keeps every such ``Add`` in float. Quantizing the module's output makes
    it ``QLinearAdd``, and every consumer reads the same QuantizeLinear. Sums used inside their
    module (ResNet's ``out += identity`` before the block's ReLU) are left to that ReLU.
    """
    found: dict[str, int] = {}
    for node in gm.graph.nodes:
        if not _is_tensor_add(node):
            continue
        stack = list(node.meta.get("nn_module_stack", {}))
        if not stack or not isinstance(stack[-1], str):
            continue
        owner = stack[-1]
        if any(owner in u.meta.get("nn_module_stack", {}) for u in node.users):
            continue  # used again inside its module: not the module's output
        try:
            module = model.get_submodule(owner)
        except AttributeError:  # a key that is not a module path
            continue
        if isinstance(module, _QATModule) or type(module) in _WEIGHTED_SWAPS:
            continue
        found[owner] = found.get(owner, 0) + 1
    return [name for name, n in found.items() if n == 1]


def _quantize_residual_output(module: nn.Module, inputs: tuple, output: object) -> object:
    """Forward hook: quantize a residual block's sum when the block runs on quantized input
    (a block in a float region, e.g. outside the recipe's ``submodules``, stays float)."""
    if not isinstance(output, torch.Tensor) or _tag_of(output) is not None:
        return output
    first = inputs[0] if inputs else None
    if not isinstance(first, torch.Tensor) or _tag_of(first) is None:
        return output
    return module.residual_output_quant(output)


def _followed_by_bn(gm, model: nn.Module, name: str) -> bool:
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            return any(u.op == "call_module" and isinstance(model.get_submodule(u.target),
                                                              _BN_TYPES) for u in node.users)
    return False


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


def is_qat_prepared(model: nn.Module) -> bool:
    """True if :func:`prepare_qat_` has inserted fake quantization into ``model``."""
    return any(isinstance(m, _QATModule) for m in model.modules())


def quantized_module_names(model: nn.Module) -> dict[str, str]:
    """Modules that carry fake quantization, mapped to their original class name.

    Returns:
        ``{module name: original type name}``, e.g. ``{"layer1.0.conv1": "Conv2d"}``, in
        module order.
    """
    return {
        name: module._qat_original_type
        for name, module in model.named_modules()
        if isinstance(module, _QATModule)
    }
