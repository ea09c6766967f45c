"""Image-classification data: check a folder of images, split it, build torch datasets.

Two layouts are accepted:

* ``root/train/<class>/*`` and ``root/val/<class>/*`` (``validation/`` also works; ``test/`` is
  ignored): used as given.
* ``root/<class>/*``: a single tree, split by :func:`split_train_val`. A ``root/train/`` without
  any ``val/`` is treated the same way (the validation images are taken from ``train/``).

Class order is the sorted order of the class folder names, exactly as torchvision's
``ImageFolder`` gives it, so label ``i`` means the same class here as there. Files and folders
whose names start with ``.`` are ignored.

Named datasets (``imagenette``, ``imagenette-160``, ``imagenette-320``) are downloaded once into
a cache folder by :func:`resolve_named_image_dataset` and reused afterwards.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from sparsify.errors import DataError
from sparsify.rundir import write_text_atomic

logger = logging.getLogger(__name__)

def open_image(path: Path) -> Image.Image:
    """``PIL.Image.open`` as Pillow defines it. Ultralytics, once imported, replaces
    ``Image.open`` with a version that tries to pip-install a HEIF plugin whenever Pillow cannot
    identify a file; a broken image must be reported as broken, not as a missing package."""
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None) if patches is not None else None
    return (original or Image.open)(path)


# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS),
# kept here so that checking a folder does not need torchvision; a test keeps them in sync.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Eval resize = crop / 0.875 (224 -> 256), the usual ImageNet evaluation ratio.
EVAL_CROP_RATIO = 0.875

TRAIN_DIR_NAME = "train"
VAL_DIR_NAMES: tuple[str, ...] = ("val", "validation")

SPLIT_FORMAT = "sparsify.image_classification_split"
SPLIT_VERSION = 1

DATA_CACHE_ENV = "SPARSIFY_DATA_CACHE"
_FASTAI_IMAGECLAS_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"
# Dataset name -> archive stem on fastai's bucket (the archive holds a folder of the same name).
NAMED_IMAGE_DATASETS: dict[str, str] = {
    "imagenette": "imagenette2",
    "imagenette-160": "imagenette2-160",
    "imagenette-320": "imagenette2-320",
}

_PROGRESS_MIN_FILES = 300
_MAX_LISTED = 10
_DOWNLOAD_CHUNK = 1 << 20

_LAYOUT_HINT = (
    "Pass a folder with one subfolder per class (root/<class>/*.jpg, split automatically into "
    "train and validation), or a folder with train/ and val/ subfolders that each hold one "
    "subfolder per class, or a named dataset: " + ", ".join(NAMED_IMAGE_DATASETS) + "."
)


# --------------------------------------------------------------------------------------------
# Checking a folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFolderLayout:
    """A checked image-classification folder.

    Attributes:
        root: the folder the user gave.
        class_names: class folder names in sorted order; label ``i`` is ``class_names[i]``.
        train_dir: the folder holding the training class folders (``root`` for a single tree).
        train_samples: class name -> sorted readable image paths under ``train_dir``.
        val_dir: the validation folder (``root/val`` or ``root/validation``), or None when the
            validation images are still to be split off ``train_samples``.
        val_samples: class name -> sorted readable image paths under ``val_dir``, or None.
        skipped: image files PIL could not open, left out of both sides.
    """

    root: Path
    class_names: tuple[str, ...]
    train_dir: Path
    train_samples: dict[str, list[Path]]
    val_dir: Path | None = None
    val_samples: dict[str, list[Path]] | None = None
    skipped: tuple[Path, ...] = ()

    @property
    def needs_split(self) -> bool:
        """True when there is no validation folder and :func:`split_train_val` must make one."""
        return self.val_samples is None

    @property
    def num_train_images(self) -> int:
        """Number of readable images under ``train_dir``."""
        return sum(len(paths) for paths in self.train_samples.values())

    @property
    def num_val_images(self) -> int:
        """Number of readable images under ``val_dir`` (0 when there is none)."""
        return sum(len(paths) for paths in (self.val_samples or {}).values())


def validate_image_folder(root: Path | str, *, verify_images: bool = True) -> ImageFolderLayout:
    """Check an image-classification folder and list its images per class.

    Args:
        root: a folder with ``train/`` and ``val/`` (or ``validation/``) subfolders, each holding
            one subfolder per class, or a folder holding one subfolder per class.
        verify_images: open every image with PIL (``Image.verify``) and skip, with a warning, the
            files that cannot be read.

    Returns:
        The layout: class names in sorted order and the readable images of each class.

    Raises:
        DataError: the folder is missing or not a folder; it has no class folders or fewer than
            two; a class folder has no image files; the validation classes differ from the
            training classes; or a class has no readable image left.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Dataset folder '{root}' does not exist.", hint=_LAYOUT_HINT)
    if not root.is_dir():
        hint = _LAYOUT_HINT
        if _looks_like_archive(root):
            hint = f"It looks like an archive: extract it and pass the extracted folder. {hint}"
        raise DataError(f"Dataset path '{root}' is a file, not a folder.", hint=hint)

    train_dir, val_dir = _find_split_dirs(root)

    train_class_dirs = _class_dirs(train_dir)
    class_names = tuple(d.name for d in train_class_dirs)
    if len(class_names) < 2:
        raise DataError(
            f"Found only 1 class folder in '{train_dir}' ('{class_names[0]}'); image "
            "classification needs at least 2 classes.",
            hint="Add one subfolder per class, each holding that class's images.",
        )
    val_class_dirs: list[Path] | None = None
    if val_dir is not None:
        val_class_dirs = _class_dirs(val_dir)
        _check_same_classes(train_dir, class_names, val_dir, [d.name for d in val_class_dirs])

    train_samples = _collect_images(train_class_dirs)
    val_samples = _collect_images(val_class_dirs) if val_class_dirs is not None else None

    skipped: tuple[Path, ...] = ()
    if verify_images:
        all_paths = [p for paths in train_samples.values() for p in paths]
        if val_samples is not None:
            all_paths += [p for paths in val_samples.values() for p in paths]
        bad = _find_unreadable(all_paths)
        if bad:
            _warn_skipped(bad)
            train_samples = _drop_unreadable(train_samples, bad, train_dir)
            if val_samples is not None and val_dir is not None:
                val_samples = _drop_unreadable(val_samples, bad, val_dir)
            skipped = tuple(sorted(bad))

    return ImageFolderLayout(
        root=root,
        class_names=class_names,
        train_dir=train_dir,
        train_samples=train_samples,
        val_dir=val_dir,
        val_samples=val_samples,
        skipped=skipped,
    )


