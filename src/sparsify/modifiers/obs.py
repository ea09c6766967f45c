"""SparseML's ``OBSPruningModifier``: gradual pruning with the Optimal BERT Surgeon (oBERT,
Kurtic et al. 2022, https://arxiv.org/abs/2203.07259).

The schedule, the masks and their re-application after every optimizer step are those of
:class:`~sparsify.modifiers.pruning.GMPruningModifier`; what changes is how each mask update is
made. Instead of magnitudes, the weights are scored by the loss increase their removal causes
under a block-diagonal empirical Fisher built from the gradients of the ``num_grads`` optimizer
steps just before the update, and the weights that stay are moved to compensate for the ones
removed (the OBS update). The maths is in :mod:`sparsify.modifiers.obs_math`.

Where this differs from SparseML (its gradients come from a separate ``GradSampler`` pass over
the training data with ``grad_sampler_kwargs``): here they are the gradients the trainer already
computes (at ``OPTIM_PRE_STEP``), so ``grad_sampler_kwargs`` has nothing to configure, and
``num_recomputations`` reuses the same gradients, re-deriving the inverse for the weights still
kept, instead of sampling new ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsify.modifiers.base import Event, EventType, ModifierState, epoch_at
from sparsify.modifiers.pruning import GMPruningModifier
from sparsify.modifiers.sparsity_schedule import interpolate, parse_mask_type

logger = logging.getLogger(__name__)

FLOAT32_EPS = 1.1920928955078125e-07


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")


@dataclass(kw_only=True)
class OBSPruningModifier(GMPruningModifier):
    """Gradual OBS pruning from ``init_sparsity`` to ``final_sparsity`` over
    [start_epoch, end_epoch], masks recomputed every ``update_frequency`` epochs, then held.

    Each update at step ``s`` uses the gradients of steps ``s - num_grads .. s - 1`` (fewer when
    updates are closer together; the first update waits for gradients when nothing precedes it).
    Memory while collecting: ``4 * #weights * fisher_block_size`` bytes on the weights' device.
    Ours: when updates are fewer than ``fisher_block_size / 2`` steps apart (tiny data), every
    update is a magnitude one, with a warning (see ``on_initialize``).
    """

    global_sparsity: bool = True
    num_grads: int = 1024
    damp: float = 1e-7
    fisher_block_size: int = 50
    num_recomputations: int = 1
    grad_sampler_kwargs: dict | None = None
    eps: float = FLOAT32_EPS
    #: Ours (not SparseML's): when the Fisher of ``fisher_block_size`` would not fit in memory,
    #: halve the block size (keeping it a multiple of a block mask's group) until it fits,
    #: instead of refusing; the shipped image recipe sets it, so a large CNN still prunes.
    fit_fisher_block_size: bool = False

    #: Most memory (GB) the Fisher may take; ``None``: half of what is free on the weights'
    #: device (GPU memory, or host RAM) when the modifier is initialised.
    max_fisher_memory_gb: ClassVar[float | None] = None
    # a run resumed while gradients were being collected collects them again (the Fisher
    # itself is not checkpointed: it can take gigabytes)
    resume_fields: ClassVar[tuple[str, ...]] = (*GMPruningModifier.resume_fields, "_pending")

    def __post_init__(self) -> None:
        # SparseML reads ``damp: 1e-7`` (a string to YAML 1.1) as a number; so do we.
        for name in ("damp", "eps"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ValueError(f"{name}: must be a number, got {value!r}") from None
        super().__post_init__()
        self._by_magnitude = False  # set by on_initialize from the update interval

    def validate(self) -> None:
        kind, group, _ = parse_mask_type(self.mask_type)
        if kind == "nm":
            raise ValueError(f"mask_type: '{self.mask_type}' (N:M) is not supported by "
                             "OBSPruningModifier; use unstructured or blockN such as block4")
        super().validate()
        _positive_int("num_grads", self.num_grads)
        _positive_int("fisher_block_size", self.fisher_block_size)
        _positive_int("num_recomputations", self.num_recomputations)
        if kind == "block" and self.fisher_block_size % group:
            raise ValueError(f"fisher_block_size: must be a multiple of {group} for mask_type "
                             f"{self.mask_type}, got {self.fisher_block_size}")
        for name, positive in (("damp", True), ("eps", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name}: must be a finite number {'> 0' if positive else '>= 0'}"
                                 f", got {value!r}")
        if self.grad_sampler_kwargs is not None and not isinstance(self.grad_sampler_kwargs, dict):
            raise ValueError("grad_sampler_kwargs: must be a mapping (it is accepted and ignored: "
                             f"gradients come from the training steps), got "
                             f"{self.grad_sampler_kwargs!r}")

    @property
    def _group(self) -> int:
        kind, group, _ = parse_mask_type(self.mask_type)
        return group if kind == "block" else 1

    # --- hooks -------------------------------------------------------------------------------
    def on_initialize(self, state: ModifierState) -> None:
        import torch

        from sparsify.modifiers import obs_math

        super().on_initialize(state)
        params = dict(state.model.named_parameters())
        weights = [params[n] for n in self._finals]
        size, group = self.fisher_block_size, self._group

        def needed(size: int) -> int:
            return (sum(obs_math.fisher_bytes(w.shape, size, group) for w in weights)
                    + max((obs_math.work_bytes(w.shape, size, group) for w in weights),
                          default=0))

        need = needed(size)
        device = weights[0].device if weights else torch.device("cpu")
        if self.max_fisher_memory_gb is not None:
            limit, why = int(self.max_fisher_memory_gb * 2**30), "the limit"
        else:
            limit, why = obs_math.memory_limit_bytes(device), f"half the memory free on {device}"
        if need > limit and self.fit_fisher_block_size:
            fitted = size
            while needed(fitted) > limit and fitted // 2 >= group and (fitted // 2) % group == 0:
                fitted //= 2
            if needed(fitted) <= limit:
                logger.info("%s: fisher_block_size %d -> %d: the Fisher of %d needs %.2f GB, "
                            "over %.2f GB (%s)", self.name, size, fitted, size, need / 2**30,
                            limit / 2**30, why)
                self.fisher_block_size, need = fitted, needed(fitted)
        if need > limit:
            count = sum(w.numel() for w in weights)
            raise ValueError(
                f"fisher_block_size: the block Fisher of the {count:,} weights selected by params "
                f"needs {need / 2**30:.2f} GB (4 bytes x weights x fisher_block_size "
                f"{self.fisher_block_size}), over {limit / 2**30:.2f} GB ({why}); lower "
                "fisher_block_size or select fewer weights with params")
        if self.grad_sampler_kwargs:
            logger.info("%s: grad_sampler_kwargs %s ignored: the Fisher is built from the "
                        "gradients of the training steps (the trainer's batch size)", self.name,
                        self.grad_sampler_kwargs)
        self._spe = state.steps_per_epoch
        interval = self.update_frequency * self._spe
        # With m gradients the block Fisher has rank m: [F^-1]_ii ~ (1 - p_i) / damp, p_i the
        # leverage of weight i on the gradients' span (m / block on average), so below half a
        # block of gradients the OBS score is nearly magnitude while each update still factors
        # every block (seconds to a minute on CPU for a ResNet-18); such runs prune by magnitude.
        self._by_magnitude = interval < self.fisher_block_size / 2
        if self._by_magnitude:
            logger.warning("%s: updates are %.1f optimizer steps apart, fewer than half of "
                           "fisher_block_size=%d gradients per update, too few for a block Fisher; "
                           "the masks are updated by magnitude (GMP) instead. More training data, "
                           "a larger update_frequency or a smaller fisher_block_size makes OBS "
                           "apply", self.name, interval, self.fisher_block_size)
        elif interval < self.num_grads:
            logger.warning("%s: updates are %.0f optimizer steps apart, fewer than num_grads=%d; "
                           "each update uses the gradients of the steps since the previous one",
                           self.name, interval, self.num_grads)
        self._fishers: dict[str, Any] | None = None
        self._pending: float | None = None

    def update(self, state: ModifierState, event: Event) -> Any:
        result = super().update(state, event)
        if self._by_magnitude:
            return result
        if event.type is EventType.OPTIM_PRE_STEP and self._wants_grads(event.step):
            self._collect(state)
        elif (event.type is EventType.OPTIM_POST_STEP and self._pending is not None
              and self._collected() >= self.num_grads):
            self._prune(state, self._pending)
        return result

    def on_finalize(self, state: ModifierState) -> None:
        if self._pending is not None:
            if self._collected():
                self._prune(state, self._pending)
            else:
                logger.warning("%s: training ended before any gradient was collected; the last "
                               "update falls back to magnitude pruning", self.name)
                super()._update_masks(state, self._pending)
                self._pending = None
        self._fishers = None
        super().on_finalize(state)

    # --- gradients ---------------------------------------------------------------------------
    def _first_step_at(self, epoch: float) -> int:
        step = max(0, math.ceil(epoch * self._spe) - 1)
        while epoch_at(step, self._spe) < epoch:
            step += 1
        return step

    def _wants_grads(self, step: int) -> bool:
        """Whether the gradients of the step now being taken feed the next mask update."""
        if self._pending is not None:
            return True
        if self.ended:
            return False
        if not self.started:
            trigger = self._first_step_at(self.start_epoch)
        else:
            trigger = self._first_step_at(min(self._next_update(), self.end_epoch))
        return 0 < trigger - step <= self.num_grads

    def _collected(self) -> int:
        return max((f.count for f in self._fishers.values()), default=0) if self._fishers else 0

    def _collect(self, state: ModifierState) -> None:
        from sparsify.modifiers.obs_math import BlockFisher, add_gradients

        params = dict(state.model.named_parameters())
        names = list(self._finals)
        if self._fishers is None:
            self._fishers = {n: BlockFisher(params[n], self.fisher_block_size, self._group)
                             for n in names}
        masks = [self._masks.get(n) for n in names]
        masks = [m.to(params[n].device) if m is not None else None for n, m in zip(names, masks)]
        if not add_gradients([self._fishers[n] for n in names], [params[n].grad for n in names],
                             masks):
            logger.debug("%s: step skipped for the Fisher (no gradient or not finite)", self.name)

    # --- mask updates ------------------------------------------------------------------------
    def _update_masks(self, state: ModifierState, epoch: float) -> None:
        """Called by the GMP schedule at start, every ``update_frequency`` and at the end."""
        if self._by_magnitude:
            super()._update_masks(state, epoch)
        elif self._collected():
            self._prune(state, epoch)
        elif self._nothing_to_prune(state, epoch):
            super()._update_masks(state, epoch)  # keeps today's zeros, as magnitude would
        else:
            self._pending = epoch
            # pruned once num_grads gradients are in, or at the next scheduled update
            steps = min(self.num_grads, max(1, math.ceil(self.update_frequency * self._spe)))
            logger.info("%s: no gradients yet at epoch %.3f; pruning after the next %d steps",
                        self.name, epoch, steps)
            self.apply_masks(state)

    def _targets(self, state: ModifierState, epoch: float) -> float | list[float]:
        """The global target fraction, or one per selected weight (GMP's schedule)."""
        if not self.global_sparsity:
            return [self._target(n, epoch) for n in self._finals]
        params = dict(state.model.named_parameters())
        sizes = {n: params[n].numel() for n in self._finals}
        init = sum(self._inits[n] * sizes[n] for n in sizes) / sum(sizes.values())
        final = next(iter(self._finals.values()))
        return init + (final - init) * interpolate(
            (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch), self.inter_func)

    def _nothing_to_prune(self, state: ModifierState, epoch: float) -> bool:
        from sparsify.modifiers.masks import tensor_sparsity

        params = dict(state.model.named_parameters())
        current = [tensor_sparsity(params[n]) for n in self._finals]
        targets = self._targets(state, epoch)
        if isinstance(targets, float):
            sizes = [params[n].numel() for n in self._finals]
            now = sum(c * s for c, s in zip(current, sizes)) / sum(sizes)
            return targets <= now + 1e-12
        return all(t <= c + 1e-12 for t, c in zip(targets, current))

    def _prune(self, state: ModifierState, epoch: float) -> None:
        from sparsify.modifiers.obs_math import obs_prune_

        params = dict(state.model.named_parameters())
        names = list(self._finals)
        collected = self._collected()
        masks = obs_prune_(
            [params[n] for n in names], [self._fishers[n] for n in names],
            [self._masks.get(n) for n in names], self._targets(state, epoch),
            global_sparsity=self.global_sparsity, damp=float(self.damp), eps=float(self.eps),
            num_recomputations=self.num_recomputations)
        self._fishers = None  # free the Fisher before training goes on
        self._pending = None
        self._masks = dict(zip(names, masks))
        self._version = None
        self.apply_masks(state)
        logger.info("%s: OBS masks updated for epoch %.3f from %d gradients", self.name, epoch,
                    collected)
