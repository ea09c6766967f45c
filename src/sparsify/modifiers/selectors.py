"""Parameter selectors: exact names, ``re:<regex>``, ``__ALL__``, ``__ALL_PRUNABLE__``,
``__COMPUTE_LAYERS__``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sparsify.errors import did_you_mean

if TYPE_CHECKING:
    import torch

ALL = "__ALL__"
ALL_PRUNABLE = "__ALL_PRUNABLE__"
COMPUTE_LAYERS = "__COMPUTE_LAYERS__"
PRUNABLE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "Conv1D")
SELECTOR_KEYWORDS = (ALL, ALL_PRUNABLE, COMPUTE_LAYERS)


def check_selector(field_name: str, value: Any) -> None:
    """Validate a selector's shape (pure): a string or a list of strings, regexes compile."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"{field_name}: must be a name, 're:<regex>', {ALL}, {ALL_PRUNABLE}, "
                         f"{COMPUTE_LAYERS} or a list of those, got {value!r}")
    for item in items:
        if item.startswith("re:"):
            try:
                re.compile(item[3:])
            except re.error as exc:
                raise ValueError(f"{field_name}: bad regex {item!r}: {exc}") from None


def prunable_parameter_names(model: torch.nn.Module) -> list[str]:
    """``.weight`` of every Linear, Conv (1d/2d/3d), Embedding and transformers Conv1D.

    Subclasses count (QAT swaps ``nn.Conv2d`` for a ``QATConv2d`` subclass), so the same
    weights are selected before and after quantization starts.
    """
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    names = []
    for module_name, module in model.named_modules():
        prunable = isinstance(module, kinds) or type(module).__name__ in PRUNABLE_TYPES
        if prunable and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def compute_layer_names(model: torch.nn.Module) -> list[str]:
    """The weights worth pruning: where the compute is and pruning is tolerated.

    Of :func:`prunable_parameter_names`, this leaves out what Neural Magic's own recipes left
    dense: embeddings (lookup tables: no compute to save, and half a small transformer's
    weights), the input convolution (few weights, every later layer depends on it), depthwise
    convolutions (9 weights per channel: pruning them costs accuracy for no speed), and the
    output layers (the last Linear of the model: the classifier or QA head; a biased conv that
    closes a ``Sequential``: a detection head's box / class / mask outputs). Linear layers count
    only inside repeated blocks (a numbered module such as ``encoder.layer.3``), which leaves a
    transformer's pooler and heads dense and keeps its Q/K/V, attention-output and FFN weights,
    as oBERT prunes them.
    """
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    linears = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    # a conv with a bias that closes a Sequential is an output projection (no BatchNorm after
    # it): a detection head's box, class and mask-coefficient outputs
    outputs = set()
    for sequence_name, sequence in model.named_modules():
        if isinstance(sequence, nn.Sequential) and len(sequence):
            last = sequence[-1]
            if isinstance(last, convs) and last.bias is not None:
                outputs.add(f"{sequence_name}.{len(sequence) - 1}")
    last_linear = linears[-1] if linears else None
    stem_seen = False
    names = []
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        full = f"{module_name}.weight" if module_name else "weight"
        if isinstance(module, convs):
            if not stem_seen:
                stem_seen = True  # the input convolution
                continue
            if module.groups > 1 and module.groups == module.in_channels:
                continue  # depthwise
            if module_name in outputs:
                continue
            names.append(full)
        elif isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            in_block = any(part.isdigit() for part in module_name.split("."))
            if module_name != last_linear and in_block:
                names.append(full)
    return names


def select_parameters(model: torch.nn.Module, selector: Any, field_name: str = "params",
                      candidates: list[str] | None = None) -> dict[str, torch.nn.Parameter]:
    """Parameters of ``model`` matched by ``selector``, by name, in model order.

    Raises:
        ValueError: the selector matches nothing (with the closest names).
    """
    params = dict(model.named_parameters())
    names = list(params) if candidates is None else candidates
    items = selector if isinstance(selector, list) else [selector]
    chosen: dict[str, Any] = {}
    for item in items:
        if item == ALL:
            matched = list(params)
        elif item == ALL_PRUNABLE:
            matched = prunable_parameter_names(model)
        elif item == COMPUTE_LAYERS:
            matched = compute_layer_names(model)
        elif item.startswith("re:"):
            pattern = re.compile(item[3:])
            matched = [n for n in names if pattern.match(n)]
        else:
            matched = [item] if item in params else []
        if not matched:
            hint = did_you_mean(item, names) if not item.startswith("re:") else ""
            raise ValueError(f"{field_name}: '{item}' matches no parameter of the model.{hint}")
        for name in matched:
            chosen[name] = params[name]
    order = {n: i for i, n in enumerate(params)}
    return {n: chosen[n] for n in sorted(chosen, key=order.__getitem__)}
