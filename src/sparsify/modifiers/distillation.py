"""Output distillation from a teacher model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sparsify.modifiers.base import Event, EventType, Modifier, ModifierState

logger = logging.getLogger(__name__)


def call_model(model: Any, inputs: Any) -> Any:
    """Call ``model`` the way the trainer called the student: mapping -> kwargs, tuple -> args."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


_CACHE_KEY = "teacher_outputs"


def teacher_outputs(state: ModifierState, event: Event) -> Any:
    """The teacher's outputs for this event's inputs, computed once per batch (eval mode, no
    gradients) and shared by the distillation modifiers of the recipe."""
    import torch

    # the inputs object itself is kept and compared (not its id, which a later batch may reuse)
    cached = state.extras.get(_CACHE_KEY)
    if cached is not None and cached[0] == event.step and cached[1] is event.inputs:
        return cached[2]
    if state.teacher.training:  # a trainer's model.train() may have reached the teacher
        state.teacher.eval()
    with torch.no_grad():
        outputs = call_model(state.teacher, event.inputs)
    state.extras[_CACHE_KEY] = (event.step, event.inputs, outputs)
    return outputs


@dataclass(kw_only=True)
class DistillationModifier(Modifier):
    """``loss = (1-h)·task_loss + h·KL(student/T ‖ teacher/T)·T²`` over the output keys.

    The teacher runs in eval mode under ``no_grad``; without a teacher the modifier is disabled
    and says so once.
    """

    hardness: float = 0.5
    temperature: float = 2.0
    distill_output_keys: list[str] | None = None

    def validate(self) -> None:
        if isinstance(self.hardness, bool) or not isinstance(self.hardness, (int, float)) \
                or not 0 <= self.hardness <= 1:
            raise ValueError(f"hardness: must be in [0, 1], got {self.hardness!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature!r}")
        if self.distill_output_keys is not None and (
                not isinstance(self.distill_output_keys, list)
                or not all(isinstance(k, str) for k in self.distill_output_keys)):
            raise ValueError("distill_output_keys: must be a list of output names")

    def on_initialize(self, state: ModifierState) -> None:
        self._enabled = state.teacher is not None
        if not self._enabled:
            logger.warning("DistillationModifier disabled: no teacher given (--teacher). "
                           "Training uses the task loss only.")
            return
        state.teacher.eval()
        for p in state.teacher.parameters():
            p.requires_grad_(False)

    def on_event(self, state: ModifierState, event: Event) -> Any:
        if not self._enabled or event.type is not EventType.LOSS_CALCULATED:
            return None
        from sparsify.modifiers.kd import distillation_loss

        outputs = teacher_outputs(state, event)
        mask = event.inputs.get("attention_mask") if isinstance(event.inputs, dict) else None
        return distillation_loss(event.loss, event.outputs, outputs, self.hardness,
                                 self.temperature, self.distill_output_keys, mask)
