"""Tensor tags: which quantizer produced a tensor.

A tensor is quantized once, by its producer; every consumer finds the producer's quantizer on
the tensor and re-uses it, so in ONNX all of them read the same QuantizeLinear.
"""

from __future__ import annotations

import torch
from torch import nn

# A tag names the quantizer (a ``fake_quant.FakeQuantizer``) that produced a tensor; it is typed
# ``nn.Module`` here, so this module, which ``fake_quant`` imports, imports nothing back.

__all__ = ["quantized_input", "requantize_like_input", "tag", "tag_of"]

_TAG = "_sparsify_qtag"


def _version(t: torch.Tensor) -> int:
    # Tensors made under ``torch.inference_mode`` (Ultralytics validates that way) have no
    # version counter; -1 stands for "not tracked".
    return -1 if t.is_inference() else t._version


def tag(t: torch.Tensor, quantizer: nn.Module) -> torch.Tensor:
    # The version counter detects in-place changes (``out += identity``) after tagging.
    setattr(t, _TAG, (quantizer, _version(t)))
    return t


def tag_of(t: torch.Tensor) -> tuple[nn.Module, bool] | None:
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


def quantized_input(x: torch.Tensor, own: nn.Module) -> tuple[torch.Tensor, nn.Module]:
    """``x`` quantized: by its producer if it already was, else by ``own`` (which observes)."""
    found = tag_of(x)
    if found is None:
        return own(x), own
    quantizer, same = found
    if same:
        return x, quantizer
    return tag(quantizer.fake_quant(x), quantizer), quantizer


def requantize_like_input(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Give ``y`` (a max-pool/reshape of ``x``) the quantization of ``x``, if ``x`` had one."""
    found = tag_of(x)
    if found is None:
        return y
    quantizer = found[0]
    return tag(quantizer.fake_quant(y), quantizer)
