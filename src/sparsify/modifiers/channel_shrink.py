"""Channel removal for image-classification CNNs (the maths of ``ChannelPruningModifier``).

torch-pruning's dependency graph (the ``prune`` extra) traces the model once and gives the
groups of coupled channels: a conv's filters, its BatchNorm and the input channels of the layers
that read it; a residual stream with every conv that adds into it and every conv that reads it;
a depthwise conv with the conv before and after it; concatenations mapped to their inputs; the
classifier's input features. Removing channels of one member of a group removes them from all,
so the model stays consistent. This module decides which channels go (filter magnitude), which
groups are left alone (the stem conv's output, the classifier's classes, grouped convs, a group
that reaches the model's output), and records what it removed so a fresh model can be given the
same structure (:func:`replay_record`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from sparsify.errors import MissingExtraError, RecipeError, did_you_mean

logger = logging.getLogger(__name__)

#: Layer types whose parameters the dependency graph follows channel by channel.
CHANNEL_LAYERS = (_ConvNd, _BatchNorm, nn.Linear, nn.PReLU, nn.GroupNorm, _InstanceNorm,
                  nn.LayerNorm)
#: Image sides tried when tracing (a model that needs its own size gets the usual 224).
TRACE_SIZES = (32, 224)
RECORD_VERSION = 1
SUPPORTED = "image-classification CNNs (ResNet, MobileNet, EfficientNet-Lite, RegNet...)"


def kept_channels(total: int, keep_fraction: float, multiple: int = 1) -> int:
    """Channels kept of ``total``: ``total * keep_fraction`` rounded half up to a multiple of
    ``multiple``, at least one multiple, at most ``total`` (``multiple`` 8: 64 at 0.5 -> 32,
    24 at 0.5 -> 16, 16 at 0.75 -> 16)."""
    step = max(1, int(multiple))
    kept = int(total * keep_fraction / step + 0.5 + 1e-9) * step
    return max(min(step, total), min(total, kept))


def require_torch_pruning() -> Any:
    """torch-pruning, or :class:`MissingExtraError` naming the ``prune`` extra."""
    try:
        import torch_pruning
    except ImportError:
        raise MissingExtraError("torch-pruning", "prune",
                                "ChannelPruningModifier (keep_fraction below 1)") from None
    return torch_pruning


def _refuse(model: nn.Module, text: str) -> RecipeError:
    return RecipeError(
        f"ChannelPruningModifier.keep_fraction: the model ({type(model).__name__}) {text}. "
        f"Channels are removed from {SUPPORTED} only: remove the modifier or set keep_fraction "
        "to 1.0.")


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (tracing must not move BatchNorm statistics), each module's mode restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.train(mode)


def example_input(model: nn.Module) -> tuple[torch.Tensor, int]:
    """An input the model takes and its number of classes; refuses what is not an image
    classifier made of layers the dependency graph follows.

    Raises:
        RecipeError: a layer type with parameters the graph cannot follow (an attention block,
            a layer scale), no conv, an input that no image size fits, an output that is not
            ``[batch, classes]`` logits (YOLO, a transformer).
    """
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and not isinstance(
                module, CHANNEL_LAYERS):
            raise _refuse(model, f"has parameters in a {type(module).__name__} "
                          f"({name or 'the model itself'}), a layer whose channels cannot be "
                          "followed")
    convs = [m for m in model.modules() if isinstance(m, _ConvNd)]
    if not convs:
        raise _refuse(model, "has no convolution")
    device = next(model.parameters()).device
    problem: Exception | None = None
    output: Any = None
    for size in TRACE_SIZES:
        shape = (1, convs[0].in_channels) + (size,) * (convs[0].weight.dim() - 2)
        sample = torch.zeros(shape, device=device)
        try:
            with torch.no_grad():
                output = model(sample)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next size
            problem = exc
            continue
        break
    else:
        raise _refuse(model, f"takes no image of {' or '.join(map(str, TRACE_SIZES))} pixels "
                      f"({type(problem).__name__}: {str(problem)[:200]})")
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        what = (f"a tensor of shape {list(output.shape)}" if isinstance(output, torch.Tensor)
                else f"a {type(output).__name__}")
        raise _refuse(model, f"is not an image classifier: its output is {what}, not "
                      "[batch, classes] logits")
    return sample, int(output.shape[1])


def protected_layers(model: nn.Module, ignore: list[str]) -> list[nn.Module]:
    """Layers whose output channels stay: the stem conv, the classifier (the last Linear, or
    the last conv of a model without one) and the convs ``ignore`` names.

    Raises:
        RecipeError: an ``ignore`` entry that names no conv or Linear of the model.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))}
    convs = [m for m in layers.values() if isinstance(m, _ConvNd)]
    linears = [m for m in layers.values() if isinstance(m, nn.Linear)]
    kept = [convs[0], linears[-1] if linears else convs[-1]]
    for item in ignore:
        if item.startswith("re:"):
            pattern = re.compile(item[3:])
            matched = [m for n, m in layers.items() if pattern.match(n)]
        else:
            matched = [layers[item]] if item in layers else []
        if not matched:
            raise RecipeError(f"ChannelPruningModifier.ignore: '{item}' names no conv or Linear "
                              f"of the model.{did_you_mean(item, layers)}")
        kept.extend(matched)
    return kept


def _graph(model: nn.Module, sample: torch.Tensor) -> Any:
    tp = require_torch_pruning()
    with warnings.catch_warnings(), _evaluating(model):
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=sample,
                                                     verbose=False)


