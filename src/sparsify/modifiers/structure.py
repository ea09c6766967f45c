"""What the modifiers that remove structure once, before training, share (layers, conv
channels, FFN channels): initialised before the others, done once per model, and their
``start_epoch`` / ``end_epoch`` checks. No torch at import."""

from __future__ import annotations

import weakref
from typing import ClassVar

from sparsify.modifiers.base import Modifier, ModifierState


class StructureModifier(Modifier):
    """Base of a modifier whose :meth:`_shrink` changes the model's shapes, once."""

    until_end: ClassVar[bool] = True
    restructures_at_init: ClassVar[bool] = True

    def check_once_before_training(self, removed: str) -> None:
        """``start_epoch`` -1 or 0 and ``end_epoch`` -1; ``removed`` names what goes
        (``"layers"``, ``"channels"``) in the messages."""
        if self.start_epoch not in (-1.0, 0.0):
            raise ValueError(f"start_epoch: {removed} are removed once, before training: -1 or "
                             f"0, got {self.start_epoch:g}")
        if self.end_epoch != -1:
            raise ValueError(f"end_epoch: removed {removed} stay removed; remove end_epoch (or "
                             "set it to -1)")

    def on_initialize(self, state: ModifierState) -> None:
        self._applied = weakref.ref(state.model)
        self._shrink(state)

    def on_restructure(self, state: ModifierState) -> None:
        # resuming calls this after on_initialize has shrunk the same fresh model: only once
        applied = getattr(self, "_applied", None)
        if applied is None or applied() is not state.model:
            self._applied = weakref.ref(state.model)
            self._shrink(state)

    def _shrink(self, state: ModifierState) -> None:
        raise NotImplementedError
