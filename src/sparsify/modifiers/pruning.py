"""Pruning modifiers: constant masks (sparse transfer) and gradual magnitude pruning.

Masks are re-applied after every optimizer step (so momentum and weight decay cannot revive a
pruned weight) and once more at finalize, before export. Parameters are looked up by name again
whenever another modifier changed the module structure (QAT), so masks follow the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsify.modifiers.base import Event, EventType, Modifier, ModifierState
from sparsify.modifiers.selectors import ALL_PRUNABLE, check_selector, select_parameters
from sparsify.modifiers.sparsity_schedule import (
    INTER_FUNCS, interpolate, parse_mask_type, sparsity_at,
)

logger = logging.getLogger(__name__)
FROM_PARAM = "__FROM_PARAM__"


@dataclass(kw_only=True)
class _MaskingModifier(Modifier):
    """Holds masks by parameter name and applies them after each optimizer step."""

    resume_fields: ClassVar[tuple[str, ...]] = ("_masks",)

    def _params(self, state: ModifierState) -> dict[str, Any]:
        if getattr(self, "_version", None) != state.structure_version:
            params = dict(state.model.named_parameters())
            missing = [n for n in self._masks if n not in params]
            if missing:
                raise RuntimeError(f"{self.name}: parameters {missing[:3]} disappeared from the "
                                   "model; a structure change must keep parameter names")
            self._tensors = [params[n] for n in self._masks]
            self._version = state.structure_version
        return self._tensors

    def apply_masks(self, state: ModifierState) -> None:
        from sparsify.modifiers.masks import apply_masks_

        tensors = self._params(state)
        masks = list(self._masks.values())
        if masks and masks[0].device != tensors[0].device:
            self._masks = {n: m.to(t.device) for (n, m), t in zip(self._masks.items(), tensors)}
            masks = list(self._masks.values())
        apply_masks_(tensors, masks)

    def masked_parameter_names(self) -> list[str]:
        return list(getattr(self, "_masks", {}))


@dataclass(kw_only=True)
class ConstantPruningModifier(_MaskingModifier):
    """Keeps today's zeros at zero: at start, mask = weight != 0; applied after every step."""

    params: Any = ALL_PRUNABLE

    def validate(self) -> None:
        check_selector("params", self.params)

    def on_initialize(self, state: ModifierState) -> None:
        self._names = list(select_parameters(state.model, self.params, "params"))
        self._masks = {}

    def on_start(self, state: ModifierState, event: Event) -> None:
        from sparsify.modifiers.masks import nonzero_mask

        params = dict(state.model.named_parameters())
        self._masks = {n: nonzero_mask(params[n]) for n in self._names}
        self._version = None

    def on_event(self, state: ModifierState, event: Event) -> None:
        if event.type is EventType.OPTIM_POST_STEP:
            self.apply_masks(state)

    def on_finalize(self, state: ModifierState) -> None:
        if self._masks and not self.ended:
            self.apply_masks(state)


