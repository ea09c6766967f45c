"""Structured shrinking by width: ``ChannelPruningModifier`` removes conv output channels.

A name of ours (SparseML's ``StructuredPruningModifier`` zeroed filters under masks and its
``LayerThinningModifier`` removed them later from a hand-written dependency map; neither took a
share of channels to keep). Once, at initialisation, every group of coupled channels of an
image-classification CNN (a conv's filters with its BatchNorm and the next layers' input
channels; a residual stream with every conv that adds into it; a depthwise conv with the
convs around it) keeps ``keep_fraction`` of its channels, those of the largest filter
magnitude, and the others are removed for real: the Conv, BatchNorm and Linear tensors get
smaller. The stem conv's output, grouped (non-depthwise) convs and the classifier's classes keep
their size. The coupling comes from torch-pruning's dependency graph (the ``prune`` extra).

The channels removed are recorded (``structure_fields``): a checkpoint keeps the record, and a
fresh starting model is given the same structure from it, not from its own magnitudes (the
student of ``--teacher auto`` starts from the teacher's weights, which rank channels
differently).

No torch at import: the recipe parser builds the class to validate its fields.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsify.modifiers.base import ModifierState
from sparsify.modifiers.structure import StructureModifier

logger = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2")


def _torch_pruning_installed() -> bool:
    """Whether torch-pruning can be imported (looked up, not imported: no torch here)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch_pruning") is not None
    except (ImportError, ValueError):  # a module entry set to None: blocked
        return False


@dataclass(kw_only=True)
class ChannelPruningModifier(StructureModifier):
    """Remove output channels of an image-classification CNN's convs, once, before training.

    ``keep_fraction`` (in (0, 1]; 1.0 does nothing and looks at no model) of the channels of
    every prunable group are kept, ranked by the ``importance`` norm (``l1`` or ``l2``) of their
    filters (each conv's norms divided by their mean, summed over the convs of the group), and
    rounded to a multiple of ``channel_multiple`` (CPU kernels work on blocks of 8 or 16
    channels). ``ignore`` names convs (module names or ``re:`` patterns) whose output channels
    are kept, besides the stem conv and the classifier.
    """

    keep_fraction: float
    importance: str = "l1"
    channel_multiple: int = 8
    ignore: list[str] | None = None

    resume_fields: ClassVar[tuple[str, ...]] = ("_removed",)
    structure_fields: ClassVar[tuple[str, ...]] = ("_removed",)

    def validate(self) -> None:
        value = self.keep_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError("keep_fraction: must be a number in (0, 1] (the share of each conv "
                             f"group's output channels kept; 1.0 keeps them all), got {value!r}")
        self.keep_fraction = float(value)
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance: '{self.importance}' is not one of "
                             f"{', '.join(IMPORTANCES)} (the filter norm channels are ranked by)")
        multiple = self.channel_multiple
        if isinstance(multiple, bool) or not isinstance(multiple, int) or not 1 <= multiple <= 64:
            raise ValueError("channel_multiple: must be an integer from 1 to 64 (kept channels "
                             f"are rounded to a multiple of it), got {multiple!r}")
        if self.ignore is not None:
            items = self.ignore
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ValueError("ignore: must be a list of module names or 're:<regex>' "
                                 f"patterns, got {items!r}")
            for item in items:
                if item.startswith("re:"):
                    try:
                        re.compile(item[3:])
                    except re.error as exc:
                        raise ValueError(f"ignore: bad regex {item!r}: {exc}") from None
        self.check_once_before_training("channels")
        self._removed: dict[str, Any] | None = None
        if self.keep_fraction < 1 and not _torch_pruning_installed():
            # said when the recipe is read (before a dense teacher trains), not at the student
            from sparsify.errors import MissingExtraError

            raise MissingExtraError("torch-pruning", "prune",
                                    "ChannelPruningModifier (keep_fraction below 1)")

    # --- hooks -------------------------------------------------------------------------------
    def _shrink(self, state: ModifierState) -> None:
        if self.keep_fraction >= 1.0:
            return
        from sparsify.modifiers.channel_shrink import replay_record, shrink_channels_

        model = state.model
        if self._removed:
            changed = replay_record(model, self._removed, state.optimizer)
        else:
            if self.started:  # a restored checkpoint written without a record
                logger.warning("ChannelPruningModifier: the checkpoint records no channels "
                               "removed; choosing them again from this model's weights (the "
                               "shapes are the same)")
            self._removed = shrink_channels_(
                model, self.keep_fraction, p=1 if self.importance == "l1" else 2,
                multiple=self.channel_multiple, ignore=self.ignore or [],
                optimizer=state.optimizer)
            changed = bool(self._removed["groups"])
        if changed:
            state.structure_version += 1
