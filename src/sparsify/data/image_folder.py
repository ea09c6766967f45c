"""Image-classification data: check a folder of images and list its images per class.

Two layouts are accepted:

* ``root/train/<class>/*`` and ``root/val/<class>/*`` (``validation/`` also works; ``test/`` is
  ignored): used as given.
* ``root/<class>/*``: a single tree, split by :func:`sparsify.data.image_split.split_train_val`.
  A ``root/train/`` without any ``val/`` is treated the same way (the validation images are
  taken from ``train/``).

Class order is the sorted order of the class folder names, exactly as torchvision's
``ImageFolder`` gives it, so label ``i`` means the same class here as there. Files and folders
whose names start with ``.`` are ignored.

The rest of the image data layer: the split and its record (:mod:`sparsify.data.image_split`),
torch datasets and transforms (:mod:`sparsify.data.image_datasets`), the named datasets such as
``imagenette`` (:mod:`sparsify.data.named_datasets`). This module does not import torch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sparsify.data.named_datasets import NAMED_IMAGE_DATASETS
from sparsify.errors import DataError

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

TRAIN_DIR_NAME = "train"
VAL_DIR_NAMES: tuple[str, ...] = ("val", "validation")

_PROGRESS_MIN_FILES = 300
_MAX_LISTED = 10

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
        """True when there is no validation folder and the training images must be split."""
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
    # Linked folders are followed (datasets are often assembled from links), but a folder or an
    # image reached twice (a link loop, two links to one folder) is read once: duplicates would
    # otherwise land on both sides of the train/val split.
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            logger.warning("Skipping %s: it leads to %s, already read (a link loop or a second "
                           "link to one folder).", dirpath, real)
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMG_EXTENSIONS):
                target = os.path.realpath(os.path.join(dirpath, name))
                if target not in seen_files:
                    seen_files.add(target)
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

