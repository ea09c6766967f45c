"""The one train/validation split of every data kind, and the one record of it.

**The split** (:func:`split_items`), the same for image folders, text rows and YOLO images:

* Items are grouped by label when labels are given (stratified: image classes, text
  classification labels), else they form one group (token classification, question answering,
  YOLO images, which carry no single label).
* In each group the items are sorted, then shuffled by ``random.Random(f"{seed}:{label}")``
  (label ``""`` for unlabeled data). A string seed is hashed with SHA-512 by ``random``, so the
  split is the same in every process; it does not depend on the order the items came in, and
  the split of one group does not change when other groups are added or removed.
* A group of ``n >= 2`` items gives its first ``min(n - 1, max(1, floor(n * val_fraction +
  0.5)))`` shuffled items to validation: rounded half up, at least one, and at least one left
  for training. A group of a single item stays in training.
* When no group can give a validation item (every label occurs once), one item drawn by
  ``random.Random(f"{seed}:fallback")`` goes to validation.

**The record** (``data_split.json`` in the run folder, :func:`write_split_record`)::

    {"format": 1, "kind": "image_folder" | "text" | "yolo", "source": "<the data given>",
     "split": "seeded" | "given", "seed": 42, "val_fraction": 0.1 | null,
     "num_train": 90, "num_val": 10, "item": "<what one item is>", ...kind keys...,
     "train": [item, ...], "val": [item, ...]}

``split`` is ``seeded`` when the validation items were drawn here, ``given`` when the data
came with its own validation part (``val_fraction`` is then null). The item of each kind:

* ``image_folder``: ``{"path": "<relative to root>", "label": "<class name>"}``; also
  ``root``, ``class_names``, ``max_train_samples``, ``max_eval_samples``;
* ``text``: the 0-based index of the record in ``source`` (blank CSV lines are not records);
  also ``task``, ``stratified_by`` (the label column, or null);
* ``yolo``: the image path, relative to ``root`` when under it (absolute otherwise); also
  ``root``, ``task``, ``names``.

Light: no torch.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sparsify.errors import DataError
from sparsify.rundir import write_text_atomic

T = TypeVar("T")

SPLIT_RECORD_FILE = "data_split.json"
SPLIT_RECORD_FORMAT = 1
SPLIT_KINDS = ("image_folder", "text", "yolo")
_FRACTION_HINT = "A common value is 0.1 (10% for validation)."


def check_val_fraction(val_fraction: Any) -> float:
    """``val_fraction`` as a float strictly between 0 and 1.

    Raises:
        DataError: not a number, or outside (0, 1).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise DataError(f"val_fraction must be a number between 0 and 1; got {val_fraction!r}.",
                        hint=_FRACTION_HINT)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1; got {val_fraction}.",
                        hint=_FRACTION_HINT)
    return float(val_fraction)


def val_count(n: int, val_fraction: float) -> int:
    """Validation items of a group of ``n``: ``floor(n * f + 0.5)`` (half up), at least 1, at
    most ``n - 1``; 0 for a group of one."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))


def split_items(items: Sequence[T], val_fraction: float, seed: int,
                labels: Sequence[Hashable] | None = None) -> tuple[list[T], list[T]]:
    """Split ``items`` into ``(train, val)`` by the rule in the module docstring.

    Args:
        items: sortable, distinct items (paths, row indices).
        val_fraction: share of each group for validation, strictly between 0 and 1.
        seed: the same seed (and items) gives the same split.
        labels: one label per item to stratify by, or None.

    Returns:
        ``(train, val)``, each in the order of ``items``; every item is in exactly one.

    Raises:
        DataError: ``val_fraction`` outside (0, 1), or fewer than 2 items.
    """
    val_fraction = check_val_fraction(val_fraction)
    if len(items) < 2:
        raise DataError(f"Cannot split {len(items)} item(s) into training and validation data: "
                        "at least 2 are needed.")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} items")
    # Positions in item order, so that the order the items came in does not matter.
    order = sorted(range(len(items)), key=items.__getitem__)  # type: ignore[arg-type]
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault("" if labels is None else str(labels[i]), []).append(i)
    chosen: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        random.Random(f"{seed}:{key}").shuffle(members)
        chosen.update(members[:val_count(len(members), val_fraction)])
    if not chosen:
        chosen.add(order[random.Random(f"{seed}:fallback").randrange(len(order))])
    return ([x for i, x in enumerate(items) if i not in chosen],
            [x for i, x in enumerate(items) if i in chosen])


def relative_path(path: Path | str, root: Path | str) -> str:
    """``path`` relative to ``root`` with ``/`` separators, or absolute when outside it (links
    are not resolved: a linked image keeps the path it was found at)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return str(absolute)


