"""YOLO-format data for detection and segmentation: find it, check every label, stage it.

Accepted inputs (``--data``):

* a dataset YAML (``path``, ``train``, ``val``, ``names``), the Ultralytics format; ``train`` and
  ``val`` may each be a folder of images, a ``.txt`` list of image paths, or a list of those;
* a folder laid out as ``images/{train,val}`` + ``labels/{train,val}``;
* a folder with ``images/`` + ``labels/`` and no split: the validation images are drawn by
  :func:`sparsify.data.split.split_items` (seeded, not stratified: an image has no single label);
* the name of a dataset Ultralytics knows (``coco8.yaml``, ``coco128.yaml``...): passed through
  untouched (Ultralytics downloads it when online).

For the folder layouts the class names come from ``classes.txt`` (one name per line) or the
``names`` of a ``data.yaml`` in the folder.

The label of ``.../images/<rel>/x.jpg`` is ``.../labels/<rel>/x.txt`` (the Ultralytics rule).
Every label line is checked before a model is loaded (:func:`validate_yolo_dataset`): detection
lines are ``class x_center y_center width height``; segmentation lines are ``class x1 y1 x2 y2
...`` (at least three points); class ids must be in range and coordinates in [0, 1]. An image
without a label file (or with an empty one) is a background image: allowed, counted and
reported. A label file without its image, and a dataset without validation images, are errors.

The checked dataset is *staged* into the run folder
(:func:`sparsify.data.yolo_stage.stage_dataset`): ``dataset/`` with
links to the images and copies of the labels, and ``dataset.yaml`` describing it. Ultralytics
reads only the staged copy, so its label caches are written there and never into the user's
data folder. ``data_split.json`` records which image went where (kind ``yolo`` of
:mod:`sparsify.data.split`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify.data.split import split_items
from sparsify.errors import DataError

logger = logging.getLogger(__name__)

#: Image suffixes Ultralytics reads (ultralytics.data.utils.IMG_FORMATS, the common ones).
IMG_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp",
                                   ".dng", ".mpo", ".pfm", ".heic")
#: Datasets Ultralytics resolves by name (its own ``cfg/datasets`` YAMLs); passed through.
NAMED_YOLO_DATASETS: tuple[str, ...] = (
    "coco8.yaml", "coco8-seg.yaml", "coco128.yaml", "coco128-seg.yaml", "coco.yaml",
    "coco-seg.yaml", "VOC.yaml", "african-wildlife.yaml", "brain-tumor.yaml",
    "carparts-seg.yaml", "crack-seg.yaml", "package-seg.yaml",
)
TASKS = ("detect", "segment")
#: Coordinates a hair outside [0, 1] (float printing of 1.0) are accepted.
COORD_TOLERANCE = 1e-4
DEFAULT_VAL_FRACTION = 0.2
_MAX_LISTED = 10

_LAYOUT_HINT = (
    "Pass a YOLO dataset YAML (path, train, val, names), or a folder with images/{train,val} and "
    "labels/{train,val} (or images/ and labels/ to be split automatically) and the class names "
    "in classes.txt (one per line) or data.yaml (names: [...]), or a dataset name Ultralytics "
    "knows (" + ", ".join(NAMED_YOLO_DATASETS[:4]) + ")."
)


@dataclass
class YoloDataset:
    """A checked YOLO dataset.

    Attributes:
        root: the folder or YAML file the user gave.
        names: class names; label id ``i`` is ``names[i]``.
        task: ``detect`` or ``segment``.
        train: ``(image, label file or None)`` pairs for training.
        val: the same for validation.
        split: ``given`` (train/val came with the data) or ``seeded`` (split here).
        instances: objects per side, ``{"train": n, "val": n}``.
        backgrounds: images without objects per side.
        seed: the seed of a ``seeded`` split (None for a given one).
        val_fraction: the share split off in a ``seeded`` split (None for a given one).
    """

    root: Path
    names: list[str]
    task: str
    train: list[tuple[Path, Path | None]]
    val: list[tuple[Path, Path | None]]
    split: str = "given"
    instances: dict[str, int] = field(default_factory=dict)
    backgrounds: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    val_fraction: float | None = None

    def summary(self) -> str:
        bg = self.backgrounds
        return (f"{len(self.train)} train / {len(self.val)} val images ({self.split} split), "
                f"{len(self.names)} classes, {self.instances.get('train', 0)} / "
                f"{self.instances.get('val', 0)} objects, background images (no label): "
                f"{bg.get('train', 0)} train / {bg.get('val', 0)} val")


# --------------------------------------------------------------------------------------------
# Finding the images, labels and names
# --------------------------------------------------------------------------------------------


def is_named_dataset(data: str) -> bool:
    """True for a dataset name Ultralytics resolves itself (not a local path)."""
    return (not Path(data).expanduser().exists() and "/" not in data and "\\" not in data
            and data in NAMED_YOLO_DATASETS)


def label_path_for(image: Path) -> Path:
    """``.../images/<rel>/x.jpg`` -> ``.../labels/<rel>/x.txt`` (the last ``images`` part)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_names(value: Any, source: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DataError(f"{source}: 'names' keys must be class ids 0..n-1, got "
                            f"{list(value)[:5]}.") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{source}: 'names' ids must run 0..{len(keys) - 1} without gaps, "
                            f"got {keys[:10]}.")
        names = [str(value[k] if k in value else value[str(k)]) for k in keys]
    elif isinstance(value, list):
        names = [str(v) for v in value]
    else:
        raise DataError(f"{source}: 'names' must be a list of class names or a mapping "
                        f"{{id: name}}, got {type(value).__name__}.")
    if not names:
        raise DataError(f"{source}: 'names' is empty; list at least one class.")
    return names


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read dataset YAML {path}: {exc}", hint=_LAYOUT_HINT) from None
    if not isinstance(data, dict):
        raise DataError(f"Dataset YAML {path} does not hold a mapping (path, train, val, names).",
                        hint=_LAYOUT_HINT)
    return data


