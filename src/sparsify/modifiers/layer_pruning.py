"""Structured shrinking by depth: ``LayerPruningModifier`` removes whole transformer layers.

SparseML's name and ``layers`` field (module names to remove, such as ``bert.encoder.layer.3``),
plus ``keep_fraction``: the share of the model's layer stack kept, evenly spaced from the first
layer (DistilBERT and oBERT initialised their shallower students that way: every other layer of
BERT-base for 6 layers). The layers go once, before training, and before the other modifiers
look up their parameters (``restructures_at_init``), so pruning masks exist only on kept layers.

A checkpoint of the shrunk model is restored into a fresh full-depth model by removing the same
layers again (``on_restructure``, through ``ModifierLifecycle.restore_structure`` and resume).
No torch at import: the recipe parser builds the class to validate its fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsify.errors import RecipeError, did_you_mean
from sparsify.modifiers.base import ModifierState
from sparsify.modifiers.structure import StructureModifier

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

#: Attribute names of a transformer's layer stack (an ``nn.ModuleList``): BERT-likes
#: ``encoder.layer``, Llama-likes ``layers``, GPT-2 ``h``, DistilBERT ``transformer.layer``,
#: T5 ``block``.
STACK_NAMES = ("layer", "layers", "h", "block", "blocks")
#: Config fields holding the number of layers (``num_hidden_layers`` is an alias of the others
#: in most transformers configs).
COUNT_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
STACK_HELP = ("an nn.ModuleList of transformer layers named " + ", ".join(STACK_NAMES)
              + " (such as bert.encoder.layer)")


def kept_count(total: int, keep_fraction: float) -> int:
    """Layers kept of ``total``: ``total * keep_fraction`` rounded half up, at least one
    (12 layers: 0.5 -> 6, 1/3 -> 4; 6 layers: 0.5 -> 3, 1/3 -> 2)."""
    return max(1, min(total, int(total * keep_fraction + 0.5 + 1e-9)))


def kept_indices(total: int, keep_fraction: float) -> list[int]:
    """Indices kept, evenly spaced from the first layer (12 -> 6: 0, 2, 4, 6, 8, 10)."""
    count = kept_count(total, keep_fraction)
    return [i * total // count for i in range(count)]


def _problem(field_name: str, text: str) -> RecipeError:
    return RecipeError(f"LayerPruningModifier.{field_name}: {text}")


@dataclass(kw_only=True)
class LayerPruningModifier(StructureModifier):
    """Remove whole layers from the model's layer stack, once, before training.

    Give exactly one of ``layers`` (module names, each an element of an ``nn.ModuleList``) or
    ``keep_fraction`` (in (0, 1]; 1.0 keeps every layer and does nothing). The model's config
    (``num_hidden_layers`` / ``n_layer``) follows the new depth.
    """

    layers: list[str] | None = None
    keep_fraction: float | None = None
    #: SparseML writes it into its recipes; accepted and without effect (the layers go once).
    update_frequency: float = -1.0


    def validate(self) -> None:
        if self.layers is not None and self.keep_fraction is not None:
            raise ValueError("keep_fraction: give either layers (module names to remove) or "
                             "keep_fraction (the share of the layers kept), not both")
        if self.layers is None and self.keep_fraction is None:
            raise ValueError("keep_fraction: missing; give keep_fraction (a number in (0, 1], "
                             "the share of the encoder layers kept) or layers (a list of module "
                             "names to remove, e.g. bert.encoder.layer.3)")
        if self.layers is not None:
            layers = self.layers
            if (not isinstance(layers, list) or not layers
                    or not all(isinstance(n, str) and n.strip() for n in layers)):
                raise ValueError("layers: must be a non-empty list of module names such as "
                                 f"bert.encoder.layer.3, got {layers!r}")
            repeated = sorted({n for n in layers if layers.count(n) > 1})
            if repeated:
                raise ValueError(f"layers: {', '.join(repeated)} named more than once")
        else:
            value = self.keep_fraction
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 < value <= 1):
                raise ValueError("keep_fraction: must be a number in (0, 1] (the share of the "
                                 f"encoder layers kept; 1.0 keeps them all), got {value!r}")
            self.keep_fraction = float(value)
        self.check_once_before_training("layers")
        if isinstance(self.update_frequency, bool) or not isinstance(
                self.update_frequency, (int, float)):
            raise ValueError(f"update_frequency: must be a number, got {self.update_frequency!r}")

    # --- hooks -------------------------------------------------------------------------------
    # --- the work ----------------------------------------------------------------------------
    def removals(self, model: nn.Module) -> dict[str, list[int]]:
        """``{stack module name: indices to remove}`` for ``model`` (empty: nothing to do).

        Raises:
            RecipeError: no layer stack (a CNN), several stacks for ``keep_fraction``, a name in
                ``layers`` that is not a layer, or every layer of a stack removed.
        """
        if self.keep_fraction is not None:
            if self.keep_fraction >= 1.0:
                return {}
            path = find_layer_stack(model)
            total = len(model.get_submodule(path))
            keep = set(kept_indices(total, self.keep_fraction))
            return {path: [i for i in range(total) if i not in keep]}
        return self._named_removals(model)

    def _named_removals(self, model: nn.Module) -> dict[str, list[int]]:
        from torch import nn

        stacks = {name: m for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
        out: dict[str, list[int]] = {}
        unknown = []
        for name in self.layers or []:
            parent, _, index = name.strip().rpartition(".")
            stack = stacks.get(parent)
            if stack is None or not index.isdigit() or int(index) >= len(stack):
                unknown.append(name)
            else:
                out.setdefault(parent, []).append(int(index))
        if unknown:
            valid = [f"{n}.0 .. {n}.{len(m) - 1}" for n, m in stacks.items() if len(m)]
            if not valid:
                raise _problem("layers", f"the model ({type(model).__name__}) has no stack of "
                               f"layers ({STACK_HELP}) to remove {', '.join(unknown)} from; "
                               "layer pruning applies to transformer models")
            candidates = [f"{n}.{i}" for n, m in stacks.items() for i in range(len(m))]
            raise _problem("layers", f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'}"
                           f" not a layer of the model.{did_you_mean(unknown[0], candidates)} "
                           f"Valid: {'; '.join(valid)}")
        for parent, indices in out.items():
            if len(set(indices)) >= len(stacks[parent]):
                raise _problem("layers", f"removes every layer of {parent}; keep at least one")
        return {parent: sorted(set(indices)) for parent, indices in out.items()}

    def _shrink(self, state: ModifierState) -> None:
        model = state.model
        plan = self.removals(model)
        for path, drop in plan.items():
            remove_layers_(model, path, drop)
        if plan:
            state.structure_version += 1


def find_layer_stack(model: nn.Module, owner: str = "LayerPruningModifier",
                     purpose: str = "layer pruning") -> str:
    """The module name of the model's (encoder) layer stack: an ``nn.ModuleList`` named as in
    :data:`STACK_NAMES` whose elements share one class; when several, the one as long as the
    config's layer count, then the one inside an ``encoder``.

    Raises:
        RecipeError: none (a CNN) or several that these rules do not tell apart, naming
            ``owner``'s ``keep_fraction`` field and ``purpose``.
    """
    from torch import nn

    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name.rpartition(".")[2] in STACK_NAMES
             and len(m) > 0 and len({type(c) for c in m}) == 1]
    count = config_layer_count(model)
    if len(found) > 1 and count is not None:
        found = [f for f in found if len(f[1]) == count] or found
    if len(found) > 1:
        found = [f for f in found if "encoder" in f[0].split(".")] or found
    if not found:
        raise RecipeError(f"{owner}.keep_fraction: the model ({type(model).__name__}) has no "
                          f"stack of transformer layers ({STACK_HELP}); {purpose} applies to "
                          "transformer models. Remove the modifier, or set keep_fraction to 1.0")
    if len(found) > 1:
        names = ", ".join(f"{n} ({len(m)})" for n, m in found)
        advice = ("name the layers to remove with the layers field instead"
                  if owner == "LayerPruningModifier" else "it applies to one stack only")
        raise RecipeError(f"{owner}.keep_fraction: the model has several layer stacks "
                          f"({names}); {advice}")
    return found[0][0]


def config_layer_count(model: nn.Module) -> int | None:
    """The model config's number of layers (``num_hidden_layers`` / ``n_layer``), if any."""
    config = getattr(model, "config", None)
    for name in COUNT_FIELDS:
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def remove_layers_(model: nn.Module, path: str, drop: list[int]) -> None:
    """Remove the layers ``drop`` of the ``nn.ModuleList`` at ``path`` in place.

    The kept layers are renumbered (``encoder.layer.2`` becomes ``encoder.layer.1``), as are
    their ``layer_idx`` attributes (cache slots of decoder attention); the config's layer count
    (and per-layer ``layer_types``) follows.

    An optimizer built before keeps the removed parameters in its groups: they get no gradient,
    so no step (AdamW skips them, weight decay included), and the groups keep the sizes a
    resumed run's fresh optimizer has when the Trainer loads the saved optimizer state into it
    before the lifecycle initialises.
    """
    stack = model.get_submodule(path)
    total = len(stack)
    gone = set(drop)
    kept = [i for i in range(total) if i not in gone]
    for i in sorted(gone, reverse=True):
        del stack[i]  # ModuleList renumbers the rest
    for new, old in enumerate(kept):
        for module in stack[new].modules():
            if getattr(module, "layer_idx", None) == old and not isinstance(
                    module.layer_idx, bool):
                module.layer_idx = new
    _update_config(model, total, kept)
    logger.info("LayerPruningModifier: %s keeps layers %s of %d (%d -> %d layers)", path,
                ", ".join(map(str, kept)), total, total, len(kept))


def _update_config(model: nn.Module, total: int, kept: list[int]) -> None:
    config = getattr(model, "config", None)
    if config is None or config_layer_count(model) != total:
        return  # not the stack the config counts
    for name in COUNT_FIELDS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, len(kept))  # an alias sets the field it stands for
            break
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in kept]
