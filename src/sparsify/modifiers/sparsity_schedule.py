"""Pure maths of gradual pruning: mask-type names and the sparsity schedule (no torch)."""

from __future__ import annotations

import re

MASK_TYPES_HELP = "unstructured, block4 (or blockN), or N:M such as 2:4"
INTER_FUNCS = ("linear", "cubic", "inverse_cubic")


def parse_mask_type(mask_type: str) -> tuple[str, int, int]:
    """``unstructured`` -> ("unstructured", 1, 1); ``block4`` -> ("block", 4, 0);
    ``2:4`` -> ("nm", 2, 4).

    Raises:
        ValueError: any other text.
    """
    text = str(mask_type).strip().lower()
    if text == "unstructured":
        return "unstructured", 1, 1
    match = re.fullmatch(r"block(\d+)", text)
    if match and int(match.group(1)) > 1:
        return "block", int(match.group(1)), 0
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match and 0 < int(match.group(1)) < int(match.group(2)):
        return "nm", int(match.group(1)), int(match.group(2))
    raise ValueError(f"mask_type: '{mask_type}' is not valid ({MASK_TYPES_HELP})")


def interpolate(x: float, inter_func: str) -> float:
    """Schedule shape on [0, 1]: linear ``x``, cubic ``1-(1-x)^3``, inverse_cubic ``x^3``."""
    x = min(max(x, 0.0), 1.0)
    if inter_func == "linear":
        return x
    if inter_func == "cubic":
        return 1.0 - (1.0 - x) ** 3
    if inter_func == "inverse_cubic":
        return x**3
    raise ValueError(f"inter_func: '{inter_func}' is not one of {', '.join(INTER_FUNCS)}")


def sparsity_at(epoch: float, start: float, end: float, init: float, final: float,
                inter_func: str = "cubic") -> float:
    """Target sparsity at ``epoch``: ``init`` before ``start``, ``final`` from ``end`` on."""
    if end <= start:
        return final
    return init + (final - init) * interpolate((epoch - start) / (end - start), inter_func)
