"""The train/validation split of an image folder and its record (``data_split.json``).

The split is :func:`sparsify.data.split.split_items` stratified by class (the same rule as every
other kind of data); the record is the one format of :mod:`sparsify.data.split` with kind
``image_folder``. :func:`read_split` also reads the record of runs made before that format
(``"format": "sparsify.image_classification_split"``). Light: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify.data.split import (
    check_val_fraction,
    load_split_json,
    read_split_record,
    relative_path,
    split_items,
    write_split_record,
)
from sparsify.errors import DataError

#: The format string of the records written before the common format (still read).
LEGACY_SPLIT_FORMAT = "sparsify.image_classification_split"
_MAX_LISTED = 10
_ITEM = "an image: its path relative to root (or absolute when outside it) and its class name"


def split_train_val(
    samples_by_class: Mapping[str, Sequence[Path]],
    val_fraction: float = 0.1,
    seed: int = 42,
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split each class into train and validation images (stratified, deterministic).

    The split is :func:`sparsify.data.split.split_items` with the class names as labels: each
    class gives ``floor(n * val_fraction + 0.5)`` images to validation, at least one and at most
    ``n - 1``; its sorted paths are shuffled with a generator seeded from ``seed`` and the class
    name, so the split of one class does not change when classes are added or removed.

    Args:
        samples_by_class: class name -> image paths.
        val_fraction: share of each class for validation, strictly between 0 and 1.
        seed: the seed; the same seed gives the same split.

    Returns:
        ``(train, val)``: class name -> sorted paths, with the classes in sorted order.

    Raises:
        DataError: ``val_fraction`` is outside (0, 1), or a class has fewer than 2 images.
    """
    check_val_fraction(val_fraction)
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
    names = sorted(samples_by_class)
    items = [(Path(p), name) for name in names for p in samples_by_class[name]]
    train_items, val_items = split_items(items, val_fraction, seed, [c for _, c in items])
    train: dict[str, list[Path]] = {name: [] for name in names}
    val: dict[str, list[Path]] = {name: [] for name in names}
    for side, chosen in ((train, train_items), (val, val_items)):
        for path, name in chosen:
            side[name].append(path)
        for name in names:
            side[name].sort()
    return train, val


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
        extra: further keys written into the record.
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
    """Write ``split`` as the common split record (kind ``image_folder``) atomically.

    Each item is ``{"path": ..., "label": <class name>}``, the path relative to ``split.root``
    with ``/`` separators (absolute when outside it).

    Args:
        path: the JSON file to write, e.g. ``<run folder>/data_split.json``.
        split: the split to record.

    Returns:
        ``path``.

    Raises:
        DataError: the file cannot be written.
    """
    root = Path(split.root)

    def items(by_class: Mapping[str, Sequence[Path]]) -> list[dict[str, str]]:
        return [{"path": relative_path(p, root), "label": c}
                for c in split.class_names for p in by_class.get(c, [])]

    return write_split_record(
        path, kind="image_folder", source=str(root),
        split="given" if split.val_fraction is None else "seeded", seed=split.seed,
        val_fraction=split.val_fraction, item=_ITEM, root=str(root.resolve()),
        class_names=list(split.class_names), max_train_samples=split.max_train_samples,
        max_eval_samples=split.max_eval_samples, **split.extra,
        train=items(split.train), val=items(split.val))


_KNOWN_KEYS = {"format", "kind", "source", "split", "seed", "val_fraction", "num_train",
               "num_val", "item", "root", "class_names", "max_train_samples",
               "max_eval_samples", "train", "val", "version"}


def read_split(path: Path | str, root: Path | str | None = None) -> DataSplit:
    """Read an image split record: the common format, or the one of earlier runs.

    Args:
        path: the JSON file.
        root: the dataset folder to resolve the relative paths against; defaults to the root
            stored in the record (pass another when the dataset has moved).

    Returns:
        The split, with absolute paths.

    Raises:
        DataError: the file is missing, is not valid JSON, is not an image split record, or
            lacks keys.
    """
    path = Path(path)
    raw = load_split_json(path)
    if isinstance(raw, dict) and raw.get("format") == LEGACY_SPLIT_FORMAT:
        return _read_legacy(path, raw, root)
    record = read_split_record(path, kind="image_folder")
    missing = [k for k in ("root", "class_names") if k not in record]
    if missing:
        raise DataError(f"Data split record '{path}' lacks the key(s) "
                        f"{', '.join(repr(k) for k in missing)}.",
                        hint="The file is damaged; delete it to have the split made again.")
    base = Path(root) if root is not None else Path(record["root"])
    class_names = tuple(record["class_names"])

    def by_class(items: list[dict[str, str]]) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {c: [] for c in class_names}
        for item in items:
            out.setdefault(item["label"], []).append(base / item["path"])
        return out

    return DataSplit(
        root=base, class_names=class_names, train=by_class(record["train"]),
        val=by_class(record["val"]), seed=record.get("seed"),
        val_fraction=record.get("val_fraction"),
        max_train_samples=record.get("max_train_samples"),
        max_eval_samples=record.get("max_eval_samples"),
        extra={k: v for k, v in record.items() if k not in _KNOWN_KEYS},
    )


def _read_legacy(path: Path, record: dict[str, Any], root: Path | str | None) -> DataSplit:
    """A record of the earlier format: ``train`` / ``val`` map class name -> relative paths."""
    required = ("root", "class_names", "train", "val")
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"Data split record '{path}' lacks the key(s) "
                        f"{', '.join(repr(k) for k in missing)}.",
                        hint="The file is damaged; delete it to have the split made again.")
    base = Path(root) if root is not None else Path(record["root"])
    known = set(required) | {"format", "version", "seed", "val_fraction", "max_train_samples",
                             "max_eval_samples", "num_train", "num_val"}
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
