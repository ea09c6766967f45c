"""Ultralytics YOLO models for a run: loading a checkpoint, YAML or weight name for the data's
classes, and what QAT and pruning need around them (per-block quantized SiLUs, the DFL's fixed
weights turned into a buffer, masks copied to the EMA)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import ModelNotFoundError, UsageError
from sparsify.quantization import QATSiLU, is_qat_prepared

logger = logging.getLogger(__name__)

_CHECKPOINT_NAMES = ("model.pt", "best.pt", "last.pt", "weights/best.pt", "weights/last.pt")


# --------------------------------------------------------------------------------------------
# QAT for Ultralytics' Conv blocks
# --------------------------------------------------------------------------------------------


def quantize_conv_activations_(model: nn.Module, averaging_constant: float = 0.01) -> int:
    """Give every Ultralytics ``Conv`` whose conv is quantized its own :class:`QATSiLU`.

    Ultralytics shares one ``nn.SiLU`` instance among all its ``Conv`` blocks, so the activation
    is replaced per block (a shared quantizer would mix the ranges of every layer).

    Returns:
        The number of blocks changed.
    """
    device = next(model.parameters()).device
    n = 0
    for module in model.modules():
        conv, act = getattr(module, "conv", None), getattr(module, "act", None)
        if (type(act) is nn.SiLU and isinstance(conv, nn.Conv2d) and is_qat_prepared(conv)):
            module.act = QATSiLU().to(device)
            n += 1
    return n


def freeze_dfl_(model: nn.Module) -> list[str]:
    """Turn the DFL head's fixed integral weights (0, 1, ..., reg_max - 1) into a buffer.

    The state-dict key stays ``...dfl.conv.weight``; as a buffer it is not selected by
    ``__ALL_PRUNABLE__`` (pruning it would break box decoding), not trained and not counted.

    Returns:
        The names of the DFL modules (for the quantization ``ignore`` list).
    """
    names = []
    for name, module in model.named_modules():
        if type(module).__name__ == "DFL":
            conv = module.conv
            if isinstance(conv.weight, nn.Parameter):
                weight = conv.weight.detach().clone()
                del conv.weight
                conv.register_buffer("weight", weight)
            names.append(name)
    return names


@torch.no_grad()
def mask_like_(target: nn.Module, source: nn.Module, names: list[str]) -> None:
    """Zero the entries of ``target``'s parameters ``names`` where ``source``'s are zero."""
    mine = dict(target.named_parameters())
    theirs = dict(source.named_parameters())
    for name in names:
        if name in mine and name in theirs and mine[name] is not theirs[name]:
            mine[name].mul_((theirs[name] != 0).to(mine[name].dtype))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedYolo:
    model: nn.Module
    architecture: str
    source: str


def _model_class(task: str) -> Any:
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    return SegmentationModel if task == "segment" else DetectionModel


def _check_task(found: str, task: str, what: str) -> None:
    if found != task:
        kind = {"detect": "object_detection", "segment": "segmentation"}
        raise UsageError(
            f"{what} is a YOLO '{found}' model, but this run is {kind.get(task, task)}.",
            hint="Use a -seg model (yolov8n-seg.pt, yolov8n-seg.yaml) for segmentation and a "
                 "plain one (yolov8n.pt) for object detection.")


def _find_checkpoint(folder: Path) -> Path | None:
    for sub in (folder / "training", folder):
        for name in _CHECKPOINT_NAMES:
            if (sub / name).is_file():
                return sub / name
    found = sorted(folder.rglob("*.pt"))
    return found[0] if found else None


def load_yolo_model(choice: Any, task: str, num_classes: int) -> LoadedYolo:
    """The starting model for ``task`` with a head for ``num_classes``.

    ``choice`` (a :class:`sparsify.plan.ModelChoice`) may name a local ``.pt`` checkpoint, a
    model folder (local zoo), an Ultralytics model YAML (``yolov8n.yaml``: built from scratch,
    offline) or Ultralytics weights (``yolov8n.pt``: downloaded by Ultralytics when online).
    Weights whose shapes match are transferred into a model built for the run's classes, so a
    checkpoint's zeros (its sparsity) are kept.

    Raises:
        ModelNotFoundError: nothing could provide the model.
        UsageError: the model is for the other task (detection vs segmentation).
    """
    from ultralytics.nn.tasks import guess_model_task, load_checkpoint

    cls = _model_class(task)
    spec = choice.spec
    if choice.local_path:
        path: Path | None = Path(choice.local_path)
    elif choice.entry is not None and choice.entry.sources:
        spec = choice.entry.sources[0].name
        path = None
    elif spec.startswith("zoo:"):
        from sparsify.zoo.resolve import resolve_model_path

        path = resolve_model_path(spec)
    else:
        path = Path(spec).expanduser() if Path(spec).expanduser().exists() else None

    if path is not None and path.is_dir():
        found = _find_checkpoint(path)
        if found is None:
            raise ModelNotFoundError(f"No YOLO checkpoint (*.pt) in {path}.",
                                     hint="Put the Ultralytics checkpoint at "
                                          f"{path}/training/model.pt.")
        path = found
    if path is not None and path.suffix.lower() in (".yaml", ".yml"):
        _check_task(guess_model_task(str(path)), task, str(path))
        model = cls(str(path), nc=num_classes, ch=3, verbose=False)
        return LoadedYolo(model, path.stem, f"config {path} (random init)")
    if path is None and spec.lower().endswith((".yaml", ".yml")):
        try:
            _check_task(guess_model_task(spec), task, spec)
            model = cls(spec, nc=num_classes, ch=3, verbose=False)
        except (FileNotFoundError, OSError) as exc:
            raise ModelNotFoundError(f"Ultralytics has no model config '{spec}': {exc}",
                                     hint="Model configs are named like yolov8n.yaml, "
                                          "yolov8s-seg.yaml, yolo11n.yaml.") from None
        return LoadedYolo(model, Path(spec).stem, f"Ultralytics config {spec} (random init)")
    if path is None:
        if not spec.lower().endswith(".pt"):
            raise ModelNotFoundError(
                f"'{spec}' is neither a file nor an Ultralytics model name.",
                hint="Give a .pt checkpoint, a model folder, a zoo: stub in a local zoo, an "
                     "Ultralytics weight name (yolov8n.pt, yolo11n-seg.pt) or a model config "
                     "(yolov8n.yaml, trained from scratch).")
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            path = Path(attempt_download_asset(spec))
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, HTTP errors
            path = None
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "the download left no file"
        if path is None or not path.is_file():
            raise ModelNotFoundError(
                f"Could not get Ultralytics weights '{spec}' ({reason}).",
                hint="Offline, pass a local checkpoint (--model ./yolov8n.pt), a model folder "
                     "in the local zoo, or a config to train from scratch (--model "
                     "yolov8n.yaml).")
    try:
        weights, _ = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the user's file
        raise ModelNotFoundError(f"Cannot read YOLO checkpoint {path}: {type(exc).__name__}: "
                                 f"{exc}") from None
    _check_task(getattr(weights, "task", guess_model_task(weights)), task, str(path))
    model = cls(copy.deepcopy(weights.yaml), nc=num_classes, ch=3, verbose=False)
    freeze_dfl_(weights)
    freeze_dfl_(model)
    model.load(weights, verbose=False)
    arch = str(weights.yaml.get("yaml_file", path.stem)) if isinstance(weights.yaml, dict) \
        else path.stem
    return LoadedYolo(model, Path(arch).stem, f"checkpoint {path}")
