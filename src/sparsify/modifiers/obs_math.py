"""Tensor maths of OBS pruning (oBERT, Kurtic et al. 2022), imported inside the hooks of
:class:`~sparsify.modifiers.obs.OBSPruningModifier`.

Each pruned weight is viewed as a flat vector in the order :mod:`sparsify.modifiers.masks` uses
(rows over input channels, conv kernels permuted to ``[out, kh, kw, in]``; with block masks each
row is zero-padded to a multiple of the block), cut into consecutive Fisher blocks of
``fisher_block_size`` entries (the last one zero-padded). Per block the empirical Fisher is

    F = damp * I + (1/m) * sum_k g_k g_k^T

over the ``m`` gradients collected. Only ``G = sum g g^T`` is kept (float32, ``#weights x block``
floats); everything derived from it (``F``, Cholesky factors, inverses) is computed in float64
one chunk of blocks at a time, which is far better conditioned than oBERT's running float32
Woodbury updates of ``F^-1`` for the same memory.

Saliency of a unit (a weight, or a group of ``Q`` consecutive weights for ``blockQ`` masks),
with ``F^-1`` the inverse of the Fisher restricted to the weights still unpruned:

    rho = 1/2 * w_q^T ([F^-1]_qq)^-1 w_q        (= w_i^2 / (2 [F^-1]_ii) for one weight)

The update after choosing the pruned set ``S`` of a block (``U`` = the rest) is the exact joint
OBS solution of ``min 1/2 d^T F d  s.t.  w_S + d_S = 0``:

    d_U = F_UU^-1 F_US w_S,    w_S = 0

which equals ``-F^-1[:, S] ([F^-1]_SS)^-1 w_S``; oBERT approximates it by a sum of single-weight
updates, we solve it exactly (the blocks are small).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparsify.modifiers.masks import _as_rows, _from_rows

#: float64 work space per chunk of Fisher blocks (F, the restricted F, its factor, its inverse).
WORK_BYTES = 256 * 2**20
_WORK_COPIES = 4


def _rows_shape(shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`sparsify.modifiers.masks._as_rows` for a weight of ``shape``."""
    numel = math.prod(shape)
    if len(shape) >= 2 and shape[1] > 0:
        return numel // shape[1], shape[1]
    return 1, numel