def _looks_like_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar"))


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(
            f"Cannot list the dataset folder '{folder}': {exc.strerror or exc}.",
            hint="Check that the folder exists and that you may read it.",
        ) from exc


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks, as torchvision does
    except OSError:
        return False


def _find_split_dirs(root: Path) -> tuple[Path, Path | None]:
    """``(train_dir, val_dir)``; ``val_dir`` is None when the images are to be split."""
    names = {e.name for e in _visible_entries(root) if _is_dir(e)}
    val_names = [n for n in VAL_DIR_NAMES if n in names]
    if TRAIN_DIR_NAME in names:
        if not val_names:
            logger.info(
                "'%s' has a train/ folder but no val/ folder: the validation images will be "
                "split off train/.",
                root,
            )
            return root / TRAIN_DIR_NAME, None
        if len(val_names) > 1:
            logger.warning(
                "'%s' has both val/ and validation/ folders; using val/ and ignoring validation/.",
                root,
            )
        return root / TRAIN_DIR_NAME, root / val_names[0]
    if val_names:
        raise DataError(
            f"Dataset folder '{root}' has a {val_names[0]}/ folder but no train/ folder.",
            hint=(
                f"Add '{root / TRAIN_DIR_NAME}' with one subfolder per class holding the training "
                "images, or pass a folder with one subfolder per class to have it split."
            ),
        )
    return root, None


def _class_dirs(folder: Path) -> list[Path]:
    entries = _visible_entries(folder)
    dirs = [folder / e.name for e in entries if _is_dir(e)]
    if dirs:
        return dirs
    loose_images = [e.name for e in entries if e.name.lower().endswith(IMG_EXTENSIONS)]
    message = f"No class folders in '{folder}': expected one subfolder per class."
    if loose_images:
        message += (
            f" It holds {len(loose_images)} image file(s) directly (e.g. '{loose_images[0]}'); "
            "images must sit in a subfolder named after their class."
        )
    raise DataError(
        message,
        hint=f"Arrange the images as {folder}/<class>/<image>, e.g. {folder}/cat/001.jpg. "
        + _LAYOUT_HINT,
    )


