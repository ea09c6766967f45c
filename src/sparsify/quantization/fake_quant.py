"""Fake quantization that exports as ONNX QuantizeLinear/DequantizeLinear, and the quantizer
modules that hold its parameters as buffers (never as parameters).

Training uses ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` (with their
straight-through gradients). The legacy TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``; ``FakeQuantize`` cannot pass through the dynamo exporter, INT8_EXPORT.md
pitfall 1) turns them into QuantizeLinear/DequantizeLinear pairs with torch's own symbolics;
the int32 bias has its own (:class:`_BiasQDQ`). :func:`sparsify.export.export_onnx` then folds
the constant weight quantization into int8 / int32 initializers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.quantization.config import (
    _ACT_QMAX,
    _ACT_QMIN,
    _EPS,
    _INT32_SAFE,
    _W_QMAX,
    _W_QMIN,
)
from sparsify.quantization.tagging import tag

__all__ = ["FakeQuantizer", "WeightFakeQuantizer", "fake_quant_bypassed"]

# While set (``fake_quant_bypassed``), every fake quantization is the identity and no observer
# or scale buffer changes: a QAT model computes its float function.
_BYPASS = [False]


@contextlib.contextmanager
def fake_quant_bypassed() -> Iterator[None]:
    """Within this block a QAT-prepared model computes in float: every fake quantization
    (activations, weights, int32 biases, embedding tables) is the identity, observers observe
    nothing and no buffer changes. The module structure stays (fused activations, folded
    BatchNorms), so the model is the QAT model with quantization off: exported inside this
    block it gives an FP32 ONNX graph without Quantize/DequantizeLinear nodes with the trained
    (sparse) weights. Not thread-safe: it switches a process-wide flag.
    """
    before = _BYPASS[0]
    _BYPASS[0] = True
    try:
        yield
    finally:
        _BYPASS[0] = before


def is_bypassed() -> bool:
    """True inside :func:`fake_quant_bypassed`."""
    return _BYPASS[0]


def _is_exporting() -> bool:
    """True while the legacy ONNX exporter traces the model."""
    in_export = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(in_export and in_export())


class _BiasQDQ(torch.autograd.Function):
    """int32 bias quantization (scale = input scale x weight scale), export only.

    ONNX Runtime fuses a Conv/Gemm into an integer kernel only if its bias is an int32 tensor
    behind a DequantizeLinear. QuantizeLinear cannot produce int32, so the symbolic writes the
    quantization as Div/Round/Clip/Cast; all inputs are constants and
    :func:`sparsify.export.export_onnx` folds them into an int32 initializer. (torch has no
    int32 fake quantization whose export could stand in for this.)
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
    # torch's own ONNX symbolics (symbolic_opset13) export both ops as one QuantizeLinear /
    # DequantizeLinear pair: uint8 zero point for the 0..255 activation grid, int8 for weights,
    # ``axis`` per channel. Weights use the full int8 range in ONNX; a narrower grid (7 bit)
    # comes from the scale, so values never reach the ends.
    if _BYPASS[0]:
        return x
    if x.dtype != torch.float32 and not _is_exporting():
        # Mixed precision: torch's fake-quant kernels want float32; the grid is the same.
        return _fake_quant(x.float(), scale, zero_point, qmin, qmax, axis).to(x.dtype)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)


def _fake_quant_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if _BYPASS[0]:
        return bias
    if _is_exporting():
        return _BiasQDQ.apply(bias, scale)
    # Straight-through estimator: forward sees the int32 grid, gradient passes unchanged.
    quantized = torch.round(bias.detach() / scale).clamp(-_INT32_SAFE, _INT32_SAFE) * scale
    return bias + (quantized - bias.detach())


