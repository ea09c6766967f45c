"""Staging a checked YOLO dataset into the run folder, the only copy Ultralytics reads (its
label caches are written there, never into the user's data folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sparsify.data.split import relative_path, write_split_record
from sparsify.data.yolo import YoloDataset
from sparsify.rundir import write_text_atomic


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except (OSError, NotImplementedError):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def stage_dataset(dataset: YoloDataset, out_dir: Path) -> Path:
    """Write the checked dataset into ``out_dir`` for Ultralytics and return its YAML.

    ``out_dir/dataset/images/{train,val}`` link to the user's images (copies where links are not
    possible), ``out_dir/dataset/labels/{train,val}`` hold copies of the labels, and
    ``out_dir/dataset.yaml`` describes them; ``out_dir/data_split.json`` records which image went
    where (kind ``yolo``, see :mod:`sparsify.data.split`). Nothing is written into the user's
    data folder.
    """
    staged = out_dir / "dataset"
    # made again when a resumed run stages its data once more (links and label copies of ours)
    shutil.rmtree(staged, ignore_errors=True)
    root = dataset.root if dataset.root.is_dir() else dataset.root.parent
    record: dict[str, list[str]] = {}
    for side, pairs in (("train", dataset.train), ("val", dataset.val)):
        img_dir, lbl_dir = staged / "images" / side, staged / "labels" / side
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        stems: set[str] = set()
        record[side] = []
        for index, (image, label) in enumerate(pairs):
            name = image.name
            if image.stem in stems:  # a.jpg and a.png, or the same name in two folders
                name = f"{index:06d}_{image.name}"
            stems.add(Path(name).stem)
            _link_or_copy(image, img_dir / name)
            if label is not None:
                shutil.copyfile(label, lbl_dir / (Path(name).stem + ".txt"))
            record[side].append(relative_path(image, root))
    config = {
        "path": str(staged.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(dataset.names),
        "names": dict(enumerate(dataset.names)),
    }
    import yaml

    yaml_path = out_dir / "dataset.yaml"
    write_text_atomic(yaml_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_split_record(
        out_dir / "data_split.json", kind="yolo", source=str(dataset.root), split=dataset.split,
        seed=dataset.seed, val_fraction=dataset.val_fraction,
        item="an image path, relative to root (absolute when outside it)",
        root=str(root.resolve()), task=dataset.task, names=dataset.names, **record)
    return yaml_path
