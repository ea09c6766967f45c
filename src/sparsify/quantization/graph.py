"""Pattern analysis on the model's ``torch.fx`` graph: Conv -> BatchNorm pairs, activations
that can be applied before the output quantization of the layer before them, and residual sums
that are a block's output."""

from __future__ import annotations

import logging
import warnings

from torch import nn

from sparsify.quantization.batchnorm import _foldable_bn
from sparsify.quantization.modules import (
    _ACTIVATION_KINDS,
    _BN_TYPES,
    _CONV_TYPES,
    _WEIGHTED_SWAPS,
    QATModule,
)

logger = logging.getLogger(__name__)

__all__ = ["conv_bn_pairs"]


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
    pairs, by_name = [], []
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
                by_name.append(f"{prefix}{bname} into {prefix}{cname}")
                pairs.append((prefix + cname, prefix + bname))
    if by_name:  # one line for the model (a YOLO has dozens), each pair at debug level
        logger.warning("Folding %d BatchNorm(s) into the convolution before them by name only "
                       "(conv/bn attribute pairs; torch.fx could not trace the model), e.g. %s.",
                       len(by_name), by_name[0])
        logger.debug("Folded by name: %s", "; ".join(by_name))
    return pairs


def conv_bn_pairs(model: nn.Module, gm=None) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every BatchNorm that directly follows a convolution and
    can be folded into it.

    The pattern is found with ``torch.fx`` (exact data flow; works for torchvision ResNet,
    MobileNet and plain ``nn.Sequential`` CNNs). When the model cannot be traced, Conv→BN
    pairs inside ``nn.Sequential`` and ``conv``/``bn`` (``convN``/``bnN``) sibling attributes
    are used instead.

    Args:
        model: the model.
        gm: its ``torch.fx`` trace, if already made (``None``: traced here).
    """
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


def _followed_by_bn(gm, model: nn.Module, name: str) -> bool:
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            return any(u.op == "call_module" and isinstance(model.get_submodule(u.target),
                                                              _BN_TYPES) for u in node.users)
    return False


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
        if isinstance(module, QATModule) or type(module) in _WEIGHTED_SWAPS:
            continue
        found[owner] = found.get(owner, 0) + 1
    return [name for name, n in found.items() if n == 1]
