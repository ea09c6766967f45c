"""Folding the BatchNorm that trained beside a QAT conv into that conv (at the end of QAT and
before export), so the pair exports as one ``QLinearConv``."""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparsify.quantization.modules import _BN_SWAPS, _bn_with_activation, _QATBatchNormMixin

logger = logging.getLogger(__name__)

__all__ = ["fold_qat_batchnorm_", "has_unfolded_qat_batchnorm"]


@torch.no_grad()
def _fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> None:
    # Not torch.nn.utils.fusion.fuse_conv_bn_weights: it returns new Parameters (an optimizer
    # and the pruning masks hold these ones; BN's bias is re-used below) and computes in
    # float32 with rsqrt instead of float64, which moves folded weights by a rounding step.
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


def _replace_module(model: nn.Module, name: str, by: nn.Module | None = None) -> None:
    """Put ``by`` (default ``nn.Identity()``) where the submodule ``name`` was."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, by if by is not None else nn.Identity())


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
