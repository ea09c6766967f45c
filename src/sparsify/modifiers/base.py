"""The modifier base class, events and the state a modifier acts on (no torch at import)."""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class EventType(enum.Enum):
    """Training events, in the order a batch produces them."""

    BATCH_START = "batch_start"
    LOSS_CALCULATED = "loss_calculated"
    OPTIM_PRE_STEP = "optim_pre_step"
    OPTIM_POST_STEP = "optim_post_step"
    BATCH_END = "batch_end"
    EPOCH_START = "epoch_start"
    EPOCH_END = "epoch_end"


@dataclass(frozen=True)
class Event:
    """One event with its own clock.

    ``step`` counts optimizer steps taken so far (after gradient accumulation, per process), and
    ``epoch = step // steps_per_epoch + (step % steps_per_epoch) / steps_per_epoch``.
    """

    type: EventType
    step: int
    steps_per_epoch: int
    loss: Any = None
    inputs: Any = None
    outputs: Any = None

    @property
    def epoch(self) -> float:
        return epoch_at(self.step, self.steps_per_epoch)


def epoch_at(step: int, steps_per_epoch: int) -> float:
    """Fractional epoch after ``step`` optimizer steps (SparseML's formula)."""
    return step // steps_per_epoch + (step % steps_per_epoch) / steps_per_epoch