class FakeQuantizer(nn.Module):
    """Per-tensor asymmetric uint8 fake quantization of activations.

    A moving-average min/max observer (range always widened to include 0, so zero and ReLU
    padding are exact) updates ``scale``/``zero_point`` in training mode while
    ``observer_enabled``. The first observation initialises the range even in eval mode or with
    the observer off, so an un-calibrated quantizer never computes or exports a meaningless
    scale. Outside training the buffers are
    used as they are, so evaluation and export see the scales training ended with.

    Attributes:
        fused_activation: ``"relu"``/``"relu6"`` when the owning module applies that activation
            before quantizing (conv followed by ReLU); the activation module after it then
            passes the tensor through unchanged.
    """

    # Not torch.ao.quantization's FakeQuantize + MovingAverageMinMaxObserver: that observer
    # averages the raw min/max and widens to 0 only when computing the scale (here the range
    # includes 0 before averaging), it also observes in eval mode, floors the scale at float32
    # eps (here 1e-8) and keeps other buffers, so scales and checkpoints would change.

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
        self._observe_range(x.min().float(), x.max().float())

    @torch.no_grad()
    def _observe_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        lo = lo.clamp(max=0.0)
        hi = hi.clamp(min=0.0)
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

    def _observes(self) -> bool:
        # Observe while training with the observer on, and always once: a quantizer whose
        # observer was frozen before it saw any data (a recipe that freezes observers when QAT
        # starts) would otherwise keep its placeholder scale of 1.0.
        return (not bool(self.initialized) or (bool(self.observer_enabled) and self.training)) \
            and not _is_exporting() and not _BYPASS[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observes():
            self.observe(x)
        return tag(self.fake_quant(x), self)

    def activate_and_quantize(self, y: torch.Tensor, activation: str) -> torch.Tensor:
        """``self(relu(y))`` (``activation`` "relu") or ``self(relu6(y))``, the same values
        and gradients, with one bool tensor kept for the backward where the two steps keep the
        activation's float result and the quantization's mask (QAT's activation memory).
        Outside a float32 training forward it is the two steps."""
        if (_BYPASS[0] or _is_exporting() or y.dtype != torch.float32
                or not (torch.is_grad_enabled() and y.requires_grad)):
            return self(F.relu(y) if activation == "relu" else F.relu6(y))
        if self._observes():
            with torch.no_grad():
                lo, hi = torch.aminmax(y.detach())
                top = 6.0 if activation == "relu6" else None
                self._observe_range(lo.float().clamp(0.0, top), hi.float().clamp(0.0, top))
        out = _ActivationFakeQuant.apply(y, self.scale, self.zero_point, self.qmin, self.qmax,
                                         activation == "relu6")
        return tag(out, self)


class _ActivationFakeQuant(torch.autograd.Function):
    """ReLU / ReLU6 then per-tensor fake quantization; saves one bool mask (the gradient passes
    where the activation's and the quantizer's straight-through gradients both pass)."""

    @staticmethod
    def forward(ctx, y, scale, zero_point, qmin, qmax, six):  # type: ignore[override]
        active = F.relu6(y) if six else F.relu(y)
        out, inside = torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            active, scale, zero_point, torch.ones(1, dtype=torch.long, device=y.device),
            qmin, qmax)
        inside &= y > 0
        if six:
            inside &= y < 6.0
        ctx.save_for_backward(inside)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


class WeightFakeQuantizer(nn.Module):
    """Symmetric int8 fake quantization of a weight, per output channel or per tensor.

    The scale is recomputed from the current weight on every forward while the observer is
    enabled (weights change every step, and min/max of a weight is cheap), and frozen in the
    ``scale`` buffer once :func:`disable_observers_` is called.

    Args:
        qmax: largest grid value; the grid is ``-qmax..qmax`` (63 for 7-bit weights).
        num_channels: output channels for per-channel quantization, ``None`` for per tensor.
    """

    # Not torch.ao.quantization's PerChannelMinMaxObserver: its symmetric scale divides by
    # (qmax - qmin) / 2 = 127.5, not by ``qmax``, so the 7-bit grid (-63..63) cannot be had.

    def __init__(self, qmax: int, num_channels: int | None) -> None:
        super().__init__()
        self.qmax = int(qmax)
        self.axis = None if num_channels is None else 0
        shape = () if num_channels is None else (num_channels,)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("observer_enabled", torch.tensor(True))
        # Whether ``scale`` holds a computed value (not a buffer: checkpoints stay as they
        # were; a loaded scale counts as computed).
        self.calibrated = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.calibrated = True

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
        # computed from the weight while the observer is on, and once when it was frozen before
        # the first forward (the placeholder scale 1.0 would round every weight to zero)
        if bool(self.observer_enabled) or not self.calibrated:
            scale = self.compute_scale(weight)
            if not _is_exporting() and not _BYPASS[0]:
                with torch.no_grad():
                    self.scale.copy_(scale)
                self.calibrated = True
        else:
            scale = self.scale
        if min_scale is not None:
            scale = torch.maximum(scale, min_scale)
        wq = _fake_quant(weight, scale, self.zero_point, _W_QMIN, _W_QMAX, self.axis)
        return wq, scale
