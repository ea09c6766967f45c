"""YOLO data layer: layouts, label checks (file and line in every message), split, staging."""

from __future__ import annotations

import json

import pytest
import yaml

from sparsify.data.split import split_items
from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset
from sparsify.data.yolo import (
    check_label_file, is_named_dataset, label_path_for, validate_yolo_dataset,
)
from sparsify.data.yolo_stage import stage_dataset
from sparsify.errors import DataError


@pytest.fixture
def det(tmp_path):
    return make_synthetic_yolo_dataset(tmp_path / "d", train_images=4, val_images=2, size=32)


def _first_label(root, side="train"):
    return sorted((root / "labels" / side).glob("*.txt"))[0]


def test_split_layout_reads_names_and_counts(det):
    ds = validate_yolo_dataset(det, "detect")
    assert ds.names == ["circle", "square", "triangle"]
    assert (len(ds.train), len(ds.val), ds.split) == (4, 2, "given")
    assert ds.instances["train"] == sum(
        len(p.read_text().splitlines()) for p in (det / "labels/train").glob("*.txt"))
    assert ds.backgrounds == {"train": 0, "val": 0}


def test_task_inferred_from_labels(tmp_path):
    seg = make_synthetic_yolo_dataset(tmp_path / "s", task="segment", train_images=2,
                                      val_images=1, size=32)
    assert validate_yolo_dataset(seg).task == "segment"
    det = make_synthetic_yolo_dataset(tmp_path / "d", train_images=2, val_images=1, size=32)
    assert validate_yolo_dataset(det).task == "detect"


def test_synthetic_labels_are_exact(tmp_path):
    root = make_synthetic_yolo_dataset(tmp_path / "s", task="segment", classes=("square",),
                                       train_images=1, val_images=1, size=64)
    line = _first_label(root).read_text().splitlines()[0].split()
    xs, ys = [float(v) for v in line[1::2]], [float(v) for v in line[2::2]]
    assert len(xs) == 4  # a square is its 4 corners
    from PIL import Image

    img = Image.open(next((root / "images/train").glob("*.png"))).convert("L")
    # The pixel at the polygon's centroid is drawn (dark); a corner of the image is background.
    cx, cy = sum(xs) / 4 * 64, sum(ys) / 4 * 64
    assert img.getpixel((int(cx), int(cy))) < 120 < img.getpixel((0, 0))


def test_background_images_allowed_and_counted(tmp_path):
    root = make_synthetic_yolo_dataset(tmp_path / "d", train_images=3, val_images=1,
                                       backgrounds=2, size=32)
    ds = validate_yolo_dataset(root, "detect")
    assert ds.backgrounds["train"] == 2 and len(ds.train) == 5
    assert "background images (no label): 2 train" in ds.summary()


def test_flat_layout_seeded_split_is_reproducible(tmp_path):
    root = make_synthetic_yolo_dataset(tmp_path / "f", train_images=9, val_images=1,
                                       layout="flat", names_file="data.yaml", size=32)
    a = validate_yolo_dataset(root, "detect", val_fraction=0.2, seed=3)
    b = validate_yolo_dataset(root, "detect", val_fraction=0.2, seed=3)
    c = validate_yolo_dataset(root, "detect", val_fraction=0.2, seed=4)
    assert a.split == "seeded" and len(a.val) == 2 and len(a.train) == 8
    assert a.val == b.val and {p for p, _ in a.val} != {p for p, _ in c.val}
    assert not {p for p, _ in a.val} & {p for p, _ in a.train}


