"""Image-classification models: from a zoo folder, a checkpoint, torchvision or timm."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import MissingExtraError, ModelNotFoundError, UsageError
from sparsify.plan import ModelChoice

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("model.pth", "model.pt", "checkpoint.pth", "model.pth.tar")


@dataclass
class LoadedModel:
    """A model ready to train, and what is known about where it came from."""

    model: nn.Module
    arch_key: str
    source: str
    head_replaced: bool = False


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image classification") from None
    return torchvision


# --- EfficientNet-Lite ------------------------------------------------------------------------
# Google's EfficientNet-Lite (EfficientNet without squeeze-excitation, ReLU6, stem and head not
# scaled), built from plain Conv2d/BatchNorm2d/ReLU6 modules so that BatchNorm folding, QAT and
# the INT8 export treat it like any torchvision CNN. Padding is PyTorch's symmetric k // 2;
# BatchNorm has TensorFlow's eps (1e-3, which the published weights were trained with) and
# PyTorch's momentum (0.1, so the running statistics follow a new dataset when fine-tuning).

# (expand ratio, kernel, stride, output channels, repeats) of the B0 base network.
_LITE_BASE = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# name: (width multiplier, depth multiplier, dropout)
EFFICIENTNET_LITE = {
    "efficientnet_lite0": (1.0, 1.0, 0.2), "efficientnet_lite1": (1.0, 1.1, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 0.3), "efficientnet_lite3": (1.2, 1.4, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 0.3),
}


def _round_channels(channels: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=1e-3)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class LiteBlock(nn.Module):
    """Inverted residual: optional 1x1 expansion, depthwise conv, linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0..4 (``arch_key`` efficientnet_lite0 ... efficientnet_lite4)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2,
                 num_classes: int = 1000) -> None:
        super().__init__()
        import math

        self.stem = _conv_bn(3, 32, 3, 2)
        blocks: list[nn.Module] = []
        cin = 32
        for i, (expand, kernel, stride, cout, repeats) in enumerate(_LITE_BASE):
            cout = _round_channels(cout * width)
            if 0 < i < len(_LITE_BASE) - 1:  # Lite keeps the first and last stage's depth
                repeats = int(math.ceil(repeats * depth))
            for r in range(repeats):
                blocks.append(LiteBlock(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


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
            raise MissingExtraError("timm", "timm", f"Model '{arch_key}'") from None
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return timm.create_model(arch_key[5:], pretrained=weights is not None, **kwargs)
    if arch_key in EFFICIENTNET_LITE:
        if weights is not None:
            raise UsageError(f"'{arch_key}' has no downloadable weights: pass a checkpoint file "
                             "(--model ./model.pth) holding its state dict.")
        width, depth, dropout = EFFICIENTNET_LITE[arch_key]
        return EfficientNetLite(width, depth, dropout, num_classes or 1000)
    tv = _torchvision()
    names = tv.models.list_models(module=tv.models)
    if arch_key not in names:
        from sparsify.errors import did_you_mean

        raise UsageError(f"Unknown image-classification architecture '{arch_key}'."
                         f"{did_you_mean(arch_key, names + list(EFFICIENTNET_LITE))} Valid: "
                         "torchvision classification models (resnet18, resnet50, mobilenet_v2, "
                         "...), efficientnet_lite0..4 or timm:<name>.")
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


# --- other projects' key layouts ----------------------------------------------------------------
_LUKEMELAS_BLOCK = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                    "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
_LUKEMELAS_TOP = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0",
                  "_bn1": "head.1", "_fc": "classifier"}


def _from_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` names (``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``) to
    :class:`EfficientNetLite`'s; names it does not know are kept (and then reported)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) > 3 and parts[2] in _LUKEMELAS_BLOCK:
            key = ".".join(["blocks", parts[1], _LUKEMELAS_BLOCK[parts[2]], *parts[3:]])
        elif parts[0] in _LUKEMELAS_TOP:
            key = ".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])
        out[key] = value
    return out


# SparseML's ResNet (sparseml.pytorch.models.classification.resnet) is torchvision's ResNet v1.5
# under other names: ``input.{conv,bn}`` is the stem, ``sections.S.B`` is ``layer{S+1}.B`` (same
# conv1..3/bn1..3 inside a block), the projection shortcut ``identity.{conv,bn}`` is
# ``downsample.{0,1}`` and ``classifier.fc`` is ``fc``. Its ReLUs and softmax hold no state.
_SPARSEML_RESNET_KEY = re.compile(r"resnet(?:v1)?[_-]?(18|34|50|101|152)")
_SPARSEML_WIDE_KEY = re.compile(r"resnet(?:v1)?[_-]?(50|101)[_-]2xwidth")


def _sparseml_resnet_arch(arch_key: str) -> str:
    """The torchvision builder for one of SparseML's ResNet registry keys.

    Raises:
        UsageError: a SparseML ResNet variant torchvision has no builder for (ResNet V2's
            pre-activation blocks, ResNeXt-101/152 with 32 groups of width 4).
    """
    key = arch_key.lower()
    if m := _SPARSEML_RESNET_KEY.fullmatch(key):
        return f"resnet{m.group(1)}"
    if m := _SPARSEML_WIDE_KEY.fullmatch(key):
        return f"wide_resnet{m.group(1)}_2"
    if re.fullmatch(r"resnext[_-]?50", key):
        return "resnext50_32x4d"
    raise UsageError(
        f"SparseML's '{arch_key}' has no torchvision equivalent to load its weights into "
        "(ResNet V2's pre-activation blocks and ResNeXt-101/152 32x4d are not torchvision "
        "architectures).",
        hint="Supported SparseML ResNets: resnet18/34/50/101/152, resnet50_2xwidth, "
             "resnet101_2xwidth, resnext50.")


def _from_sparseml_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SparseML ResNet v1 names to torchvision's; names it does not know are kept."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "input" and len(parts) > 2 and parts[1] in ("conv", "bn"):
            key = ".".join([parts[1] + "1", *parts[2:]])
        elif parts[0] == "sections" and len(parts) > 3 and parts[1].isdigit():
            rest = parts[3:]
            if rest[0] == "identity" and len(rest) > 2 and rest[1] in ("conv", "bn"):
                rest = ["downsample", "0" if rest[1] == "conv" else "1", *rest[2:]]
            key = ".".join([f"layer{int(parts[1]) + 1}", parts[2], *rest])
        elif parts[:2] == ["classifier", "fc"]:
            key = ".".join(["fc", *parts[2:]])
        out[key] = value
    return out


def _is_sparseml_resnet(state: dict[str, torch.Tensor]) -> bool:
    return "input.conv.weight" in state and any(k.startswith("sections.") for k in state)


def _to_arch_layout(state: dict[str, torch.Tensor], arch_key: str
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a checkpoint written by another project into the names ``arch_key`` builds.

    Returns the renamed state dict and the architecture to build (SparseML's registry keys,
    such as ``resnet_50`` or ``resnext50``, become torchvision builder names).
    """
    if arch_key in EFFICIENTNET_LITE and "_conv_stem.weight" in state:
        return _from_efficientnet_pytorch(state), arch_key
    if _is_sparseml_resnet(state):
        if any(k.startswith("sections.") and ".identity.weight" in k for k in state):
            raise UsageError(
                "This checkpoint is SparseML's ResNet V2 (pre-activation blocks), which has no "
                "torchvision equivalent to load its weights into.")
        return _from_sparseml_resnet(state), _sparseml_resnet_arch(arch_key)
    return state, arch_key


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
    state, arch_key = _to_arch_layout(state, arch_key)
    head_keys = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    num_classes = state[head_keys[-1]].shape[0] if head_keys else None
    model = build_arch(arch_key, num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        owner = ("" if arch_key in EFFICIENTNET_LITE
                 else "timm's " if arch_key.startswith("timm:") else "torchvision's ")
        raise ModelNotFoundError(
            f"{path} does not match {owner}'{arch_key}': missing {len(missing)} keys "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}).",
            hint="Read: torchvision and timm parameter names, SparseML's ResNet v1 layout "
                 "(input.conv, sections.N.M, classifier.fc) and efficientnet_pytorch's "
                 "EfficientNet-Lite layout. Check the arch_key.")
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
        if path.is_dir():
            checkpoint = _find_in_folder(path)
            if checkpoint is None:
                raise ModelNotFoundError(
                    f"No checkpoint in {path}: looked for training/{{{','.join(CHECKPOINT_NAMES)}}}.")
            path = checkpoint
        model, arch = _load_checkpoint(path, arch_key)
        replaced = replace_head_(model, num_classes)
        return LoadedModel(model, arch, str(path), replaced)

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
    source = f"{name} (timm pretrained)" if name.startswith("timm:") else \
        f"torchvision:{name} ({weights})"
    return LoadedModel(model, name, source, replaced)
