"""Structured shrinking by width for transformers: ``FFNPruningModifier`` narrows every layer's
feed-forward block.

A name of ours (SparseML zeroed structures under masks; it had no modifier that took a share of
a transformer's FFN width to keep). Once, at initialisation, each layer of the model's layer
stack keeps ``keep_fraction`` of its feed-forward channels (BERT's ``intermediate.dense`` rows
and ``output.dense`` columns; the same for every model whose FFN is linear layers into and out
of one hidden width, gated ones included), those whose input rows and output column carry the
largest norm product, and the others are removed for real: the Linear tensors get smaller and
the config's ``intermediate_size`` follows, so the saved model reloads with ``from_pretrained``.
Every layer keeps the same number of channels (a config holds one width) rounded to a multiple
of ``channel_multiple``. The FFN is two thirds of an encoder layer's multiply-adds, so keeping
a quarter of it removes half of them, without the depth a layer's removal takes away.

The channels kept are recorded (``structure_fields``): a checkpoint keeps the record, and a
fresh starting model is given the same structure from it, not from its own weights (the
student of ``--teacher auto`` starts from the teacher's weights).

No torch at import: the recipe parser builds the class to validate its fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sparsify.errors import RecipeError
from sparsify.modifiers.base import ModifierState
from sparsify.modifiers.structure import StructureModifier

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2")
#: Config fields holding the FFN width, by model family.
WIDTH_FIELDS = ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "d_ff")


@dataclass(kw_only=True)
class FFNPruningModifier(StructureModifier):
    """Remove feed-forward channels from every transformer layer, once, before training.

    ``keep_fraction`` (in (0, 1]; 1.0 does nothing and looks at no model) of each layer's FFN
    channels are kept, ranked by the ``importance`` norm (``l1`` or ``l2``) of the channel's
    input rows times that of its output column, rounded to a multiple of ``channel_multiple``.
    """

    keep_fraction: float
    importance: str = "l2"
    channel_multiple: int = 16

    resume_fields: ClassVar[tuple[str, ...]] = ("_kept",)
    structure_fields: ClassVar[tuple[str, ...]] = ("_kept",)

    def validate(self) -> None:
        value = self.keep_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError("keep_fraction: must be a number in (0, 1] (the share of each "
                             "layer's feed-forward channels kept; 1.0 keeps them all), got "
                             f"{value!r}")
        self.keep_fraction = float(value)
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance: '{self.importance}' is not one of "
                             f"{', '.join(IMPORTANCES)} (the norm channels are ranked by)")
        multiple = self.channel_multiple
        if isinstance(multiple, bool) or not isinstance(multiple, int) or not 1 <= multiple <= 64:
            raise ValueError("channel_multiple: must be an integer from 1 to 64 (kept channels "
                             f"are rounded to a multiple of it), got {multiple!r}")
        self.check_once_before_training("channels")
        self._kept: dict[str, list[int]] | None = None

    # --- hooks -------------------------------------------------------------------------------
    def _shrink(self, state: ModifierState) -> None:
        if self.keep_fraction >= 1.0:
            return
        model = state.model
        blocks = find_ffn_blocks(model)
        if self._kept is None:
            self._kept = choose_channels(model, blocks, self.keep_fraction,
                                         self.channel_multiple,
                                         p=1 if self.importance == "l1" else 2)
        shrink_ffn_(model, blocks, self._kept, state.optimizer)
        state.structure_version += 1


def find_ffn_blocks(model: nn.Module) -> dict[str, tuple[list[str], str]]:
    """``{layer name: ([input Linear names], output Linear name)}`` for every layer of the
    model's layer stack: the Linears (names relative to the model) whose output width is the
    FFN width, and the one Linear that reads it back to the hidden size.

    Raises:
        RecipeError: no layer stack, or a layer without such a block.
    """
    from torch import nn

    from sparsify.modifiers.layer_pruning import find_layer_stack

    path = find_layer_stack(model, owner="FFNPruningModifier", purpose="FFN pruning")
    stack = model.get_submodule(path)
    out: dict[str, tuple[list[str], str]] = {}
    for index, layer in enumerate(stack):
        name = f"{path}.{index}"
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        hidden = _hidden_size(model, linears)
        widths = {m.out_features for m in linears.values() if m.in_features == hidden
                  and m.out_features > hidden}
        downs = [n for n, m in linears.items() if m.in_features in widths
                 and m.out_features == hidden]
        if len(widths) != 1 or len(downs) != 1:
            raise RecipeError(
                f"FFNPruningModifier: layer {name} ({type(layer).__name__}) has no feed-forward "
                "block of Linear layers into one wider hidden width and back; FFN pruning "
                "applies to transformer encoders such as BERT. Remove the modifier, or set "
                "keep_fraction to 1.0")
        width = widths.pop()
        ups = [n for n, m in linears.items() if m.in_features == hidden
               and m.out_features == width]
        out[name] = ([f"{name}.{n}" for n in ups], f"{name}.{downs[0]}")
    return out


def _hidden_size(model: nn.Module, linears: dict[str, Any]) -> int:
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) if config is not None else None
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        return hidden
    sizes = [m.in_features for m in linears.values()]
    return min(sizes) if sizes else -1


def choose_channels(model: nn.Module, blocks: dict[str, tuple[list[str], str]],
                    keep_fraction: float, multiple: int, p: int = 2) -> dict[str, list[int]]:
    """Per layer, the sorted indices of the FFN channels kept (the same count everywhere): a
    channel's score is the ``p``-norm of its output column times those of its input rows."""
    import torch

    kept: dict[str, list[int]] = {}
    for layer, (ups, down) in blocks.items():
        out = model.get_submodule(down)
        count = kept_channel_count(out.in_features, keep_fraction, multiple)
        with torch.no_grad():
            score = out.weight.detach().float().norm(p=p, dim=0)
            for up in ups:
                score = score * model.get_submodule(up).weight.detach().float().norm(p=p, dim=1)
        kept[layer] = sorted(torch.topk(score, count).indices.tolist())
    return kept