def write_split_record(path: Path | str, *, kind: str, source: str, split: str,
                       seed: int | None, val_fraction: float | None, item: str,
                       train: Sequence[Any], val: Sequence[Any], **extra: Any) -> Path:
    """Write the split record (format 1, see the module docstring) atomically.

    Args:
        path: the JSON file, normally ``<run folder>/data_split.json``.
        kind: ``image_folder``, ``text`` or ``yolo``.
        source: the data the user gave.
        split: ``seeded`` (split here) or ``given`` (the data had a validation part).
        seed: the seed of the split (and of any subsampling).
        val_fraction: the share split off, or None for a given split.
        item: what one item of ``train`` / ``val`` is.
        train: the training items, in the kind's item form.
        val: the validation items.
        **extra: the kind's own keys, written before ``train`` and ``val``.

    Returns:
        ``path``.

    Raises:
        DataError: the file cannot be written.
    """
    if kind not in SPLIT_KINDS or split not in ("seeded", "given"):
        raise ValueError(f"bad split record kind/split: {kind!r}, {split!r}")
    path = Path(path)
    record = {"format": SPLIT_RECORD_FORMAT, "kind": kind, "source": source, "split": split,
              "seed": seed, "val_fraction": val_fraction, "num_train": len(train),
              "num_val": len(val), "item": item, **extra, "train": list(train),
              "val": list(val)}
    try:
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        raise DataError(f"Cannot write the data split record '{path}': {exc.strerror or exc}.",
                        hint="Check that the run folder exists and is writable.") from exc
    return path


def load_split_json(path: Path | str) -> Any:
    """The parsed JSON of a split record file (any format).

    Raises:
        DataError: the file is missing, unreadable or not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"Data split record '{path}' does not exist.",
                        hint="Pass the data_split.json file of an earlier run, or let the run "
                             "make a new split.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read the data split record '{path}': {exc}.",
                        hint="The file is damaged; delete it to have the split made again.") \
            from exc


def read_split_record(path: Path | str, kind: str | None = None) -> dict[str, Any]:
    """Read a record written by :func:`write_split_record`.

    Args:
        path: the JSON file.
        kind: the kind expected, or None for any.

    Raises:
        DataError: the file is missing, not valid JSON, not a format-1 split record, of
            another kind, or lacks keys.
    """
    record = load_split_json(path)
    if not isinstance(record, dict) or record.get("format") != SPLIT_RECORD_FORMAT \
            or record.get("kind") not in SPLIT_KINDS:
        raise DataError(f"'{path}' is not a data split record (expected a JSON object with "
                        f'"format": {SPLIT_RECORD_FORMAT} and "kind": one of '
                        f"{', '.join(SPLIT_KINDS)}).",
                        hint="Pass the data_split.json file written by a run.")
    if kind is not None and record["kind"] != kind:
        raise DataError(f"'{path}' records a split of {record['kind']} data, not {kind} data.",
                        hint="Pass the data_split.json file of a run on the same kind of data.")
    missing = [k for k in ("source", "split", "train", "val") if k not in record]
    if missing:
        raise DataError(f"Data split record '{path}' lacks the key(s) "
                        f"{', '.join(repr(k) for k in missing)}.",
                        hint="The file is damaged; delete it to have the split made again.")
    return record
