"""Image-classification torch datasets and transforms, built from a checked folder.

:func:`build_datasets` takes the layout of :func:`sparsify.data.image_folder.validate_image_folder`,
splits it when it has no validation folder (:func:`sparsify.data.image_split.split_train_val`),
records the split in the run folder and returns the training and validation datasets with the
usual ImageNet transforms.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from sparsify.data.image_folder import ImageFolderLayout, open_image
from sparsify.data.image_split import DataSplit, split_train_val, write_split
from sparsify.errors import DataError

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Eval resize = crop / 0.875 (224 -> 256), the usual ImageNet evaluation ratio.
EVAL_CROP_RATIO = 0.875


def load_rgb_image(path: Path) -> Image.Image:
    """Open an image file and convert it to RGB.

    Raises:
        DataError: the file cannot be read or decoded.
    """
    try:
        with open_image(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"Cannot read image '{path}': {exc}.",
            hint=(
                "The file may have changed or been truncated since the data was checked; "
                "replace or remove it and start the run again."
            ),
        ) from exc


class ImageListDataset(Dataset):
    """A map-style dataset over ``(path, label)`` pairs, like torchvision's ImageFolder.

    Attributes:
        samples: the ``(path, label)`` pairs.
        targets: the labels, in the order of ``samples``.
        classes: class names in label order.
        class_to_idx: class name -> label.
        transform: applied to the RGB PIL image.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.samples = [(Path(p), int(label)) for p, label in samples]
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def eval_resize_size(image_size: int) -> int:
    """The shorter-side resize before the centre crop: ``int(image_size / 0.875)``."""
    return int(image_size / EVAL_CROP_RATIO)


def build_train_transform(image_size: int = 224) -> Callable[[Image.Image], Any]:
    """RandomResizedCrop + RandomHorizontalFlip + ToTensor + ImageNet Normalize.

    Raises:
        DataError: ``image_size`` is not a positive integer.
    """
    from torchvision import transforms

    _check_image_size(image_size)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_eval_transform(image_size: int = 224) -> Callable[[Image.Image], Any]:
    """Resize(image_size / 0.875) + CenterCrop + ToTensor + ImageNet Normalize.

    Raises:
        DataError: ``image_size`` is not a positive integer.
    """
    from torchvision import transforms

    _check_image_size(image_size)
    return transforms.Compose(
        [
            transforms.Resize(eval_resize_size(image_size)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def transform_config(image_size: int = 224) -> dict[str, Any]:
    """The evaluation preprocessing, for the deployment ``config.json``.

    Returns:
        ``{"resize", "crop", "mean", "std", "interpolation", "color_order", "scale"}``: resize
        the shorter side to ``resize``, centre-crop ``crop`` x ``crop``, scale to [0, 1], then
        subtract ``mean`` and divide by ``std`` per RGB channel.

    Raises:
        DataError: ``image_size`` is not a positive integer.
    """
    _check_image_size(image_size)
    return {
        "resize": eval_resize_size(image_size),
        "crop": image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bilinear",
        "color_order": "RGB",
        "scale": 1.0 / 255.0,
    }


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(
            f"image_size must be a positive integer (pixels); got {image_size!r}.",
            hint="224 is the usual size for ImageNet models; smaller (e.g. 160) trains faster.",
        )


def _to_samples(
    by_class: Mapping[str, Sequence[Path]], class_names: Sequence[str]
) -> list[tuple[Path, int]]:
    return [(Path(p), label) for label, name in enumerate(class_names) for p in by_class[name]]


def _subsample(
    samples: list[tuple[Path, int]], limit: int | None, seed: int, what: str
) -> list[tuple[Path, int]]:
    """At most ``limit`` samples, each class keeping its share (largest-remainder quotas)."""
    if limit is None:
        return samples
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(
            f"{what} must be a positive integer or None; got {limit!r}.",
            hint=f"Leave {what} unset to use every image.",
        )
    if limit >= len(samples):
        return samples
    by_label: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for sample in samples:
        by_label[sample[1]].append(sample)
    total = len(samples)
    exact = {label: limit * len(items) / total for label, items in by_label.items()}
    quota = {label: math.floor(share) for label, share in exact.items()}
    leftover = limit - sum(quota.values())
    # Largest fractional part first; ties by label so the result is deterministic.
    for label in sorted(exact, key=lambda lb: (-(exact[lb] - quota[lb]), lb))[:leftover]:
        quota[label] += 1
    chosen: list[tuple[Path, int]] = []
    for label in sorted(by_label):
        items = sorted(by_label[label])
        random.Random(f"{seed}:subsample:{label}").shuffle(items)
        chosen.extend(sorted(items[: quota[label]]))
    return chosen


def build_datasets(
    layout: ImageFolderLayout,
    image_size: int = 224,
    val_fraction: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    split_record_path: Path | str | None = None,
) -> tuple[ImageListDataset, ImageListDataset, list[str]]:
    """Build the training and validation datasets of a checked folder.

    A layout without a validation folder is split with :func:`split_train_val`. Unreadable files
    the check skipped stay out. ``max_*_samples`` keep a deterministic, stratified subset.

    Args:
        layout: from :func:`validate_image_folder`.
        image_size: the crop size fed to the model.
        val_fraction: share of each class split off for validation (single-tree layouts only).
        seed: seed of the split and of the subsampling.
        max_train_samples: keep at most this many training images (None: all).
        max_eval_samples: keep at most this many validation images (None: all).
        split_record_path: where to record the images used (``data_split.json``, see
            :func:`sparsify.data.image_split.write_split`).

    Returns:
        ``(train_dataset, val_dataset, class_names)``.

    Raises:
        DataError: bad ``image_size``, ``val_fraction`` or ``max_*_samples``; a class too small
            to split; or the split record cannot be written.
    """
    _check_image_size(image_size)
    class_names = list(layout.class_names)
    if layout.val_samples is None:
        train_by_class, val_by_class = split_train_val(layout.train_samples, val_fraction, seed)
        used_fraction: float | None = val_fraction
    else:
        train_by_class, val_by_class = layout.train_samples, layout.val_samples
        used_fraction = None

    train_samples = _subsample(
        _to_samples(train_by_class, class_names), max_train_samples, seed, "max_train_samples"
    )
    val_samples = _subsample(
        _to_samples(val_by_class, class_names), max_eval_samples, seed, "max_eval_samples"
    )
    if split_record_path is not None:
        write_split(
            split_record_path,
            DataSplit(
                root=layout.root,
                class_names=tuple(class_names),
                train=_by_class(train_samples, class_names),
                val=_by_class(val_samples, class_names),
                seed=seed,
                val_fraction=used_fraction,
                max_train_samples=max_train_samples,
                max_eval_samples=max_eval_samples,
            ),
        )
    logger.info(
        "Image data: %d classes, %d training and %d validation images.",
        len(class_names),
        len(train_samples),
        len(val_samples),
    )
    train_ds = ImageListDataset(train_samples, class_names, build_train_transform(image_size))
    val_ds = ImageListDataset(val_samples, class_names, build_eval_transform(image_size))
    return train_ds, val_ds, class_names


def _by_class(
    samples: Sequence[tuple[Path, int]], class_names: Sequence[str]
) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {name: [] for name in class_names}
    for path, label in samples:
        out[class_names[label]].append(path)
    return out