def _names_in_folder(root: Path) -> list[str]:
    classes_txt = root / "classes.txt"
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            data = _load_yaml(root / name)
            if "names" in data:
                return _read_names(data["names"], root / name)
    if classes_txt.is_file():
        names = [line.strip() for line in classes_txt.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if not names:
            raise DataError(f"{classes_txt} is empty; write one class name per line.")
        return names
    raise DataError(f"No class names in {root}: expected classes.txt (one name per line) or "
                    "data.yaml with 'names'.", hint=_LAYOUT_HINT)


def _images_from_entry(entry: Any, base: Path, key: str, source: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        if not isinstance(item, str) or not item:
            raise DataError(f"{source}: '{key}' must be a path or a list of paths, got {item!r}.")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else base / path
        if path.is_dir():
            images += _images_under(path)
        elif path.is_file() and path.suffix.lower() == ".txt":
            for line in path.read_text(encoding="utf-8-sig").splitlines():
                line = line.strip()
                if not line:
                    continue
                p = Path(line)
                if line.startswith("./"):
                    p = path.parent / line[2:]
                elif not p.is_absolute():
                    p = base / p
                images.append(p)
        elif path.is_file() and _is_image(path):
            images.append(path)
        else:
            raise DataError(f"{source}: '{key}' entry {item!r} does not exist ({path}).",
                            hint="Relative paths are read from the dataset's 'path' (or the "
                                 "YAML's folder).")
    return images


def _from_yaml(path: Path) -> tuple[list[str], list[Path], list[Path], list[Path]]:
    data = _load_yaml(path)
    missing = [k for k in ("train", "val", "names") if k not in data]
    if missing:
        raise DataError(f"Dataset YAML {path} lacks {', '.join(missing)}.", hint=_LAYOUT_HINT)
    names = _read_names(data["names"], path)
    if "nc" in data:
        nc = data["nc"]
        if isinstance(nc, bool) or not isinstance(nc, int):
            raise DataError(f"{path}: nc must be a whole number of classes, got {nc!r}.",
                            hint=f"Write nc: {len(names)} (the number of names) or leave it out.")
        if nc != len(names):
            raise DataError(f"{path}: nc is {nc} but 'names' lists {len(names)} classes.")
    base = Path(str(data.get("path") or path.parent)).expanduser()
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    if not base.is_dir():
        raise DataError(f"{path}: dataset folder 'path: {data.get('path')}' does not exist "
                        f"({base}).", hint=_LAYOUT_HINT)
    train = _images_from_entry(data["train"], base, "train", path)
    val = _images_from_entry(data["val"], base, "val", path) if data["val"] else []
    label_dirs = sorted({label_path_for(p).parent for p in train + val})
    return names, train, val, label_dirs


def _from_folder(root: Path) -> tuple[list[str], list[Path], list[Path] | None, Path]:
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DataError(f"'{root}' has no images/ folder.", hint=_LAYOUT_HINT)
    names = _names_in_folder(root)
    if (images_dir / "train").is_dir() or (images_dir / "val").is_dir():
        train = _images_under(images_dir / "train") if (images_dir / "train").is_dir() else []
        val = _images_under(images_dir / "val") if (images_dir / "val").is_dir() else []
        return names, train, val, labels_dir
    return names, _images_under(images_dir), None, labels_dir


# --------------------------------------------------------------------------------------------
# Checking labels
# --------------------------------------------------------------------------------------------


def check_label_file(path: Path, num_classes: int, task: str) -> tuple[int, list[str]]:
    """Check one label file line by line.

    Returns:
        ``(objects, problems)``: the number of objects and every problem found, each as
        ``"<file>:<line>: <what is wrong>"``.
    """
    problems: list[str] = []
    count = 0
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return 0, [f"{path}: cannot be read as text ({exc})"]
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(f) for f in fields]
        except ValueError:
            problems.append(f"{where}: not a list of numbers: {line.strip()[:60]!r}")
            continue
        cls, coords = values[0], values[1:]
        if task == "detect" and len(values) != 5:
            problems.append(f"{where}: expected 5 numbers (class x_center y_center width height),"
                            f" found {len(values)}")
            continue
        if task == "segment":
            if len(coords) % 2:
                problems.append(f"{where}: odd number of polygon coordinates ({len(coords)}); a "
                                "segmentation line is 'class x1 y1 x2 y2 ...'")
                continue
            if len(coords) < 6:
                problems.append(f"{where}: a polygon needs at least 3 points (6 coordinates), "
                                f"found {len(coords)} coordinates")
                continue
        if cls != int(cls) or not 0 <= cls < num_classes:
            problems.append(f"{where}: class id {fields[0]} is out of range; valid: 0.."
                            f"{num_classes - 1} ({num_classes} names)")
            continue
        bad = [v for v in coords if not -COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE]
        if bad:
            problems.append(f"{where}: coordinates must be normalised to [0, 1], found "
                            f"{', '.join(f'{v:g}' for v in bad[:3])}")
            continue
        if task == "detect" and (coords[2] <= 0 or coords[3] <= 0):
            problems.append(f"{where}: box width and height must be > 0")
            continue
        count += 1
    return count, problems


def _infer_task(label_files: Iterable[Path]) -> str:
    """``segment`` when label lines carry more than 5 numbers, else ``detect``."""
    for path in label_files:
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                n = len(line.split())
                if n:
                    return "segment" if n > 5 else "detect"
        except (OSError, UnicodeDecodeError):
            continue
    return "detect"


def _raise_problems(problems: list[str], task: str) -> None:
    listed = "\n  - ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    form = ("class x_center y_center width height" if task == "detect"
            else "class x1 y1 x2 y2 x3 y3 ... (a polygon)")
    raise DataError(
        f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the labels:\n  - "
        f"{listed}{more}",
        hint=f"Each line of a {task} label file is '{form}', class ids counted from 0, "
             "coordinates normalised to [0, 1] by the image width and height.")


