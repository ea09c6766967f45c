"""Training-length, learning-rate, weight-decay and trainable-parameter modifiers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sparsify.modifiers import lr_functions as F
from sparsify.modifiers.base import Event, EventType, Modifier, ModifierState, resolve_param_groups
from sparsify.modifiers.selectors import check_selector, select_parameters

logger = logging.getLogger(__name__)


def _number(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _set_lr(state: ModifierState, lr: float, param_groups: list[int] | None) -> None:
    if state.optimizer is None:
        return
    for group in resolve_param_groups(state.optimizer, param_groups):
        group["lr"] = lr


def _check_groups(param_groups: Any) -> None:
    if param_groups is not None and (
        not isinstance(param_groups, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in param_groups)
    ):
        raise ValueError(f"param_groups: must be a list of group indexes, got {param_groups!r}")


@dataclass(kw_only=True)
class EpochRangeModifier(Modifier):
    """Sets the training length only (``end_epoch`` = number of epochs)."""

    start_epoch: float = 0.0
    end_epoch: float = -1.0

    def validate(self) -> None:
        if self.end_epoch == -1:
            raise ValueError("end_epoch: EpochRangeModifier needs an end_epoch (the epochs)")


@dataclass(kw_only=True)
class LearningRateFunctionModifier(Modifier):
    """Sets the LR at every batch from a function of the fractional epoch."""

    lr_func: str = "linear"
    init_lr: float
    final_lr: float = 0.0
    cycle_epochs: float = 1.0
    param_groups: list[int] | None = None

    controls_lr: ClassVar[bool] = True
    FUNCS: ClassVar[tuple[str, ...]] = ("linear", "cosine", "cyclic_linear")

    def validate(self) -> None:
        if self.lr_func not in self.FUNCS:
            raise ValueError(f"lr_func: '{self.lr_func}' is not one of {', '.join(self.FUNCS)}")
        _number("init_lr", self.init_lr, 0)
        _number("final_lr", self.final_lr, 0)
        _number("cycle_epochs", self.cycle_epochs)
        if self.cycle_epochs <= 0:
            raise ValueError("cycle_epochs: must be > 0")
        if self.end_epoch == -1 and self.lr_func != "cyclic_linear":
            raise ValueError(f"end_epoch: lr_func '{self.lr_func}' needs an end_epoch")
        _check_groups(self.param_groups)

    def lr_at(self, epoch: float) -> float:
        start = max(self.start_epoch, 0.0)
        if self.lr_func == "linear":
            return F.lr_linear(epoch, start, self.end_epoch, self.init_lr, self.final_lr)
        if self.lr_func == "cosine":
            return F.lr_cosine(epoch, start, self.end_epoch, self.init_lr, self.final_lr)
        return F.lr_cyclic_linear(epoch, start, self.end_epoch, self.init_lr, self.final_lr,
                                  self.cycle_epochs)

    def on_event(self, state: ModifierState, event: Event) -> None:
        if event.type is EventType.BATCH_START:
            _set_lr(state, self.lr_at(event.epoch), self.param_groups)

    def on_end(self, state: ModifierState, event: Event) -> None:
        _set_lr(state, self.lr_at(self.end_epoch), self.param_groups)


@dataclass(kw_only=True)
class SetLearningRateModifier(Modifier):
    """Sets the LR once, at ``start_epoch``."""

    learning_rate: float
    param_groups: list[int] | None = None
    controls_lr: ClassVar[bool] = True

    def validate(self) -> None:
        _number("learning_rate", self.learning_rate, 0)
        _check_groups(self.param_groups)

    def on_start(self, state: ModifierState, event: Event) -> None:
        _set_lr(state, self.learning_rate, self.param_groups)


@dataclass(kw_only=True)
class LearningRateModifier(Modifier):
    """A torch-style LR schedule (``lr_class`` + ``lr_kwargs``) with epoch-valued arguments,
    evaluated every batch at the fractional epoch (so epochs become steps exactly)."""

    lr_class: str
    lr_kwargs: dict[str, Any] = field(default_factory=dict)
    init_lr: float
    param_groups: list[int] | None = None

    controls_lr: ClassVar[bool] = True
    CLASSES: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
        # class: (required kwargs, optional kwargs)
        "StepLR": (("step_size",), ("gamma",)),
        "MultiStepLR": (("milestones",), ("gamma",)),
        "ExponentialLR": (("gamma",), ()),
        "CosineAnnealingWarmRestarts": (("T_0",), ("T_mult", "eta_min")),
    }

    def validate(self) -> None:
        if self.lr_class not in self.CLASSES:
            raise ValueError(f"lr_class: '{self.lr_class}' is not one of "
                             f"{', '.join(self.CLASSES)}")
        _number("init_lr", self.init_lr, 0)
        if not isinstance(self.lr_kwargs, dict):
            raise ValueError("lr_kwargs: must be a mapping")
        required, optional = self.CLASSES[self.lr_class]
        for key in self.lr_kwargs:
            if key not in required + optional:
                raise ValueError(f"lr_kwargs: '{key}' is not an argument of {self.lr_class} "
                                 f"(valid: {', '.join(required + optional)})")
        for key in required:
            if key not in self.lr_kwargs:
                raise ValueError(f"lr_kwargs: {self.lr_class} needs '{key}'")
        _check_groups(self.param_groups)

    def lr_at(self, epoch: float) -> float:
        kw = self.lr_kwargs
        start = max(self.start_epoch, 0.0)
        if self.lr_class == "StepLR":
            return F.lr_step(epoch, start, self.init_lr, kw["step_size"], kw.get("gamma", 0.1))
        if self.lr_class == "MultiStepLR":
            return F.lr_multistep(epoch, self.init_lr, list(kw["milestones"]), kw.get("gamma", 0.1))
        if self.lr_class == "ExponentialLR":
            return F.lr_exponential(epoch, start, self.init_lr, kw["gamma"])
        return F.lr_cosine_warm_restarts(epoch, start, self.init_lr, kw["T_0"],
                                         kw.get("T_mult", 1.0), kw.get("eta_min", 0.0))

    def on_event(self, state: ModifierState, event: Event) -> None:
        if event.type is EventType.BATCH_START:
            _set_lr(state, self.lr_at(event.epoch), self.param_groups)


@dataclass(kw_only=True)
class SetWeightDecayModifier(Modifier):
    """Sets the optimizer's weight decay once, at ``start_epoch``."""

    weight_decay: float
    param_groups: list[int] | None = None

    def validate(self) -> None:
        _number("weight_decay", self.weight_decay, 0)
        _check_groups(self.param_groups)

    def on_start(self, state: ModifierState, event: Event) -> None:
        if state.optimizer is not None:
            for group in resolve_param_groups(state.optimizer, self.param_groups):
                group["weight_decay"] = self.weight_decay


@dataclass(kw_only=True)
class TrainableParamsModifier(Modifier):
    """Freezes (``trainable: false``) or unfreezes parameters from start to end; at the end the
    previous ``requires_grad`` flags are restored."""

    params: Any
    trainable: bool = False

    resume_fields: ClassVar[tuple[str, ...]] = ("_previous",)

    def validate(self) -> None:
        check_selector("params", self.params)
        if not isinstance(self.trainable, bool):
            raise ValueError(f"trainable: must be true or false, got {self.trainable!r}")

    def on_initialize(self, state: ModifierState) -> None:
        self._targets = select_parameters(state.model, self.params, "params")

    def on_start(self, state: ModifierState, event: Event) -> None:
        self._previous = {name: p.requires_grad for name, p in self._targets.items()}
        for p in self._targets.values():
            p.requires_grad_(self.trainable)

    def on_resume(self, state: ModifierState) -> None:
        if not self.ended:  # requires_grad is not in a state dict
            for p in self._targets.values():
                p.requires_grad_(self.trainable)

    def on_end(self, state: ModifierState, event: Event) -> None:
        for name, p in self._targets.items():
            p.requires_grad_(self._previous[name])