@dataclass(kw_only=True)
class GMPruningModifier(_MaskingModifier):
    """Gradual magnitude pruning from ``init_sparsity`` to ``final_sparsity`` over
    [start_epoch, end_epoch], masks recomputed every ``update_frequency`` epochs, then held."""

    params: Any = None
    init_sparsity: Any = 0.0
    final_sparsity: Any
    update_frequency: float = 1.0
    inter_func: str = "cubic"
    mask_type: str = "unstructured"
    leave_enabled: bool = True
    global_sparsity: bool = False

    global_default: ClassVar[bool] = False
    resume_fields: ClassVar[tuple[str, ...]] = ("_masks", "_inits", "_n_updates")
    cost_phase: ClassVar[str | None] = "pruning"

    def __post_init__(self) -> None:
        if self.global_default:
            self.global_sparsity = True
        super().__post_init__()

    def validate(self) -> None:
        if self.end_epoch == -1 or self.start_epoch == -1:
            raise ValueError("end_epoch: gradual pruning needs start_epoch and end_epoch")
        if isinstance(self.final_sparsity, dict):
            if self.global_sparsity:
                raise ValueError("final_sparsity: a per-parameter mapping cannot be global")
            for sparsity, selector in self.final_sparsity.items():
                self._check_fraction("final_sparsity", sparsity)
                check_selector(f"final_sparsity[{sparsity}]", selector)
        else:
            self._check_fraction("final_sparsity", self.final_sparsity)
            check_selector("params", self.params if self.params is not None else "")
        if self.init_sparsity != FROM_PARAM:
            self._check_fraction("init_sparsity", self.init_sparsity)
        if isinstance(self.update_frequency, bool) or not isinstance(
                self.update_frequency, (int, float)) or self.update_frequency <= 0:
            raise ValueError(f"update_frequency: must be > 0 epochs, got {self.update_frequency!r}")
        if self.inter_func not in INTER_FUNCS:
            raise ValueError(f"inter_func: '{self.inter_func}' is not one of "
                             f"{', '.join(INTER_FUNCS)}")
        kind, n, m = parse_mask_type(self.mask_type)
        finals = (list(self.final_sparsity) if isinstance(self.final_sparsity, dict)
                  else [self.final_sparsity])
        if kind == "nm" and any(f > (m - n) / m + 1e-9 for f in finals):
            raise ValueError(f"final_sparsity: mask_type {self.mask_type} allows at most "
                             f"{(m - n) / m:g}")
        if not isinstance(self.leave_enabled, bool):
            raise ValueError("leave_enabled: must be true or false")

    @staticmethod
    def _check_fraction(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name}: must be a fraction in [0, 1), got {value!r}")

    # --- hooks -------------------------------------------------------------------------------
    def on_initialize(self, state: ModifierState) -> None:
        if isinstance(self.final_sparsity, dict):
            self._finals: dict[str, float] = {}
            for sparsity, selector in self.final_sparsity.items():
                for name in select_parameters(state.model, selector, "final_sparsity"):
                    self._finals[name] = float(sparsity)
        else:
            names = select_parameters(state.model, self.params, "params")
            self._finals = {n: float(self.final_sparsity) for n in names}
        self._masks = {}

    def on_start(self, state: ModifierState, event: Event) -> None:
        from sparsify.modifiers.masks import tensor_sparsity

        params = dict(state.model.named_parameters())
        self._inits = {
            n: (tensor_sparsity(params[n]) if self.init_sparsity == FROM_PARAM
                else float(self.init_sparsity)) for n in self._finals
        }
        self._update_masks(state, self.start_epoch)
        self._n_updates = 1

    def _next_update(self) -> float:
        # start + n * frequency, not a running sum: 0.1 + 0.1 + 0.1 > 0.3 would skip an update.
        return self.start_epoch + self._n_updates * self.update_frequency - 1e-9

    def _target(self, name: str, epoch: float) -> float:
        return sparsity_at(epoch, self.start_epoch, self.end_epoch, self._inits[name],
                           self._finals[name], self.inter_func)

    def _update_masks(self, state: ModifierState, epoch: float) -> None:
        from sparsify.modifiers.masks import global_magnitude_masks, magnitude_mask

        params = dict(state.model.named_parameters())
        names = list(self._finals)
        if self.global_sparsity:
            init = sum(self._inits[n] * params[n].numel() for n in names) / sum(
                params[n].numel() for n in names)
            final = next(iter(self._finals.values()))
            target = init + (final - init) * interpolate(
                (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch), self.inter_func)
            masks = global_magnitude_masks([params[n] for n in names], target, self.mask_type)
            self._masks = dict(zip(names, masks))
        else:
            self._masks = {n: magnitude_mask(params[n], self._target(n, epoch), self.mask_type)
                           for n in names}
        self._version = None
        self.apply_masks(state)
        logger.debug("%s: masks updated at epoch %.3f", self.name, epoch)

    def on_event(self, state: ModifierState, event: Event) -> None:
        if event.type is not EventType.OPTIM_POST_STEP:
            return
        epoch = event.epoch
        if epoch >= self._next_update() and epoch < self.end_epoch:
            self._update_masks(state, epoch)
            while self._next_update() <= epoch:
                self._n_updates += 1
        else:
            self.apply_masks(state)

    def on_end(self, state: ModifierState, event: Event) -> None:
        self._update_masks(state, self.end_epoch)

    def update(self, state: ModifierState, event: Event) -> Any:
        result = super().update(state, event)
        if (self.ended and self.leave_enabled and event.type is EventType.OPTIM_POST_STEP
                and event.epoch > self.end_epoch):
            self.apply_masks(state)
        return result

    def on_finalize(self, state: ModifierState) -> None:
        if self._masks and (self.leave_enabled or not self.ended):
            self.apply_masks(state)


@dataclass(kw_only=True)
class MagnitudePruningModifier(GMPruningModifier):
    """SparseML's other name for gradual magnitude pruning (same behaviour)."""


@dataclass(kw_only=True)
class GlobalMagnitudePruningModifier(GMPruningModifier):
    """Gradual magnitude pruning with one threshold across all selected parameters."""

    global_default: ClassVar[bool] = True