def kept_channel_count(width: int, keep_fraction: float, multiple: int) -> int:
    """``width * keep_fraction`` rounded to the nearest multiple of ``multiple`` (at least
    one multiple, at most ``width``)."""
    count = int(round(width * keep_fraction / multiple)) * multiple
    return max(min(multiple, width), min(width, count))


def shrink_ffn_(model: nn.Module, blocks: dict[str, tuple[list[str], str]],
                kept: dict[str, list[int]], optimizer: Any = None) -> None:
    """Keep only the channels ``kept`` of each layer's FFN, in place; the config's FFN width
    follows, and an optimizer built before points at the new (smaller) parameters.

    Raises:
        RecipeError: the record names layers or channels this model does not have (a
            checkpoint written for another model).
    """
    import torch
    from torch import nn

    from sparsify.modifiers.channel_shrink import _replace_in_optimizer

    if set(kept) != set(blocks) or len({len(v) for v in kept.values()}) > 1:
        raise RecipeError("FFNPruningModifier: the recorded structure names layers "
                          f"{sorted(kept)[:3]}... which do not match the model's "
                          f"{sorted(blocks)[:3]}...: the checkpoint was written for another model")
    before = dict(model.named_parameters())
    count = sum(p.numel() for p in before.values())
    width = None
    with torch.no_grad():
        for layer, (ups, down) in blocks.items():
            index = kept[layer]
            out = model.get_submodule(down)
            if not index or max(index) >= out.in_features:
                raise RecipeError(f"FFNPruningModifier: the recorded structure keeps channels "
                                  f"up to {max(index, default=-1)} of '{layer}', whose FFN has "
                                  f"{out.in_features}: the checkpoint was written for another "
                                  "model")
            width = width or out.in_features
            rows = torch.tensor(index, dtype=torch.long, device=out.weight.device)
            for name in ups:
                up = model.get_submodule(name)
                up.weight = nn.Parameter(up.weight.index_select(0, rows),
                                         requires_grad=up.weight.requires_grad)
                if up.bias is not None:
                    up.bias = nn.Parameter(up.bias.index_select(0, rows),
                                           requires_grad=up.bias.requires_grad)
                up.out_features = len(index)
            out.weight = nn.Parameter(out.weight.index_select(1, rows),
                                      requires_grad=out.weight.requires_grad)
            out.in_features = len(index)
    kept_width = len(next(iter(kept.values())))
    config = getattr(model, "config", None)
    for field_name in WIDTH_FIELDS:
        if config is not None and getattr(config, field_name, None) == width:
            setattr(config, field_name, kept_width)
            break
    after = dict(model.named_parameters())
    if optimizer is not None:
        _replace_in_optimizer(optimizer, before, after)
    logger.info("FFNPruningModifier: %d layers keep %d of %d feed-forward channels; "
                "parameters %.2fM -> %.2fM", len(blocks), kept_width, width, count / 1e6,
                sum(p.numel() for p in after.values()) / 1e6)