class Layout:
    """Where each entry of a weight sits in its ``[blocks, block]`` Fisher view.

    ``group`` is the pruning unit (1 unstructured, ``Q`` for ``blockQ``); rows are padded to a
    multiple of it so that no unit straddles two rows or two Fisher blocks. A block larger than
    the weight shrinks to the weight.
    """

    def __init__(self, shape: Sequence[int], block_size: int, group: int = 1) -> None:
        self.shape = torch.Size(shape)
        self.rows, self.cols = _rows_shape(self.shape)
        self.group = group
        self.cols_pad = -(-self.cols // group) * group
        self.numel = self.rows * self.cols_pad
        self.block = max(group, min(block_size, self.numel))
        self.blocks = -(-self.numel // self.block)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 gradient-product sums of this weight."""
        return self.blocks * self.block * self.block * 4

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like the weight) as ``[blocks, block]``, padding entries zero."""
        rows = _as_rows(t)
        if self.cols_pad != self.cols:
            rows = F.pad(rows, (0, self.cols_pad - self.cols))
        flat = rows.reshape(-1)
        tail = self.blocks * self.block - self.numel
        if tail:
            flat = F.pad(flat, (0, tail))
        return flat.reshape(self.blocks, self.block)

    def unflat(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`flat` (padding dropped), shaped like ``like``."""
        rows = x.reshape(-1)[: self.numel].reshape(self.rows, self.cols_pad)[:, : self.cols]
        return _from_rows(rows.contiguous(), like).contiguous()

    def valid(self, device: torch.device) -> torch.Tensor:
        """``[blocks, block]`` bool: True at real entries, False at padding."""
        return self.flat(torch.ones(self.shape, device=device)) > 0.5


def fisher_bytes(shape: Sequence[int], block_size: int, group: int = 1) -> int:
    """Memory the Fisher of one weight takes while gradients are collected and pruned:
    float32 gradient products plus float64 copies of the weight and its scores."""
    layout = Layout(shape, block_size, group)
    return layout.nbytes + 16 * layout.blocks * layout.block


def work_bytes(shape: Sequence[int], block_size: int, group: int = 1) -> int:
    """float64 work space of one chunk of this weight's Fisher blocks (at most WORK_BYTES)."""
    layout = Layout(shape, block_size, group)
    per_block = _WORK_COPIES * 8 * layout.block**2
    return min(layout.blocks, max(1, WORK_BYTES // per_block)) * per_block


def memory_limit_bytes(device: torch.device) -> int:
    """Half of the memory free on ``device`` now (a CUDA device, else the host's RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX host
        return 1 << 62


class BlockFisher:
    """The running sum ``G = sum g g^T`` per Fisher block of one weight, and the count ``m``."""

    def __init__(self, weight: torch.Tensor, block_size: int, group: int = 1) -> None:
        self.layout = Layout(weight.shape, block_size, group)
        self.gram = torch.zeros(self.layout.blocks, self.layout.block, self.layout.block,
                                device=weight.device, dtype=torch.float32)
        self.count = 0

    def add(self, grad_flat: torch.Tensor) -> None:
        """Add one gradient, already in the ``[blocks, block]`` view."""
        self.gram.baddbmm_(grad_flat.unsqueeze(2), grad_flat.unsqueeze(1))
        self.count += 1

    def fisher(self, lo: int, hi: int, damp: float) -> torch.Tensor:
        """``damp * I + G / m`` of blocks ``lo:hi`` in float64."""
        fisher = self.gram[lo:hi].double()
        if self.count:
            fisher.div_(self.count)
        fisher.diagonal(dim1=-2, dim2=-1).add_(damp)
        return fisher

    def chunks(self) -> list[tuple[int, int]]:
        """Ranges of blocks processed together (see :func:`work_bytes`)."""
        step = max(1, WORK_BYTES // (_WORK_COPIES * 8 * self.layout.block**2))
        return [(lo, min(lo + step, self.layout.blocks))
                for lo in range(0, self.layout.blocks, step)]


@torch.no_grad()
def add_gradients(fishers: Sequence[BlockFisher], grads: Sequence[torch.Tensor | None],
                  masks: Sequence[torch.Tensor | None]) -> bool:
    """Add one optimizer step's gradients (masked: pruned weights carry none).

    Returns False, adding nothing, when a gradient is not finite (an fp16 overflow step) or no
    selected weight has a gradient.
    """
    flats: list[torch.Tensor | None] = []
    for fisher, grad, mask in zip(fishers, grads, masks):
        if grad is None:
            flats.append(None)
            continue
        grad = grad.detach().float()
        if mask is not None:
            grad = grad * mask
        flats.append(fisher.layout.flat(grad))
    present = [g for g in flats if g is not None]
    if not present:
        return False
    device = present[0].device
    if not bool(torch.isfinite(torch.stack([g.square().sum().to(device) for g in present])).all()):
        return False
    for fisher, flat in zip(fishers, flats):
        if flat is not None:
            fisher.add(flat)
    return True


def _restrict_(fisher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``F_UU`` on the kept entries, identity on the others, in place of ``fisher``."""
    fisher.masked_fill_(~(keep.unsqueeze(2) & keep.unsqueeze(1)), 0.0)
    fisher.diagonal(dim1=-2, dim2=-1).add_((~keep).to(fisher.dtype))
    return fisher


def _cholesky(a: torch.Tensor) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(a)
    for attempt in range(3):
        bad = info > 0
        if not bool(bad.any()):
            return factor
        diag = a.diagonal(dim1=-2, dim2=-1)
        jitter = 1e-10 * 100**attempt * diag.abs().mean(-1).clamp(min=1e-30)
        a = a.clone()
        a[bad] += torch.diag_embed(jitter[bad].unsqueeze(-1).expand(-1, a.shape[-1]))
        factor, info = torch.linalg.cholesky_ex(a)
    if bool((info > 0).any()):
        raise RuntimeError("OBSPruningModifier: a Fisher block is not positive definite even "
                           "with jitter; raise damp")
    return factor


class _Layer:
    """One weight during a pruning step: its flat float64 copy, kept entries and unit facts."""

    def __init__(self, weight: torch.Tensor, fisher: BlockFisher, mask: torch.Tensor | None
                 ) -> None:
        layout = fisher.layout
        self.weight, self.fisher, self.layout = weight, fisher, layout
        self.q = layout.group
        self.valid = layout.valid(weight.device)
        self.keep = self.valid.clone()
        if mask is not None:
            self.keep &= layout.flat(mask.detach().float().to(weight.device)) > 0.5
        self.w = layout.flat(weight.detach().double())
        units = self.valid.reshape(layout.blocks, -1, self.q)
        self.prunable = units.all(-1)  # units with no padding entry
        self.n_units = int(units.any(-1).sum())  # counted as masks.py does (partial groups too)

    def units(self, entries: torch.Tensor) -> torch.Tensor:
        return entries.reshape(self.layout.blocks, -1, self.q)

    def pruned_units(self) -> torch.Tensor:
        return self.units(self.valid & ~self.keep).any(-1)

    def scores(self, damp: float, eps: float) -> torch.Tensor:
        """OBS saliency per unit, ``[blocks, block / q]``: -inf for units already pruned,
        +inf for units that hold padding (never pruned)."""
        out = torch.empty(self.prunable.shape, dtype=torch.float64, device=self.w.device)
        q = self.q
        for lo, hi in self.fisher.chunks():
            a = _restrict_(self.fisher.fisher(lo, hi, damp), self.keep[lo:hi])
            inverse = torch.cholesky_inverse(_cholesky(a))
            w = self.w[lo:hi]
            if q == 1:
                out[lo:hi] = w.square() / (2 * inverse.diagonal(dim1=-2, dim2=-1) + eps)
                continue
            n = self.layout.block // q
            sub = inverse.reshape(hi - lo, n, q, n, q).diagonal(dim1=1, dim2=3)
            sub = sub.permute(0, 3, 1, 2) + (eps / 2) * torch.eye(q, dtype=sub.dtype,
                                                                   device=sub.device)
            wq = w.reshape(hi - lo, n, q)
            out[lo:hi] = 0.5 * (wq * torch.linalg.solve(sub, wq.unsqueeze(-1)).squeeze(-1)).sum(-1)
        out[~self.prunable] = float("inf")
        out[self.pruned_units() & self.prunable] = float("-inf")
        return out

    def prune_units(self, prune: torch.Tensor) -> None:
        """Mark units pruned (``[blocks, block / q]`` bool)."""
        self.keep &= ~prune.unsqueeze(-1).expand(-1, -1, self.q).reshape(self.keep.shape)

    def update(self, damp: float) -> None:
        """The joint OBS update of every block: kept entries compensate, the others become 0."""
        for lo, hi in self.fisher.chunks():
            fisher = self.fisher.fisher(lo, hi, damp)
            keep, w = self.keep[lo:hi], self.w[lo:hi]
            removed = torch.where(keep, torch.zeros_like(w), w)
            rhs = torch.bmm(fisher, removed.unsqueeze(-1)).squeeze(-1) * keep
            factor = _cholesky(_restrict_(fisher, keep))
            shift = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
            self.w[lo:hi] = torch.where(keep, w + shift, torch.zeros_like(w))

    def write_back(self) -> torch.Tensor:
        """Copy the updated weight into the parameter; return its bool mask (True: kept)."""
        self.weight.copy_(self.layout.unflat(self.w, self.weight).to(self.weight.dtype))
        return self.layout.unflat(self.keep, self.weight)


def _lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool vector marking the ``n_prune`` lowest scores (+inf never chosen)."""
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    n_prune = min(n_prune, int((scores < float("inf")).sum()))
    if n_prune > 0:
        chosen[torch.topk(scores, n_prune, largest=False, sorted=False).indices] = True
    return chosen


@torch.no_grad()
def obs_prune_(weights: Sequence[torch.Tensor], fishers: Sequence[BlockFisher],
               masks: Sequence[torch.Tensor | None], sparsity: float | Sequence[float], *,
               global_sparsity: bool, damp: float, eps: float, num_recomputations: int = 1
               ) -> list[torch.Tensor]:
    """Prune ``weights`` in place to ``sparsity`` (one fraction over all units when
    ``global_sparsity``, else one per weight) with OBS saliencies and updates; return the masks.

    Units already masked stay pruned. With ``num_recomputations`` = R the step is done in R
    rounds, each pruning 1/R of the remaining increase, the inverse re-derived for the weights
    still kept (the Fisher restricted to them) and the saliencies recomputed on updated weights.
    """
    layers = [_Layer(w, f, m) for w, f, m in zip(weights, fishers, masks)]
    if global_sparsity:
        total = sum(layer.n_units for layer in layers)
        start = [sum(int(layer.pruned_units().sum()) for layer in layers) / max(total, 1)]
        finals = [float(sparsity)]  # type: ignore[arg-type]
    else:
        finals = [float(s) for s in sparsity]  # type: ignore[union-attr]
        start = [int(layer.pruned_units().sum()) / max(layer.n_units, 1) for layer in layers]
    for r in range(1, num_recomputations + 1):
        fractions = [s + (f - s) * r / num_recomputations for s, f in zip(start, finals)]
        scores = [layer.scores(damp, eps) for layer in layers]
        if global_sparsity:
            device = scores[0].device
            flat = torch.cat([s.flatten().to(device) for s in scores])
            already = int((flat == float("-inf")).sum())
            chosen = _lowest(flat, max(round(fractions[0] * total), already))
            offset = 0
            for layer, score in zip(layers, scores):
                part = chosen[offset:offset + score.numel()].to(score.device)
                layer.prune_units(part.reshape(score.shape))
                offset += score.numel()
        else:
            for layer, score, fraction in zip(layers, scores, fractions):
                already = int((score == float("-inf")).sum())
                n_prune = max(round(fraction * layer.n_units), already)
                layer.prune_units(_lowest(score.flatten(), n_prune).reshape(score.shape))
        for layer in layers:
            layer.update(damp)
    return [layer.write_back() for layer in layers]
