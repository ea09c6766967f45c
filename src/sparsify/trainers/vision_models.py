"""Image-classification models: from a zoo folder, a checkpoint, torchvision or timm."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import ModelNotFoundError, MissingExtraError, UsageError
from sparsify.plan import ModelChoice

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("model.pth", "model.pt", "checkpoint.pth", "model.pth.tar")


@dataclass
class LoadedModel:
    """A model ready to train, and what is known about where it came from."""

    model: nn.Module
    arch_key: str
    source: str
    pretrained: bool
    head_replaced: bool = False
    recipe_files: list[str] = field(default_factory=list)


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image classification") from None
    return torchvision


def build_arch(arch_key: str, num_classes: int | None = None, weights: str | None = None
               ) -> nn.Module:
    """A torchvision model by builder name (``resnet18``), or ``timm:<name>``.

    Raises:
        UsageError: unknown architecture (with the closest names).
        MissingExtraError: ``timm:`` without timm installed.
    """
    if arch_key.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise MissingExtraError("timm", "vision", f"Model '{arch_key}'") from None
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return timm.create_model(arch_key[5:], pretrained=weights is not None, **kwargs)
    tv = _torchvision()
    names = tv.models.list_models(module=tv.models)
    if arch_key not in names:
        from sparsify.errors import did_you_mean

        raise UsageError(f"Unknown image-classification architecture '{arch_key}'."
                         f"{did_you_mean(arch_key, names)} Valid: torchvision classification "
                         "models (resnet18, resnet50, mobilenet_v2, ...) or timm:<name>.")
    kwargs: dict[str, Any] = {}
    if weights is None and num_classes:
        kwargs["num_classes"] = num_classes
    return tv.models.get_model(arch_key, weights=weights, **kwargs)


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of the model (torchvision's ``fc`` / ``classifier[-1]`` / ``head``)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise UsageError("The model has no nn.Linear classifier head to fine-tune.")
    return last


def replace_head_(model: nn.Module, num_classes: int) -> bool:
    """Replace the classifier head when its output count differs; returns whether it did."""
    name, head = classifier_head(model)
    if head.out_features == num_classes:
        return False
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    logger.info("Classifier head '%s' replaced: %d -> %d classes", name, head.out_features,
                num_classes)
    return True


def _load_checkpoint(path: Path, arch_key: str | None) -> tuple[nn.Module, str]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the user's file
        raise ModelNotFoundError(
            f"Cannot read checkpoint {path}: {exc}",
            hint="Checkpoints are loaded with torch.load(weights_only=True): save a state dict "
                 "(torch.save({'state_dict': model.state_dict(), 'arch_key': 'resnet18'}, f)).",
        ) from None
    if isinstance(data, dict) and "state_dict" in data:
        state = data["state_dict"]
        arch_key = data.get("arch_key") or arch_key
    elif isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        state = data
    else:
        raise ModelNotFoundError(f"{path} holds neither a state dict nor "
                                 "{'state_dict': ..., 'arch_key': ...}.")
    if not arch_key:
        raise UsageError(
            f"{path} does not say which architecture it is (no 'arch_key' in the file).",
            hint='Give it: --train-kwargs \'{"arch_key": "resnet18"}\'')
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head_keys = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    num_classes = state[head_keys[-1]].shape[0] if head_keys else None
    model = build_arch(arch_key, num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelNotFoundError(
            f"{path} does not match torchvision's '{arch_key}': missing {len(missing)} keys "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}).",
            hint="SparseML's own ResNet/MobileNet key layout is not read yet; use a checkpoint "
                 "with torchvision parameter names, or the right arch_key.")
    return model, arch_key


def _find_in_folder(folder: Path) -> Path | None:
    for sub in (folder / "training", folder):
        for name in CHECKPOINT_NAMES:
            if (sub / name).is_file():
                return sub / name
    return None


def load_image_model(choice: ModelChoice, num_classes: int, arch_key: str | None = None
                     ) -> LoadedModel:
    """Load the starting model the plan chose and fit its head to ``num_classes``.

    Raises:
        ModelNotFoundError: nothing could provide the model (every source tried is listed).
    """
    from sparsify.zoo.resolve import resolve_model_path

    path = Path(choice.local_path) if choice.local_path else resolve_model_path(choice.spec)
    if path is not None:
        recipes = []
        if path.is_dir():
            recipes = sorted(str(p) for p in (path / "recipe").glob("recipe*")) \
                if (path / "recipe").is_dir() else []
            checkpoint = _find_in_folder(path)
            if checkpoint is None:
                raise ModelNotFoundError(
                    f"No checkpoint in {path}: looked for training/{{{','.join(CHECKPOINT_NAMES)}}}.")
            path = checkpoint
        model, arch = _load_checkpoint(path, arch_key)
        replaced = replace_head_(model, num_classes)
        return LoadedModel(model, arch, str(path), True, replaced, recipes)

    # A model name, or the catalog's remote source.
    entry = choice.entry
    if entry is not None:
        source = entry.sources[0]
        name, weights = source.name, source.weights
    else:
        name, weights = choice.spec, "DEFAULT"
    try:
        model = build_arch(name, None, weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise ModelNotFoundError(
            f"Could not get the pretrained weights of '{name}' ({weights}): {exc}",
            hint="Sources tried: local path, local zoo, the framework's download. Offline, "
                 "pass a checkpoint file (--model ./model.pth) or register one with its "
                 "stub in the local zoo (SPARSIFY_ZOO_PATH/<stub>/training/model.pth).",
        ) from None
    replaced = replace_head_(model, num_classes)
    return LoadedModel(model, name, f"torchvision:{name} ({weights})", True, replaced)