def _shrinkable(group: Any) -> bool:
    """A group whose channels may go: no grouped (non-depthwise) conv, nothing that is the
    model's output or an unwrapped parameter."""
    from torch_pruning.ops import OPTYPE

    for item in group:
        target = item.dep.target
        if target.type in (OPTYPE.OUTPUT, OPTYPE.PARAMETER):
            return False
        module = target.module
        if isinstance(module, _ConvNd) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            return False
    return True


def filter_scores(graph: Any, group: Any, p: int) -> torch.Tensor:
    """Per channel of the group's root: the ``p``-norm of its filter in every conv / Linear
    whose output channels the group removes, each layer's norms divided by their mean, summed."""
    total = torch.zeros(len(group[0].idxs))
    for item in group:
        module = item.dep.target.module
        if not (graph.is_out_channel_pruning_fn(item.dep.handler)
                and isinstance(module, (_ConvNd, nn.Linear))):
            continue
        weight = module.weight.detach().float().cpu()
        if isinstance(module, _ConvNd) and module.transposed:
            weight = weight.transpose(0, 1)
        norms = weight.flatten(1).norm(p=p, dim=1)
        norms = norms / norms.mean().clamp_min(1e-12)
        total.index_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long),
                         norms[torch.as_tensor(item.idxs, dtype=torch.long)])
    return total


def shrink_channels_(model: nn.Module, keep_fraction: float, *, p: int = 1, multiple: int = 8,
                     ignore: list[str] | None = None, optimizer: Any = None) -> dict[str, Any]:
    """Remove channels from ``model`` in place: every shrinkable group keeps
    :func:`kept_channels` of its channels, those of the
    largest :func:`filter_scores`. ``optimizer``: its references to replaced parameters are
    replaced too.

    Returns:
        The record :func:`replay_record` redoes: ``{"version", "groups": [[root layer name,
        [removed channel indices]], ...], "parameters": [before, after]}``.

    Raises:
        RecipeError: a model that is not a supported classifier (:func:`example_input`), or
            one in which no channel group can shrink.
        MissingExtraError: torch-pruning is not installed.
    """
    sample, _ = example_input(model)
    graph = _graph(model, sample)
    protected = protected_layers(model, ignore or [])
    names = {m: n for n, m in model.named_modules()}
    roots = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    plan = []
    with torch.no_grad():
        for group in graph.get_all_groups(ignored_layers=protected, root_module_types=roots):
            if not _shrinkable(group):
                continue
            total = len(group[0].idxs)
            kept = kept_channels(total, keep_fraction, multiple)
            if kept >= total:
                continue
            scores = filter_scores(graph, group, p)
            removed = sorted(int(i) for i in torch.argsort(scores, stable=True)[:total - kept])
            plan.append([names[group[0].dep.target.module], removed])
    if not plan and keep_fraction < 1:
        raise _refuse(model, "has no group of conv channels that can shrink (the stem conv, "
                      "the classifier and grouped convs keep their channels)")
    record = {"version": RECORD_VERSION, "groups": plan}
    _apply(model, graph, record, optimizer)
    return record


def replay_record(model: nn.Module, record: dict[str, Any], optimizer: Any = None) -> bool:
    """Remove from a fresh ``model`` the channels ``record`` says were removed (the record of
    :func:`shrink_channels_` on the same architecture, whatever its weights were).

    Raises:
        RecipeError: the record names a layer the model lacks or channels it does not have.
    """
    if not record.get("groups"):
        return False
    sample, _ = example_input(model)
    _apply(model, _graph(model, sample), record, optimizer)
    return True


def _apply(model: nn.Module, graph: Any, record: dict[str, Any], optimizer: Any) -> None:
    before = dict(model.named_parameters())
    trainable = {n: p.requires_grad for n, p in before.items()}
    count = sum(p.numel() for p in before.values())
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, removed in record["groups"]:
            module = modules.get(name)
            if not isinstance(module, _ConvNd) or not removed or max(removed) >= (
                    module.out_channels):
                raise RecipeError(
                    f"ChannelPruningModifier: the recorded structure removes channels "
                    f"{removed[:3]}... of '{name}', which the model ({type(model).__name__}) "
                    "does not have: the checkpoint was written for another model.")
            handler = graph.get_pruner_of_module(module).prune_out_channels
            graph.get_pruning_group(module, handler, list(removed)).prune()
    after = dict(model.named_parameters())
    for name, parameter in after.items():
        if name in trainable and parameter is not before[name]:
            parameter.requires_grad_(trainable[name])
    if optimizer is not None:
        _replace_in_optimizer(optimizer, before, after)
    record["parameters"] = [count, sum(p.numel() for p in after.values())]
    logger.info("ChannelPruningModifier: %d channel groups of %s shrunk; parameters %.2fM -> "
                "%.2fM", len(record["groups"]), type(model).__name__, count / 1e6,
                record["parameters"][1] / 1e6)


def _replace_in_optimizer(optimizer: Any, before: dict[str, nn.Parameter],
                          after: dict[str, nn.Parameter]) -> None:
    """Point the optimizer at the new (smaller) parameters, in the same places of its groups
    (so a saved optimizer state loads in order), and drop the old ones' state."""
    new = {id(p): after[n] for n, p in before.items() if n in after and after[n] is not p}
    for group in optimizer.param_groups:
        group["params"] = [new.get(id(p), p) for p in group["params"]]
    state = optimizer.state
    for parameter in [p for p in state if id(p) in new]:
        del state[parameter]