def _check_same_classes(
    train_dir: Path, train_classes: Sequence[str], val_dir: Path, val_classes: Sequence[str]
) -> None:
    missing = sorted(set(train_classes) - set(val_classes))
    extra = sorted(set(val_classes) - set(train_classes))
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"missing from {val_dir.name}/ (present in train/): {_quote(missing)}")
    if extra:
        problems.append(f"in {val_dir.name}/ but not in train/: {_quote(extra)}")
    raise DataError(
        f"The class folders of '{val_dir}' differ from those of '{train_dir}': "
        + "; ".join(problems)
        + ".",
        hint=(
            f"Give {val_dir.name}/ and train/ the same class subfolders (names must match "
            "exactly, including case), or remove the validation folder to have train/ split."
        ),
    )


def _quote(names: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def _collect_images(class_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    samples: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        images, others = _image_files(class_dir)
        if not images:
            found = f" It holds: {_quote(others, 5)}." if others else " It is empty."
            raise DataError(
                f"Class folder '{class_dir}' has no image files.{found}",
                hint=(
                    "Accepted image extensions (as torchvision's ImageFolder): "
                    + ", ".join(IMG_EXTENSIONS)
                    + ". Add images to the folder or remove it."
                ),
            )
        samples[class_dir.name] = images
    return samples


def _image_files(class_dir: Path) -> tuple[list[Path], list[str]]:
    """Image files under ``class_dir`` (recursively, sorted) and the names of the other files."""
    images: list[Path] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMG_EXTENSIONS):
                images.append(Path(dirpath) / name)
            else:
                others.append(name)
    return sorted(images), others


def _check_image(path: Path) -> str | None:
    """None when PIL can open ``path``, else why not."""
    try:
        with open_image(path) as image:
            image.verify()
    # PIL raises OSError, SyntaxError, ValueError, struct.error... for bad files: any is "bad".
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def _find_unreadable(paths: Sequence[Path]) -> dict[Path, str]:
    """``{path: reason}`` for the files PIL cannot open, checked on a thread pool."""
    if not paths:
        return {}
    # Verification is mostly file I/O and C decoding that releases the GIL: threads help.
    workers = max(1, min(16, (os.cpu_count() or 1) * 4, len(paths)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(
            tqdm(
                pool.map(_check_image, paths),
                total=len(paths),
                desc="Checking images",
                unit="img",
                leave=False,
                # None: shown on a terminal only, so that logs in CI stay clean.
                disable=True if len(paths) < _PROGRESS_MIN_FILES else None,
            )
        )
    return {path: reason for path, reason in zip(paths, reasons) if reason is not None}


def _warn_skipped(bad: Mapping[Path, str]) -> None:
    paths = sorted(bad)
    lines = [f"  {p} ({bad[p]})" for p in paths[:20]]
    if len(paths) > 20:
        lines.append(f"  ... and {len(paths) - 20} more")
    logger.warning(
        "Skipping %d image file(s) that PIL cannot open:\n%s", len(paths), "\n".join(lines)
    )


def _drop_unreadable(
    samples: dict[str, list[Path]], bad: Mapping[Path, str], folder: Path
) -> dict[str, list[Path]]:
    kept: dict[str, list[Path]] = {}
    for name, paths in samples.items():
        good = [p for p in paths if p not in bad]
        if not good:
            raise DataError(
                f"Class '{name}' in '{folder}' has no readable image: all {len(paths)} of its "
                f"image files fail to open ({_quote([p.name for p in paths], 5)}).",
                hint="Replace the broken files with valid images, or remove the class folder.",
            )
        kept[name] = good
    return kept


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def split_train_val(
    samples_by_class: Mapping[str, Sequence[Path]],
    val_fraction: float = 0.1,
    seed: int = 42,
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split each class into train and validation images (stratified, deterministic).

    Each class gives ``round(n * val_fraction)`` images to validation, at least one and at most
    ``n - 1``. The paths of a class are sorted, then shuffled with a generator seeded from
    ``seed`` and the class name, so the split of one class does not change when classes are
    added or removed.

    Args:
        samples_by_class: class name -> image paths.
        val_fraction: share of each class for validation, strictly between 0 and 1.
        seed: the seed; the same seed gives the same split.

    Returns:
        ``(train, val)``: class name -> sorted paths, with the classes in sorted order.

    Raises:
        DataError: ``val_fraction`` is outside (0, 1), or a class has fewer than 2 images.
    """
    _check_val_fraction(val_fraction)
    too_small = {c: len(p) for c, p in samples_by_class.items() if len(p) < 2}
    if too_small:
        listed = ", ".join(f"'{c}' ({n})" for c, n in sorted(too_small.items())[:_MAX_LISTED])
        raise DataError(
            "Cannot split into train and validation: every class needs at least 2 images (one "
            f"for each side), and these have fewer: {listed}.",
            hint=(
                "Add images to these classes, or provide separate folders "
                "root/train/<class>/ and root/val/<class>/."
            ),
        )
    train: dict[str, list[Path]] = {}
    val: dict[str, list[Path]] = {}
    for name in sorted(samples_by_class):
        paths = sorted(Path(p) for p in samples_by_class[name])
        # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
        random.Random(f"{seed}:{name}").shuffle(paths)
        n_val = min(len(paths) - 1, max(1, math.floor(len(paths) * val_fraction + 0.5)))
        val[name] = sorted(paths[:n_val])
        train[name] = sorted(paths[n_val:])
    return train, val


def _check_val_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise DataError(
            f"val_fraction must be a number between 0 and 1; got {val_fraction!r}.",
            hint="A common value is 0.1 (10% of each class for validation).",
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(
            f"val_fraction must be strictly between 0 and 1; got {val_fraction}.",
            hint="A common value is 0.1 (10% of each class for validation).",
        )


# --------------------------------------------------------------------------------------------
# The split record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSplit:
    """The images a run trains and evaluates on, as recorded in the run folder.

    Attributes:
        root: the dataset folder; the record stores paths relative to it.
        class_names: class names in label order.
        train: class name -> training image paths.
        val: class name -> validation image paths.
        seed: the seed of the split and subsampling (None when nothing was random).
        val_fraction: the share split off for validation, or None when the dataset had a
            validation folder.
        max_train_samples: the cap applied to the training images, if any.
        max_eval_samples: the cap applied to the validation images, if any.
    """

    root: Path
    class_names: tuple[str, ...]
    train: dict[str, list[Path]]
    val: dict[str, list[Path]]
    seed: int | None = None
    val_fraction: float | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_split(path: Path | str, split: DataSplit) -> Path:
    """Write ``split`` as JSON to ``path`` atomically (a temporary file, then ``os.replace``).

    Paths under ``split.root`` are stored relative to it, with ``/`` separators.

    Args:
        path: the JSON file to write, e.g. ``<run folder>/data_split.json``.
        split: the split to record.

    Returns:
        ``path``.

    Raises:
        DataError: the file cannot be written.
    """
    path = Path(path)
    root = Path(split.root)

    def rel(p: Path) -> str:
        try:
            return Path(p).relative_to(root).as_posix()
        except ValueError:
            return str(Path(p).resolve())

    record = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "root": str(root.resolve()),
        "class_names": list(split.class_names),
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "max_train_samples": split.max_train_samples,
        "max_eval_samples": split.max_eval_samples,
        "num_train": sum(len(v) for v in split.train.values()),
        "num_val": sum(len(v) for v in split.val.values()),
        "train": {c: [rel(p) for p in split.train.get(c, [])] for c in split.class_names},
        "val": {c: [rel(p) for p in split.val.get(c, [])] for c in split.class_names},
        **split.extra,
    }
    try:
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        raise DataError(
            f"Cannot write the data split record '{path}': {exc.strerror or exc}.",
            hint="Check that the run folder exists and is writable.",
        ) from exc
    return path


def read_split(path: Path | str, root: Path | str | None = None) -> DataSplit:
    """Read a split written by :func:`write_split`.

    Args:
        path: the JSON file.
        root: the dataset folder to resolve the relative paths against; defaults to the root
            stored in the record (pass another when the dataset has moved).

    Returns:
        The split, with absolute paths.

    Raises:
        DataError: the file is missing, is not valid JSON, or is not a split record.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(
            f"Data split record '{path}' does not exist.",
            hint="Pass the data_split.json file of an earlier run, or let the run make a new split.",
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"Cannot read the data split record '{path}': {exc}.",
            hint="The file is damaged; delete it to have the split made again.",
        ) from exc
    required = ("root", "class_names", "train", "val")
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise DataError(
            f"'{path}' is not a data split record (expected a JSON object with "
            f'"format": "{SPLIT_FORMAT}").',
            hint="Pass the data_split.json file written by a run.",
        )
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(
            f"Data split record '{path}' lacks the key(s) {_quote(missing)}.",
            hint="The file is damaged; delete it to have the split made again.",
        )
    base = Path(root) if root is not None else Path(record["root"])
    known = set(required) | {
        "format",
        "version",
        "seed",
        "val_fraction",
        "max_train_samples",
        "max_eval_samples",
        "num_train",
        "num_val",
    }
    return DataSplit(
        root=base,
        class_names=tuple(record["class_names"]),
        train={c: [base / p for p in ps] for c, ps in record["train"].items()},
        val={c: [base / p for p in ps] for c, ps in record["val"].items()},
        seed=record.get("seed"),
        val_fraction=record.get("val_fraction"),
        max_train_samples=record.get("max_train_samples"),
        max_eval_samples=record.get("max_eval_samples"),
        extra={k: v for k, v in record.items() if k not in known},
    )


# --------------------------------------------------------------------------------------------
# Datasets and transforms
# --------------------------------------------------------------------------------------------


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
        split_record_path: where to record the images used (JSON, see :func:`write_split`).

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


# --------------------------------------------------------------------------------------------
# Named datasets: download, safe extraction, cache
# --------------------------------------------------------------------------------------------


def default_data_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$SPARSIFY_DATA_CACHE``, else ``~/.cache/sparsify/datasets``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(DATA_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sparsify" / "datasets"


def _named_dataset_key(name: str) -> str | None:
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    key = re.sub(r"^imagenette2\b", "imagenette", key)
    return key if key in NAMED_IMAGE_DATASETS else None


def resolve_named_image_dataset(name: str, cache_dir: Path | str | None = None) -> Path | None:
    """The local folder of a named dataset, downloading and extracting it on first use.

    Known names (case-insensitive): ``imagenette``, ``imagenette-160``, ``imagenette-320``
    (fastai's Imagenette: 10 ImageNet classes named by WordNet id, in ``train/`` and ``val/``).
    An archive already in the cache (e.g. downloaded by hand) is extracted without downloading.

    Args:
        name: the dataset name.
        cache_dir: where datasets are kept; defaults to :func:`default_data_cache_dir`.

    Returns:
        The extracted folder (holding ``train/`` and ``val/``), or None when ``name`` is not a
        known dataset name (the caller then treats it as a path).

    Raises:
        DataError: the download or the extraction failed; the message says how to provide the
            data by hand.
    """
    key = _named_dataset_key(name)
    if key is None:
        return None
    stem = NAMED_IMAGE_DATASETS[key]
    cache = default_data_cache_dir(cache_dir)
    target = cache / stem
    if _looks_extracted(target):
        logger.info("Using the cached '%s' dataset at %s", key, target)
        return target

    url = f"{_FASTAI_IMAGECLAS_URL}{stem}.tgz"
    archive = cache / f"{stem}.tgz"
    manual = (
        f"Download {url} yourself and extract it into {cache} (so that {target}/train/ and "
        f"{target}/val/ exist), or put the .tgz file itself at {archive}; or pass a local "
        f"folder instead. Set {DATA_CACHE_ENV} to use another cache folder."
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the dataset cache folder '{cache}': {exc.strerror or exc}.",
            hint=f"Set {DATA_CACHE_ENV} to a writable folder.",
        ) from exc

    downloaded = False
    if not archive.is_file():
        logger.info("Downloading the '%s' dataset from %s into %s", key, url, cache)
        download_file(url, archive, what=f"the '{key}' dataset", cache_dir=cache, hint=manual)
        downloaded = True
    logger.info("Extracting %s into %s", archive, target)
    try:
        _extract_into_place(archive, target, hint=manual)
    except DataError:
        if downloaded:
            archive.unlink(missing_ok=True)
        raise
    if downloaded:
        # Keep an archive the user put there; ours is no longer needed once extracted.
        archive.unlink(missing_ok=True)
    return target


def _looks_extracted(folder: Path) -> bool:
    return (folder / TRAIN_DIR_NAME).is_dir()


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "the connection timed out"
    return str(exc) or type(exc).__name__


def download_file(
    url: str,
    dest: Path | str,
    *,
    what: str | None = None,
    cache_dir: Path | None = None,
    hint: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar, via a temporary file renamed when complete.

    The size received is checked against the ``Content-Length`` header; ``dest`` only appears
    once the whole file is there, so an interrupted download leaves nothing behind.

    Args:
        url: the file to download (``urllib``).
        dest: where the file ends up.
        what: what is being downloaded, for messages (defaults to the URL).
        cache_dir: the folder named in error messages (defaults to ``dest``'s folder).
        hint: what the user can do instead, attached to errors.
        timeout: seconds to wait for the server on each read.

    Returns:
        ``dest``.

    Raises:
        DataError: the server cannot be reached, answers with an error, or sends fewer bytes
            than announced; or the file cannot be written.
    """
    dest = Path(dest)
    what = what or url
    folder = cache_dir if cache_dir is not None else dest.parent
    hint = hint or f"Download {url} yourself and save it as {dest}."
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        request = urllib.request.Request(url, headers={"User-Agent": "sparsify-transfer"})
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            expected = _content_length(response)
            received = 0
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                leave=False,
                disable=None,  # shown on a terminal only
            ) as bar:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise DataError(
                f"Downloading {what} into {folder} failed: the download from {url} was "
                f"incomplete ({received} of {expected} bytes).",
                hint=f"Try again (the connection may have dropped). {hint}",
            )
        os.replace(tmp, dest)
        tmp = None
    except DataError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(
            f"Downloading {what} into {folder} failed: could not fetch {url} "
            f"({_network_reason(exc)}).",
            hint=f"Check your internet connection. {hint}",
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest


def _unsafe_reason(member: tarfile.TarInfo, dest_real: str) -> str | None:
    """Why extracting ``member`` into ``dest_real`` is unsafe, or None when it is safe."""

    def inside(path: str) -> bool:
        return os.path.commonpath([dest_real, os.path.realpath(path)]) == dest_real

    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "contains '..'"
    target = os.path.join(dest_real, name)
    if not inside(target):
        return "would be written outside the destination folder"
    if member.issym():
        link = member.linkname
        if os.path.isabs(link) or link.startswith(("/", "\\")):
            return f"is a symbolic link to an absolute path ('{link}')"
        if not inside(os.path.join(os.path.dirname(target), link)):
            return f"is a symbolic link pointing outside the destination folder ('{link}')"
    elif member.islnk():
        link = member.linkname
        if os.path.isabs(link) or not inside(os.path.join(dest_real, link)):
            return f"is a hard link pointing outside the destination folder ('{link}')"
    elif member.ischr() or member.isblk():
        return "is a device file"
    elif member.isfifo():
        return "is a FIFO"
    elif not (member.isfile() or member.isdir()):
        return "is of an unsupported type"
    return None


def extract_tar_safely(archive: Path | str, dest: Path | str) -> None:
    """Extract a (compressed) tar archive into ``dest``, refusing unsafe members.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    links pointing outside ``dest``, device files and FIFOs are refused. The extraction itself
    also runs with tarfile's ``data`` filter, as a second line of defence.

    Args:
        archive: the ``.tar``, ``.tgz``, ``.tar.gz``... file.
        dest: the folder to extract into (created if missing).

    Raises:
        DataError: an unsafe member, a damaged archive, or a write failure.
    """
    archive = Path(archive)
    dest = Path(dest)
    damaged_hint = "Delete the archive and download it again, or extract a trusted copy yourself."
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest_real = os.path.realpath(dest)
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_reason(member, dest_real)
                if reason is not None:
                    raise DataError(
                        f"Refusing to extract '{archive}': member '{member.name}' {reason}.",
                        hint=f"The archive is damaged or was tampered with. {damaged_hint}",
                    )
            tar.extractall(dest, members=members, filter="data")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"Cannot extract '{archive}': the archive is damaged or not a tar file ({exc}).",
            hint=damaged_hint,
        ) from exc
    except OSError as exc:
        raise DataError(
            f"Cannot extract '{archive}' into '{dest}': {exc.strerror or exc}.",
            hint="Check the free disk space and that the folder is writable.",
        ) from exc


def _extract_into_place(archive: Path, target: Path, hint: str) -> None:
    """Extract into a temporary folder beside ``target``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        extract_tar_safely(archive, tmp)
        entries = [p for p in tmp.iterdir() if not p.name.startswith(".")]
        # The archive normally holds one top folder (imagenette2-160/); use it when it does.
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if not _looks_extracted(source):
            raise DataError(
                f"The archive '{archive}' does not hold a train/ folder.",
                hint=f"It is not the expected dataset; delete it. {hint}",
            )
        try:
            os.rename(source, target)
        except OSError:
            if not _looks_extracted(target):  # not a concurrent run that finished first
                raise
    except OSError as exc:
        raise DataError(
            f"Cannot move the extracted dataset into '{target}': {exc.strerror or exc}.",
            hint=f"If '{target}' is left from an earlier attempt, delete it and try again. {hint}",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
