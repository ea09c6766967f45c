"""What a plan removes structurally: the recipe variables that shrink a model (``keep_layers``,
``keep_ffn``, ``keep_channels``) and the plan's one-line description of them (pure, no torch)."""

from __future__ import annotations

from typing import Any

#: recipe variables that remove structure when below 1, and the modifier each one sets
SHRINK_VARIABLES = {"keep_layers": "LayerPruningModifier", "keep_ffn": "FFNPruningModifier",
                    "keep_channels": "ChannelPruningModifier"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shrinks(args: dict[str, Any]) -> bool:
    """Whether the recipe arguments remove layers or channels (a keep fraction below 1)."""
    return any(_number(args.get(k)) and args[k] < 1 for k in SHRINK_VARIABLES)


def share(fraction: float) -> str:
    """``1/2``, ``1/3``, ``2/5``; a percentage when no small fraction is that value."""
    from fractions import Fraction

    near = Fraction(fraction).limit_denominator(12)
    if abs(float(near) - fraction) < 1e-3:
        return f"{near.numerator}/{near.denominator}"
    return f"{fraction:.0%}"


def _kept(total: int, fraction: float) -> int:
    from sparsify.modifiers.layer_pruning import kept_count

    return kept_count(total, fraction)


def _nlp(args: dict[str, Any]) -> str | None:
    parts = []
    keep, ffn = args.get("keep_layers"), args.get("keep_ffn")
    if _number(keep) and keep < 1:
        parts.append(f"layers: keep {share(keep)} of the encoder layers, evenly spaced from the "
                     f"first (12 -> {_kept(12, keep)}, 6 -> {_kept(6, keep)}) "
                     f"(LayerPruningModifier keep_fraction {keep:g})")
    elif keep is not None and not _number(keep):
        parts.append(f"layers: keep_layers {keep!r} (as the recipe says)")
    if _number(ffn) and ffn < 1:
        parts.append(f"FFN width: keep {share(ffn)} of each layer's feed-forward channels, those "
                     "of the largest weights, in multiples of 16 (BERT-base 3072 -> "
                     f"{_ffn(3072, ffn)}, MiniLM 1536 -> {_ffn(1536, ffn)}) "
                     f"(FFNPruningModifier keep_fraction {ffn:g})")
    elif ffn is not None and not _number(ffn):
        parts.append(f"FFN width: keep_ffn {ffn!r} (as the recipe says)")
    if parts:
        return "; ".join(parts)
    if keep is not None and ffn is not None:
        return f"none: keep_layers {keep!r} and keep_ffn {ffn!r} keep every layer and channel"
    if keep is not None:
        return f"none: keep_layers {keep!r} keeps every layer"
    if ffn is not None:
        return f"none: keep_ffn {ffn!r} keeps every feed-forward channel"
    return None


def _ffn(width: int, fraction: float) -> int:
    from sparsify.modifiers.ffn_pruning import FFNPruningModifier, kept_channel_count

    return kept_channel_count(width, fraction, FFNPruningModifier.channel_multiple)


def describe_shrink(args: dict[str, Any], *, smallest: bool, family: str, user_model: bool,
                    architecture: str) -> str | None:
    """What the run removes structurally, or why nothing at the smallest tier; ``None``
    elsewhere (a plan below the smallest tier whose recipe arguments shrink nothing)."""
    text = _nlp(args)
    if text is not None:
        return text
    channels = args.get("keep_channels")
    if _number(channels):
        if channels >= 1:
            return "none: keep_channels 1.0 keeps every channel"
        return (f"channels: keep {share(channels)} of the output channels of each group of "
                "coupled convs, those of the largest filters, in multiples of 8 (the stem "
                "conv, grouped convs and the classifier's classes keep theirs) "
                f"(ChannelPruningModifier keep_fraction {channels:g})")
    if channels is not None:
        return f"channels: keep_channels {channels!r} (as the recipe says)"
    if not smallest:
        return None
    if family == "detection":
        return ("none: detection models are not shrunk structurally yet (the catalog's "
                "smallest model serves this tier; a --model keeps its size)")
    if not user_model:
        small = "shallow" if family == "nlp" else "small"
        return f"none: the catalog's smallest model is already {small}: {architecture}"
    if family == "nlp":
        return ("none: a recipe given with --recipe decides (the plan sets no keep_layers; "
                "a LayerPruningModifier or FFNPruningModifier in it removes structure)")
    return ("none: a recipe given with --recipe decides (the plan sets no keep_channels; a "
            "ChannelPruningModifier in it removes channels)")
