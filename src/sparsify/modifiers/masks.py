"""Pruning masks: magnitude scores per mask type, exact-count masks, applying masks in place.

Every weight is viewed as a 2-D matrix ``[rows, in]`` whose last axis runs over input channels
(conv kernels are permuted to ``[out, kh, kw, in]``), because block and N:M sparsity group
consecutive input channels, which is what sparse kernels exploit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sparsify.modifiers.sparsity_schedule import parse_mask_type

def _as_rows(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() > 2:
        return weight.permute(0, *range(2, weight.dim()), 1).reshape(-1, weight.shape[1])
    return weight.reshape(-1, weight.shape[-1]) if weight.dim() == 2 else weight.reshape(1, -1)


def _from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() > 2:
        shape = (like.shape[0], *like.shape[2:], like.shape[1])
        return rows.reshape(shape).permute(0, like.dim() - 1, *range(1, like.dim() - 1))
    return rows.reshape(like.shape)


def _grouped(weight: torch.Tensor, group: int) -> torch.Tensor:
    """``|w|`` as ``[rows, groups, group]``; padding (input channels not divisible) is +inf."""
    rows = _as_rows(weight.detach().abs().float())
    pad = (-rows.shape[1]) % group
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad), value=float("inf"))
    return rows.reshape(rows.shape[0], -1, group)


def unit_scores(weight: torch.Tensor, mask_type: str) -> tuple[torch.Tensor, Callable]:
    """Scores of the pruning units of ``weight`` (lower = pruned first), and a function that
    turns a flat 0/1 keep-vector over units back into a mask shaped like ``weight``."""
    kind, a, b = parse_mask_type(mask_type)
    if kind == "unstructured":
        return weight.detach().abs().float().flatten(), lambda keep: keep.reshape(weight.shape)
    group = a if kind == "block" else b
    grouped = _grouped(weight, group)
    in_features = _as_rows(weight).shape[1]

    def to_mask(keep_rows: torch.Tensor) -> torch.Tensor:
        rows = keep_rows.reshape(grouped.shape[0], -1)[:, :in_features]
        return _from_rows(rows, weight)

    if kind == "block":
        finite = torch.where(torch.isinf(grouped), torch.zeros_like(grouped), grouped)
        counts = (~torch.isinf(grouped)).sum(-1).clamp(min=1)
        scores = finite.sum(-1) / counts  # mean |w| of the block's real entries
        return scores.flatten(), lambda keep: to_mask(
            keep.reshape(grouped.shape[:2]).unsqueeze(-1).expand(grouped.shape).reshape(-1))
    n, m = a, b
    # N:M: in each group of M only the M-N smallest may be pruned; others score +inf.
    ranks = grouped.argsort(dim=-1).argsort(dim=-1)
    scores = torch.where(ranks < m - n, grouped, torch.full_like(grouped, float("inf")))
    return scores.flatten(), lambda keep: to_mask(keep)


def _keep_vector(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    keep = torch.ones_like(scores)
    n_prune = min(n_prune, int(torch.isfinite(scores).sum()))
    if n_prune > 0:
        keep[torch.topk(scores, n_prune, largest=False, sorted=False).indices] = 0.0
    return keep


def magnitude_mask(weight: torch.Tensor, sparsity: float, mask_type: str = "unstructured"
                   ) -> torch.Tensor:
    """Bool mask (True: kept) that zeros the ``sparsity`` fraction of lowest-magnitude units.

    Masks are bool, not the weight's dtype: a float copy of every pruned weight was a quarter
    of QAT's memory excess on ResNet-18 (docs/benchmarks.md, training cost)."""
    scores, to_mask = unit_scores(weight, mask_type)
    n_prune = round(sparsity * scores.numel())
    return to_mask(_keep_vector(scores, n_prune)).bool()


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float,
                           mask_type: str = "unstructured") -> list[torch.Tensor]:
    """Masks with one magnitude threshold across all ``weights`` (``sparsity`` of all units)."""
    pieces = [unit_scores(w, mask_type) for w in weights]
    scores = torch.cat([s.to(weights[0].device) for s, _ in pieces])
    keep = _keep_vector(scores, round(sparsity * scores.numel()))
    masks, offset = [], 0
    for (s, to_mask), w in zip(pieces, weights):
        masks.append(to_mask(keep[offset:offset + s.numel()]).bool())
        offset += s.numel()
    return masks


@torch.no_grad()
def apply_masks_(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Multiply every parameter by its (bool or 0/1) mask in place (one fused call)."""
    if params:
        torch._foreach_mul_(list(params), list(masks))


def tensor_sparsity(t: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((t == 0).sum()) / max(t.numel(), 1)


def nonzero_mask(weight: torch.Tensor) -> torch.Tensor:
    """True where the weight is non-zero (constant pruning keeps today's zeros)."""
    return weight.detach() != 0