@dataclass
class ModifierState:
    """What modifiers act on; owned by the lifecycle, passed to every hook."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    teacher: torch.nn.Module | None = None
    steps_per_epoch: int = 1
    #: Incremented when a modifier changes the module structure (QAT, conv-bn folding), so that
    #: modifiers holding tensor references look them up again.
    structure_version: int = 0
    #: Set by a quantization modifier once quantization-aware training runs (trainers switch
    #: mixed precision and EMA off then).
    quantized: bool = False
    #: Modules the trainer knows must stay in float whatever the recipe selects (fixed maths
    #: such as YOLO's DFL box decoding): quantization modifiers leave them out.
    float_modules: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Modifier:
    """Base of every modifier: scheduling and guards; subclasses own only their hooks.

    Active from ``start_epoch`` (inclusive) to ``end_epoch`` (exclusive); ``-1`` means from the
    start / never ends.
    """

    start_epoch: float = -1.0
    end_epoch: float = -1.0

    #: Fields holding epoch points (shifted when a stage starts later).
    epoch_fields: ClassVar[tuple[str, ...]] = ("start_epoch", "end_epoch")
    #: Whether this modifier sets the learning rate (the trainer's scheduler is switched off).
    controls_lr: ClassVar[bool] = False
    #: Whether the modifier runs until training ends whatever ``end_epoch`` says.
    until_end: ClassVar[bool] = False
    #: Private attributes that change during training and that the model's and optimizer's
    #: state dicts do not hold: a resumable checkpoint keeps them (:meth:`resume_state`).
    resume_fields: ClassVar[tuple[str, ...]] = ()
    #: Private attributes that say how the modifier changed the model's structure (the channels
    #: it removed): every checkpoint keeps them (:meth:`structure_record`), and a fresh model is
    #: given the same structure from them (:meth:`load_structure_record` before
    #: :meth:`restructure`), not from its own weights.
    structure_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether the modifier changes the model's structure when it is initialised (removes
    #: layers): the lifecycle initialises such modifiers, and restructures a restored model with
    #: them, before the others, so that those look up their parameters on the structure that
    #: training uses.
    restructures_at_init: ClassVar[bool] = False
    #: The training phase this modifier's active window counts as in the training cost
    #: (``pruning`` while masks move, ``qat``); see :mod:`sparsify.modifiers.cost`.
    cost_phase: ClassVar[str | None] = None
    #: Order among the modifiers that change the loss: those that replace it (output
    #: distillation, 0) see the task loss, then those that add a term to it (1).
    loss_order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        for name in self.epoch_fields:
            value = getattr(self, name, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: must be a number, got {value!r}")
            setattr(self, name, float(value))
        if self.start_epoch < -1 or (self.end_epoch < -1):
            raise ValueError("start_epoch/end_epoch: must be >= 0 or -1")
        if self.end_epoch != -1 and self.start_epoch > self.end_epoch:
            raise ValueError(f"end_epoch: {self.end_epoch} is before start_epoch "
                             f"{self.start_epoch}")
        self._initialized = False
        self._started = False
        self._ended = False
        self._finalized = False
        self.validate()

    # --- to be overridden --------------------------------------------------------------------
    def validate(self) -> None:
        """Check field values; raise ``ValueError('field: problem')``."""

    def on_initialize(self, state: ModifierState) -> None:
        """Once, before training starts (after the optimizer exists)."""

    def on_start(self, state: ModifierState, event: Event) -> None:
        """Once, at the first event at or after ``start_epoch``."""

    def on_event(self, state: ModifierState, event: Event) -> Any:
        """Every event while active; the return value of ``LOSS_CALCULATED`` replaces the loss."""
        return None

    def on_end(self, state: ModifierState, event: Event) -> None:
        """Once, at the first event at or after ``end_epoch``."""

    def on_finalize(self, state: ModifierState) -> None:
        """Once, after training (before export)."""

    def on_restructure(self, state: ModifierState) -> None:
        """Give a fresh model the module structure this modifier gave the trained one when it
        started (QAT modules), so that a checkpoint taken after its start loads into it."""

    def on_resume(self, state: ModifierState) -> None:
        """Resuming a run after this modifier started: re-apply to the fresh model what its
        state dict does not hold (by default, the structure of :meth:`on_restructure`)."""
        self.on_restructure(state)

    # --- scheduling (owned by the base) ------------------------------------------------------
    @property
    def changes_structure(self) -> bool:
        """Whether the modifier changes the model's modules (it overrides on_restructure)."""
        return type(self).on_restructure is not Modifier.on_restructure

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    def should_start(self, epoch: float) -> bool:
        return not self._started and (self.start_epoch == -1 or epoch >= self.start_epoch)

    def should_end(self, epoch: float) -> bool:
        return (self._started and not self._ended and not self.until_end
                and self.end_epoch != -1 and epoch >= self.end_epoch)

    def last_epoch(self) -> float:
        """The epoch this modifier needs training to reach (for ``max_epochs``)."""
        return max(self.start_epoch, self.end_epoch, 0.0)

    def initialize(self, state: ModifierState) -> None:
        if self._initialized:
            raise RuntimeError(f"{self.name} initialised twice")
        self._initialized = True
        self.on_initialize(state)

    def update(self, state: ModifierState, event: Event) -> Any:
        if not self._initialized or self._finalized:
            raise RuntimeError(f"{self.name} got an event before initialize or after finalize")
        epoch = event.epoch
        if self.should_start(epoch):
            self._started = True
            logger.debug("%s starts at epoch %.4f", self.name, epoch)
            self.on_start(state, event)
        result = None
        if self._started and not self._ended:
            result = self.on_event(state, event)
        if self.should_end(epoch):
            self._ended = True
            logger.debug("%s ends at epoch %.4f", self.name, epoch)
            self.on_end(state, event)
        return result

    def restructure(self, state: ModifierState) -> None:
        """:meth:`on_restructure`, for a checkpoint taken after this modifier started."""
        self._started = True
        self.on_restructure(state)

    def resume_state(self) -> dict[str, Any]:
        """What a resumable checkpoint keeps of this modifier: started / ended and its
        :attr:`resume_fields` (masks, schedule positions)."""
        names = ("_started", "_ended", *self.resume_fields)
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

    def load_resume_state(self, state: ModifierState, saved: dict[str, Any]) -> None:
        """After :meth:`initialize` on a fresh model: take back :meth:`resume_state`, then
        :meth:`on_resume` when the modifier had started (before the state dict loads)."""
        for name, value in saved.items():
            setattr(self, name, value)
        if self._started:
            self.on_resume(state)

    def structure_record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the structure this modifier gave the model: its
        :attr:`structure_fields` (plain values)."""
        return {name: getattr(self, name) for name in self.structure_fields
                if getattr(self, name, None) is not None}

    def load_structure_record(self, record: dict[str, Any]) -> None:
        """Take back :meth:`structure_record` (before :meth:`restructure` on a fresh model)."""
        for name in self.structure_fields:
            if name in record:
                setattr(self, name, record[name])

    def finalize(self, state: ModifierState) -> None:
        if self._finalized:
            raise RuntimeError(f"{self.name} finalised twice")
        self._finalized = True
        self.on_finalize(state)

    # --- serialisation -----------------------------------------------------------------------
    def to_args(self) -> dict[str, Any]:
        """The recipe fields of this modifier (private state excluded)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def resolve_param_groups(optimizer: Any, param_groups: list[int] | None) -> list[dict]:
    """The optimizer's parameter groups selected by index (all when ``None``)."""
    groups = optimizer.param_groups
    if param_groups is None:
        return list(groups)
    return [groups[i] for i in param_groups]
