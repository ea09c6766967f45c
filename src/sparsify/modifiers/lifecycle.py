"""The modifier lifecycle: owns the modifiers of a recipe and turns training events into hooks.

A trainer calls, per optimizer step (with gradient accumulation, the first two per micro-batch):

    batch_start() -> loss = loss_calculated(loss, inputs, outputs) -> optim_pre_step()
    -> optimizer.step() -> optim_post_step() -> batch_end()

and ``epoch_start()`` / ``epoch_end()`` around each epoch. The lifecycle keeps the clock: the
step counter advances in ``optim_post_step`` and every event carries it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from sparsify.modifiers.base import Event, EventType, Modifier, ModifierState
from sparsify.modifiers.cost import TrainingCost

if TYPE_CHECKING:
    import torch

    from sparsify.recipe.parser import Recipe

logger = logging.getLogger(__name__)


class ModifierLifecycle:
    """Drives a recipe's modifiers through training.

    Args:
        recipe: the parsed recipe.
        model: the model being trained.
        teacher: the distillation teacher (``None`` disables distillation).
        float_modules: module names that must stay in float whatever the recipe selects.
    """

    def __init__(self, recipe: Recipe, model: torch.nn.Module,
                 teacher: torch.nn.Module | None = None,
                 float_modules: list[str] | None = None) -> None:
        self.recipe = recipe
        self.modifiers: list[Modifier] = recipe.build_modifiers()
        self.state = ModifierState(model=model, teacher=teacher,
                                   float_modules=list(float_modules or []))
        self.step = 0
        self.cost = TrainingCost()
        self._step_phase = "fine-tune"
        self._initialized = False
        self._finalized = False
        self._restructured: list[int] = []

    # --- facts for the trainer ---------------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        """Epochs to train: the recipe's largest end/start epoch, rounded up."""
        return max(1, math.ceil(self.recipe.max_epochs - 1e-9))

    @property
    def controls_lr(self) -> bool:
        """Whether the recipe sets the LR (the trainer then uses no scheduler of its own)."""
        return any(m.controls_lr for m in self.modifiers)

    @property
    def qat_active(self) -> bool:
        """Whether quantization-aware training has started (switch AMP / EMA off then)."""
        return self.state.quantized

    @property
    def epoch(self) -> float:
        return Event(EventType.BATCH_START, self.step, self.state.steps_per_epoch).epoch

    def modifiers_of(self, name: str) -> list[Modifier]:
        return [m for m in self.modifiers if type(m).__name__ == name]

    def initialization_order(self) -> list[int]:
        """Indices of the modifiers in the order they initialise (and restructure a restored
        model): recipe order, except that those which change the structure when initialised
        (:attr:`~sparsify.modifiers.base.Modifier.restructures_at_init`: layer removal) come
        first, so that the others (pruning masks) find their parameters on the kept layers.
        Events still reach the modifiers in recipe order."""
        return sorted(range(len(self.modifiers)),
                      key=lambda i: not self.modifiers[i].restructures_at_init)

    # --- lifecycle ---------------------------------------------------------------------------
    def initialize(self, optimizer: torch.optim.Optimizer | None, steps_per_epoch: int,
                   start_step: int = 0) -> None:
        """Attach the optimizer and the epoch length (in optimizer steps, per process).

        Raises:
            RuntimeError: called twice.
            ValueError: ``steps_per_epoch`` < 1.
        """
        if self._initialized:
            raise RuntimeError("ModifierLifecycle.initialize called twice")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.state.optimizer = optimizer
        self.state.steps_per_epoch = steps_per_epoch
        self.step = start_step
        for index in self.initialization_order():
            if not self.modifiers[index].initialized:  # see initialize_structure
                self.modifiers[index].initialize(self.state)
        self._initialized = True

    def initialize_structure(self) -> None:
        """Initialise now the modifiers that change the model's structure when initialised
        (:attr:`~sparsify.modifiers.base.Modifier.restructures_at_init`: layers or channels
        removed), before the trainer builds its optimizer and a distributed wrapper registers
        the parameters, so that both see the parameters training uses. :meth:`initialize`
        then initialises the others. Optional: without it they initialise in
        :meth:`initialize` (and replace the optimizer's references to parameters they
        replace)."""
        for index in self.initialization_order():
            modifier = self.modifiers[index]
            if modifier.restructures_at_init and not modifier.initialized:
                modifier.initialize(self.state)

    def _check_open(self) -> None:
        if not self._initialized:
            raise RuntimeError("ModifierLifecycle: an event came before initialize()")
        if self._finalized:
            raise RuntimeError("ModifierLifecycle: an event came after finalize()")

    def _event(self, kind: EventType, **data: Any) -> list[Any]:
        self._check_open()
        event = Event(kind, self.step, self.state.steps_per_epoch, **data)
        return [modifier.update(self.state, event) for modifier in self.modifiers]

    def batch_start(self) -> None:
        self._event(EventType.BATCH_START)
        self._step_phase = self.phase()  # what this step trains under

    def loss_calculated(self, loss: Any, inputs: Any = None, outputs: Any = None) -> Any:
        """Returns the loss to back-propagate. The modifiers see it in their ``loss_order``
        (a distillation modifier replaces the task loss, a per-layer one then adds to that),
        each given the loss the previous one returned."""
        self._check_open()
        for modifier in sorted(self.modifiers, key=lambda m: m.loss_order):
            event = Event(EventType.LOSS_CALCULATED, self.step, self.state.steps_per_epoch,
                          loss=loss, inputs=inputs, outputs=outputs)
            result = modifier.update(self.state, event)
            if result is not None:
                loss = result
        return loss

    def optim_pre_step(self) -> None:
        self._event(EventType.OPTIM_PRE_STEP)

    def optim_post_step(self) -> None:
        """After ``optimizer.step()``: the clock advances, then masks etc. are re-applied."""
        self.step += 1
        self._event(EventType.OPTIM_POST_STEP)

    def batch_end(self) -> None:
        self._event(EventType.BATCH_END)
        self.cost.step(self._step_phase)

    def epoch_start(self) -> None:
        self._event(EventType.EPOCH_START)
        self.cost.start()

    def phase(self) -> str:
        """The training phase the recipe is in now (:mod:`sparsify.modifiers.cost`)."""
        if self.qat_active:
            return "qat"
        pruners = [m for m in self.modifiers if m.cost_phase == "pruning"]
        if any(m.started and not m.ended for m in pruners):
            return "pruning"
        return "recovery" if any(m.ended for m in pruners) else "fine-tune"

    def epoch_end(self) -> None:
        self._event(EventType.EPOCH_END)

    def finalize(self) -> None:
        """After training: final mask application etc. Safe to call once."""
        if self._finalized:
            raise RuntimeError("ModifierLifecycle.finalize called twice")
        for modifier in self.modifiers:
            modifier.finalize(self.state)
        self._finalized = True

    def started_modifiers(self) -> list[int]:
        """Indices (in recipe order) of the modifiers that have started: a checkpoint records
        them so :meth:`restore_structure` can rebuild the trained model's structure."""
        return [i for i, m in enumerate(self.modifiers) if m.started]

    def structure_record(self) -> list[dict[str, Any]]:
        """Per modifier (recipe order), how it changed the structure (the channels removed:
        :meth:`~sparsify.modifiers.base.Modifier.structure_record`); a checkpoint keeps it
        beside :meth:`started_modifiers` for :meth:`restore_structure`."""
        return [m.structure_record() for m in self.modifiers]

    def restore_structure(self, started: list[int],
                          structure: list[dict[str, Any]] | None = None) -> None:
        """On a fresh copy of the starting model, redo the structural changes (QAT modules) of
        the modifiers that had started when a checkpoint was written, in
        :meth:`initialization_order` (layer and channel removal first, then recipe order), so
        the checkpoint's state dict loads into the model; then :meth:`finalize_restored`.

        ``structure``: the checkpoint's :meth:`structure_record`; the modifiers redo what it
        records (the channels removed then) instead of choosing again from this model's weights.
        """
        if structure is not None and len(structure) == len(self.modifiers):
            for modifier, record in zip(self.modifiers, structure):
                if record:
                    modifier.load_structure_record(record)
        # only the modifiers that change the structure; the others' results (masked weights,
        # the learning rate reached) are in the checkpoint itself
        chosen = set(started)
        self._restructured = [i for i in self.initialization_order()
                              if i in chosen and self.modifiers[i].changes_structure]
        for index in self._restructured:
            self.modifiers[index].restructure(self.state)

    def finalize_restored(self) -> None:
        """After a checkpoint loaded into a restored model: the end-of-training steps of the
        restructured modifiers (QAT's conv-bn folding), as :meth:`finalize` does after training.
        The others have nothing to finish: the checkpoint holds their result (masked weights)."""
        for index in self._restructured:
            self.modifiers[index].finalize(self.state)
        self._finalized = True

    def resume_state(self) -> dict[str, Any]:
        """The lifecycle's part of a resumable checkpoint: the step and each modifier's
        :meth:`~sparsify.modifiers.base.Modifier.resume_state` (QAT's observer and BatchNorm
        freezes are not kept: they are re-applied at the first event after resuming)."""
        return {"step": self.step, "modifiers": [m.resume_state() for m in self.modifiers],
                "cost": self.cost.state()}

    def load_resume_state(self, saved: dict[str, Any]) -> None:
        """After :meth:`initialize` on a fresh copy of the starting model, before the
        checkpoint's state dict loads: the step, the modifiers' state, and the structure of
        those that had started (QAT modules), so the state dict fits.

        Raises:
            ValueError: the checkpoint was written under a recipe with other modifiers.
        """
        if len(saved["modifiers"]) != len(self.modifiers):
            raise ValueError(f"the checkpoint has {len(saved['modifiers'])} modifiers, the "
                             f"recipe {len(self.modifiers)}")
        self.step = int(saved["step"])
        self.cost.load_state(saved.get("cost", {}))
        for index in self.initialization_order():
            self.modifiers[index].load_resume_state(self.state, saved["modifiers"][index])

    def pruning_policy(self) -> list[str]:
        """The ``params`` selectors of the modifiers that hold masks (``__COMPUTE_LAYERS__``,
        ``__ALL_PRUNABLE__``, regexes...), for the report."""
        out: list[str] = []
        for modifier in self.modifiers:
            if hasattr(modifier, "masked_parameter_names"):
                params = getattr(modifier, "params", None)
                for item in params if isinstance(params, list) else [params]:
                    if isinstance(item, str) and item not in out:
                        out.append(item)
        return out

    def masked_parameter_names(self) -> list[str]:
        names: list[str] = []
        for modifier in self.modifiers:
            if hasattr(modifier, "masked_parameter_names"):
                names.extend(n for n in modifier.masked_parameter_names() if n not in names)
        return names