def _unreadable_images(images: Sequence[Path]) -> list[str]:
    from sparsify.data.image_folder import open_image

    problems = []
    for path in images:
        try:
            with open_image(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - any failure means unreadable
            problems.append(f"{path}: cannot be read as an image ({type(exc).__name__})")
    return problems


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def validate_yolo_dataset(data: str | Path, task: str | None = None, *,
                          val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 42,
                          verify_images: bool = True) -> YoloDataset:
    """Find and check a YOLO dataset (see the module docstring for the accepted layouts).

    Args:
        data: a dataset YAML or a dataset folder.
        task: ``detect`` or ``segment``; ``None`` infers it from the first label line.
        val_fraction: share of the images used for validation when the data has no split.
        seed: seed of that split.
        verify_images: open every image with PIL.

    Returns:
        The checked dataset.

    Raises:
        DataError: the path is missing or not a YOLO dataset; a label line is malformed, has a
            class id out of range or coordinates outside [0, 1] (every such problem is listed
            with its file and line); a label file has no image; there are no training or no
            validation images; an image cannot be read.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"Dataset '{data}' does not exist.", hint=_LAYOUT_HINT)
    split = "given"
    if root.is_file():
        if root.suffix.lower() not in (".yaml", ".yml"):
            raise DataError(f"Dataset path '{root}' is a file but not a dataset YAML.",
                            hint=_LAYOUT_HINT)
        names, train, val, label_dirs = _from_yaml(root)
    else:
        if not (root / "images").is_dir():
            for name in ("data.yaml", "dataset.yaml"):
                candidate = root / name
                if candidate.is_file() and {"train", "val"} <= set(_load_yaml(candidate)):
                    return validate_yolo_dataset(candidate, task, val_fraction=val_fraction,
                                                 seed=seed, verify_images=verify_images)
        names, train, maybe_val, labels_dir = _from_folder(root)
        label_dirs = [labels_dir]
        if maybe_val is None:
            if not train:
                raise DataError(f"No images in {root / 'images'}.", hint=_LAYOUT_HINT)
            if len(train) < 2:
                raise DataError(f"Found {len(train)} image(s) in {root / 'images'}; a train/val "
                                "split needs at least 2.", hint=_LAYOUT_HINT)
            train, val = split_items(sorted(train), val_fraction, seed)
            split = "seeded"
        else:
            val = maybe_val

    if not train:
        raise DataError(f"No training images found in '{root}'.", hint=_LAYOUT_HINT)
    if not val:
        raise DataError(f"No validation images found in '{root}'.",
                        hint="Add images to images/val (with labels/val), or set 'val' in the "
                             "dataset YAML, or put all images in images/ (no train/val "
                             "subfolders) to have them split automatically.")

    problems: list[str] = []
    missing = [p for p in train + val if not p.is_file()]
    problems += [f"{p}: image listed but not found" for p in missing]
    all_images = [p for p in train + val if p.is_file()]
    labels = {img: label_path_for(img) for img in all_images}
    label_set = {lp.resolve() for lp in labels.values()}
    for label_dir in label_dirs:
        if not label_dir.is_dir():
            continue
        for lp in sorted(label_dir.rglob("*.txt")):
            if lp.resolve() not in label_set and lp.name != "classes.txt":
                problems.append(f"{lp}: label file without an image (expected an image named "
                                f"{lp.stem}.* under the matching images/ folder)")
    present = {img: lp for img, lp in labels.items() if lp.is_file()}
    task = task or _infer_task(present.values())
    counts: dict[Path, int] = {}
    for img, lp in present.items():
        n, found = check_label_file(lp, len(names), task)
        counts[img] = n
        problems += found
    if verify_images:
        problems += _unreadable_images(all_images)
    if problems:
        _raise_problems(problems, task)

    def pairs(images: list[Path]) -> list[tuple[Path, Path | None]]:
        return [(img, present.get(img)) for img in images]

    dataset = YoloDataset(
        root=root, names=names, task=task, train=pairs(train), val=pairs(val), split=split,
        seed=seed if split == "seeded" else None,
        val_fraction=val_fraction if split == "seeded" else None,
        instances={"train": sum(counts.get(i, 0) for i in train),
                   "val": sum(counts.get(i, 0) for i in val)},
        backgrounds={"train": sum(1 for i in train if not counts.get(i)),
                     "val": sum(1 for i in val if not counts.get(i))},
    )
    if dataset.backgrounds["train"] or dataset.backgrounds["val"]:
        logger.info("Background images (no label file or an empty one, trained as 'no object'):"
                    " %d train, %d val", dataset.backgrounds["train"], dataset.backgrounds["val"])
    logger.info("YOLO data: %s", dataset.summary())
    return dataset
