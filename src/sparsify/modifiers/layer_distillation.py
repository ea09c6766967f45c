"""Per-layer distillation: the student's intermediate outputs follow the teacher's.

SparseML's ``PerLayerDistillationModifier`` (same name and fields): for each pair of a student
layer and a teacher layer, the mean squared difference of their outputs, divided by the mean
square of the teacher's output when ``normalize`` (the normalised form is the per-layer loss
of "SquareHead" distillation, Kurtic et al. 2023, which recovered sparse fine-tunes where
output distillation alone did not); ``gain`` times their sum is added to the loss the other
modifiers leave (the task loss, or the output distillation of ``DistillationModifier``).

Layers: ``student_layer_names`` / ``teacher_layer_names`` name modules, paired in order (one
list given: the same names in both models). ``__LAYER_OUTPUTS__`` pairs the outputs of a
transformer's layer stack (``encoder.layer.N``): every student layer with the teacher layer
that ends the span it stands for, so a student whose layers were removed by
``LayerPruningModifier`` (every other one kept) follows the teacher's layers 2, 4, 6 with its
layers 1, 2, 3. Neither given: every Conv and Linear module present in both models under the
same name (SparseML's default). Outputs of different shapes are refused: a learned projection
(SparseML's ``project_features``) is not built here, so ``project_features`` is accepted for
recipe compatibility and has no effect on pairs of equal shapes.

For (batch, tokens, features) outputs with the batch's ``attention_mask`` beside them, padding
tokens are left out of the means. The teacher runs once per batch whichever distillation
modifier needs it first (:func:`~sparsify.modifiers.distillation.teacher_outputs`).

No torch at import: the recipe parser builds the class to validate its fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sparsify.errors import RecipeError, did_you_mean
from sparsify.modifiers.base import Event, EventType, Modifier, ModifierState
from sparsify.modifiers.distillation import teacher_outputs

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: Selector of ``student_layer_names``: the outputs of the transformer layer stack.
LAYER_OUTPUTS = "__LAYER_OUTPUTS__"
def span_ends(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer, the teacher layer that ends the span it stands for
    (3 of 6: 1, 3, 5; 6 of 6: 0..5)."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def _first_tensor(output: Any) -> torch.Tensor:
    import torch

    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if hasattr(output, "last_hidden_state"):
        output = output.last_hidden_state
    if not isinstance(output, torch.Tensor):
        raise RecipeError(f"PerLayerDistillationModifier: a distilled layer returned "
                          f"{type(output).__name__}, not a tensor")
    return output


@dataclass(kw_only=True)
class PerLayerDistillationModifier(Modifier):
    """Add ``gain`` x the (normalised) mean squared differences of paired layer outputs."""

    loss_order: ClassVar[int] = 1

    gain: float = 1.5
    normalize: bool = True
    student_layer_names: list[str] | str | None = None
    teacher_layer_names: list[str] | None = None
    project_features: bool = True
    epsilon: float = 1e-6
    #: SparseML writes it into its recipes; accepted and without effect.
    update_frequency: float = -1.0

    def validate(self) -> None:
        for name in ("gain", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
        for name in ("normalize", "project_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        student, teacher = self.student_layer_names, self.teacher_layer_names
        if student == LAYER_OUTPUTS:
            if teacher not in (None, LAYER_OUTPUTS):
                raise ValueError(f"teacher_layer_names: {LAYER_OUTPUTS} pairs the layers "
                                 "itself; remove teacher_layer_names")
            return
        for field_name, names in (("student_layer_names", student),
                                  ("teacher_layer_names", teacher)):
            if names is not None and (not isinstance(names, list) or not names
                                      or not all(isinstance(n, str) for n in names)):
                raise ValueError(f"{field_name}: must be a non-empty list of module names "
                                 f"(or {LAYER_OUTPUTS}), got {names!r}")
        if student is not None and teacher is not None and len(student) != len(teacher):
            raise ValueError(f"teacher_layer_names: {len(teacher)} names for "
                             f"{len(student)} student_layer_names; they are paired in order")

    # --- hooks -------------------------------------------------------------------------------
    def on_initialize(self, state: ModifierState) -> None:
        self._enabled = state.teacher is not None
        self._handles: list[Any] = []
        self._seen: dict[str, Any] = {}
        if not self._enabled:
            logger.warning("PerLayerDistillationModifier disabled: no teacher given "
                           "(--teacher).")
            return
        self._pairs = self._resolve_pairs(state.model, state.teacher)
        logger.info("PerLayerDistillationModifier: %d layer pairs (%s%s), gain %g",
                    len(self._pairs), ", ".join(f"{s} <- {t}" for s, t in self._pairs[:3]),
                    ", ..." if len(self._pairs) > 3 else "", self.gain)
        self._attach(state)

    def on_event(self, state: ModifierState, event: Event) -> Any:
        if not self._enabled or event.type is not EventType.LOSS_CALCULATED:
            return None
        teacher_outputs(state, event)  # fills the teacher half of the cache
        mask = event.inputs.get("attention_mask") if isinstance(event.inputs, dict) else None
        total = None
        for student_name, teacher_name in self._pairs:
            s = self._seen.pop("s:" + student_name, None)
            t = self._seen.pop("t:" + teacher_name, None)
            if s is None or t is None:
                missing = student_name if s is None else teacher_name
                raise RecipeError(
                    f"PerLayerDistillationModifier: layer {missing} did not run in this "
                    "forward pass; name layers the model's forward calls")
            term = self._layer_loss(student_name, teacher_name, s, t, mask)
            total = term if total is None else total + term
        self._seen.clear()
        if total is None:
            return None
        return event.loss + self.gain * total

    def on_end(self, state: ModifierState, event: Event) -> None:
        self._detach()

    def on_finalize(self, state: ModifierState) -> None:
        self._detach()

    # --- the work ----------------------------------------------------------------------------
    def _layer_loss(self, student_name: str, teacher_name: str, s: torch.Tensor,
                    t: torch.Tensor, mask: Any) -> torch.Tensor:
        if s.shape != t.shape:
            raise RecipeError(
                f"PerLayerDistillationModifier: student layer {student_name} gives shape "
                f"{tuple(s.shape)}, teacher layer {teacher_name} {tuple(t.shape)}; outputs "
                "must have the same shape (no learned projection is built): name layers of "
                "equal width")
        s, t = s.float(), t.float()
        if mask is not None and s.dim() == 3 and tuple(mask.shape) == tuple(s.shape[:2]):
            keep = mask.bool()
            s, t = s[keep], t[keep]
        loss = (s - t).square().mean()
        if self.normalize:
            loss = loss / (t.square().mean() + self.epsilon)
        return loss

    def _resolve_pairs(self, model: nn.Module, teacher: nn.Module) -> list[tuple[str, str]]:
        student, given_teacher = self.student_layer_names, self.teacher_layer_names
        if student == LAYER_OUTPUTS:
            from sparsify.modifiers.layer_pruning import find_layer_stack

            try:
                s_path, t_path = find_layer_stack(model), find_layer_stack(teacher)
            except RecipeError as err:
                raise RecipeError(
                    f"PerLayerDistillationModifier: {LAYER_OUTPUTS} pairs the layers of a "
                    f"transformer's layer stack, and this model has none that can be told "
                    f"apart ({type(model).__name__}); name the layers with "
                    "student_layer_names (and teacher_layer_names)") from err
            s_count = len(model.get_submodule(s_path))
            t_count = len(teacher.get_submodule(t_path))
            if s_count > t_count:
                raise RecipeError(f"PerLayerDistillationModifier: the student has {s_count} "
                                  f"layers, the teacher {t_count}; {LAYER_OUTPUTS} needs a "
                                  "teacher at least as deep")
            return [(f"{s_path}.{i}", f"{t_path}.{j}")
                    for i, j in enumerate(span_ends(s_count, t_count))]
        if student is None and given_teacher is None:
            from torch import nn as tnn

            kinds = (tnn.Conv1d, tnn.Conv2d, tnn.Conv3d, tnn.Linear)
            in_teacher = {n for n, m in teacher.named_modules() if isinstance(m, kinds)}
            names = [n for n, m in model.named_modules()
                     if isinstance(m, kinds) and n in in_teacher]
            if not names:
                raise RecipeError("PerLayerDistillationModifier: no Conv or Linear module has "
                                  "the same name in the student and the teacher; give "
                                  "student_layer_names and teacher_layer_names")
            return [(n, n) for n in names]
        student = list(student or given_teacher or [])
        pairs = list(zip(student, list(given_teacher or student)))
        for model_name, net, index in (("student", model, 0), ("teacher", teacher, 1)):
            known = dict(net.named_modules())
            for pair in pairs:
                if pair[index] not in known:
                    field_name = f"{model_name}_layer_names"
                    raise RecipeError(
                        f"PerLayerDistillationModifier.{field_name}: no module "
                        f"'{pair[index]}' in the {model_name}."
                        f"{did_you_mean(pair[index], [n for n in known if n])}")
        return pairs

    def _attach(self, state: ModifierState) -> None:
        def keep(key: str):  # noqa: ANN202 - a forward hook
            def hook(module: Any, inputs: Any, output: Any) -> None:
                self._seen[key] = _first_tensor(output)
            return hook

        for student_name, teacher_name in self._pairs:
            self._handles.append(state.model.get_submodule(student_name)
                                 .register_forward_hook(keep("s:" + student_name)))
            self._handles.append(state.teacher.get_submodule(teacher_name)
                                 .register_forward_hook(keep("t:" + teacher_name)))

    def _detach(self) -> None:
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []
        self._seen = {}