def test_split_images_edge_cases(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    train, val = split_items(paths, 0.9, 0)
    assert len(train) == 1 and len(val) == 2  # at least one image on each side
    with pytest.raises(DataError, match="at least 2"):
        split_items(paths[:1], 0.2, 0)


def test_yaml_layout(tmp_path):
    path = make_synthetic_yolo_dataset(tmp_path / "y", train_images=2, val_images=1,
                                       layout="yaml", size=32)
    ds = validate_yolo_dataset(path)
    assert len(ds.train) == 2 and len(ds.val) == 1 and ds.names[0] == "circle"
    # A folder holding only data.yaml with train/val is read through that YAML.
    assert len(validate_yolo_dataset(path.parent).train) == 2


def test_label_path_rule(tmp_path):
    assert label_path_for(tmp_path / "images/train/a.jpg") == tmp_path / "labels/train/a.txt"
    assert label_path_for(tmp_path / "x/images/images/a.png") == tmp_path / "x/images/labels/a.txt"


@pytest.mark.parametrize("line,task,expected", [
    ("0 0.5 0.5 0.2", "detect", "expected 5 numbers"),
    ("0 0.5 0.5 0.2 0.2 0.1", "detect", "expected 5 numbers"),
    ("a 0.5 0.5 0.2 0.2", "detect", "not a list of numbers"),
    ("3 0.5 0.5 0.2 0.2", "detect", "class id 3 is out of range"),
    ("-1 0.5 0.5 0.2 0.2", "detect", "out of range"),
    ("0 1.5 0.5 0.2 0.2", "detect", "normalised to [0, 1]"),
    ("0 0.5 0.5 0 0.2", "detect", "width and height"),
    ("0 0.1 0.1 0.2 0.1 0.3", "segment", "odd number of polygon coordinates"),
    ("0 0.1 0.1 0.2 0.1", "segment", "at least 3 points"),
    ("1 0.1 0.1 0.2 0.1 -0.3 0.2", "segment", "normalised to [0, 1]"),
])
def test_bad_label_line_names_file_and_line(tmp_path, line, task, expected):
    path = tmp_path / "a.txt"
    good = "0 0.5 0.5 0.2 0.2" if task == "detect" else "0 0.1 0.1 0.2 0.1 0.2 0.2"
    path.write_text(f"{good}\n\n{line}\n")
    count, problems = check_label_file(path, 3, task)
    assert count == 1 and len(problems) == 1
    assert problems[0].startswith(f"{path}:3: ") and expected in problems[0]


def test_all_problems_reported_together(det):
    labels = sorted((det / "labels/train").glob("*.txt"))
    labels[0].write_text("0 0.5 0.5 0.2\n")
    labels[1].write_text("0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as info:
        validate_yolo_dataset(det, "detect")
    msg = str(info.value)
    assert msg.startswith("2 problems in the labels")
    assert f"{labels[0]}:1:" in msg and f"{labels[1]}:2:" in msg
    assert "class x_center y_center width height" in info.value.hint


def test_label_without_image(det):
    orphan = det / "labels/val/ghost.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="ghost.txt: label file without an image"):
        validate_yolo_dataset(det, "detect")


@pytest.mark.parametrize("remove", ["images/val", "labels/val"])
def test_no_val_images(det, remove):
    import shutil

    if remove == "images/val":
        shutil.rmtree(det / "images/val")
        shutil.rmtree(det / "labels/val")
        with pytest.raises(DataError, match="No validation images"):
            validate_yolo_dataset(det, "detect")
    else:  # validation images without labels are backgrounds, not an error
        shutil.rmtree(det / "labels/val")
        assert validate_yolo_dataset(det, "detect").backgrounds["val"] == 2


def test_missing_names_and_paths(tmp_path, det):
    (det / "classes.txt").unlink()
    with pytest.raises(DataError, match="No class names"):
        validate_yolo_dataset(det, "detect")
    with pytest.raises(DataError, match="does not exist"):
        validate_yolo_dataset(tmp_path / "nothing", "detect")
    (tmp_path / "x.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(DataError, match="lacks val"):
        validate_yolo_dataset(tmp_path / "x.yaml", "detect")


def test_unreadable_image(det):
    bad = det / "images/train/broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: cannot be read as an image"):
        validate_yolo_dataset(det, "detect")


def test_named_datasets():
    assert is_named_dataset("coco8.yaml") and is_named_dataset("coco128.yaml")
    assert not is_named_dataset("./coco8.yaml") and not is_named_dataset("mine.yaml")


def test_stage_dataset_writes_only_into_run_folder(tmp_path, det):
    before = sorted(p.relative_to(det) for p in det.rglob("*"))
    ds = validate_yolo_dataset(det, "detect")
    run = tmp_path / "run"
    yaml_path = stage_dataset(ds, run)
    config = yaml.safe_load(yaml_path.read_text())
    assert config["names"] == {0: "circle", 1: "square", 2: "triangle"} and config["nc"] == 3
    staged = run / "dataset"
    assert len(list((staged / "images/train").iterdir())) == 4
    for img in (staged / "images/val").iterdir():
        label = staged / "labels/val" / (img.stem + ".txt")
        original = det / "labels/val" / (img.stem + ".txt")
        assert label.read_text() == original.read_text()
    split = json.loads((run / "data_split.json").read_text())
    assert len(split["train"]) == 4 and split["split"] == "given"
    assert sorted(p.relative_to(det) for p in det.rglob("*")) == before


@pytest.mark.parametrize("nc, message", [("three", "whole number"), ("2.5", "whole number"),
                                         ("true", "whole number"), ("4", "nc is 4")])
def test_bad_nc_is_a_data_error_naming_the_file(tmp_path, nc, message):
    path = make_synthetic_yolo_dataset(tmp_path / "y", train_images=2, val_images=1,
                                       layout="yaml", size=32)
    text = path.read_text()
    path.write_text(text + f"nc: {nc}\n")
    with pytest.raises(DataError, match=message) as info:
        validate_yolo_dataset(path, "detect")
    assert str(path) in info.value.message
