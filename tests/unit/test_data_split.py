"""The one train/validation splitter and the one ``data_split.json`` record, across image folders,
text rows and YOLO images."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sparsify.data.image_datasets import build_datasets
from sparsify.data.image_folder import validate_image_folder
from sparsify.data.image_split import split_train_val
from sparsify.data.split import (
    SPLIT_RECORD_FORMAT, read_split_record, split_items, val_count, write_split_record,
)
from sparsify.data.synthetic import make_synthetic_image_folder
from sparsify.data.synthetic_text import sentiment_rows, write_csv
from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset
from sparsify.data.text import Row, load_task_data, split_rows
from sparsify.data.yolo import validate_yolo_dataset
from sparsify.data.yolo_stage import stage_dataset
from sparsify.errors import DataError
from sparsify.families import settings_for

# (n, fraction, expected): the half cases round up (Python's round() would give 2, 2, 0, 4).
ROUNDING = [(10, 0.25, 3), (25, 0.1, 3), (5, 0.1, 1), (18, 0.25, 5), (15, 0.1, 2),
            (40, 0.1, 4), (3, 0.9, 2), (2, 0.5, 1), (7, 0.2, 1)]


@pytest.mark.parametrize(("n", "fraction", "expected"), ROUNDING)
def test_rounding_rule(n, fraction, expected):
    assert val_count(n, fraction) == expected
    assert len(split_items(list(range(n)), fraction, 0)[1]) == expected


@pytest.mark.parametrize(("n", "fraction", "expected"), ROUNDING)
def test_same_rounding_for_images_and_text(n, fraction, expected):
    images = {"a": [Path(f"/d/a/{i}.png") for i in range(n)]}
    assert len(split_train_val(images, fraction, seed=1)[1]["a"]) == expected
    rows = [Row({"text": f"t{i}"}, f"f, line {i + 2}") for i in range(n)]
    assert len(split_rows(rows, fraction, 1)[1]) == expected


def test_same_rounding_for_yolo_folders(tmp_path):
    root = make_synthetic_yolo_dataset(tmp_path / "f", train_images=9, val_images=1,
                                       layout="flat", size=32)
    ds = validate_yolo_dataset(root, "detect", val_fraction=0.25, seed=0, verify_images=False)
    assert (len(ds.train), len(ds.val)) == (7, val_count(10, 0.25)) == (7, 3)


def test_stratified_by_label_with_the_rule_per_group():
    labels = ["a"] * 25 + ["b"] * 10 + ["c"] * 3 + ["d"]
    items = [f"item{i:02d}" for i in range(len(labels))]
    train, val = split_items(items, 0.1, 5, labels)
    label_of = dict(zip(items, labels))
    assert Counter(label_of[x] for x in val) == {"a": 3, "b": 1, "c": 1}  # 'd' has one item
    assert "item38" in train  # the single 'd' item stays in training


def test_group_of_one_item_split_is_independent_of_other_groups():
    items = [f"x{i}" for i in range(30)]
    alone = split_items(items[:20], 0.2, 3, ["a"] * 20)[1]
    together = split_items(items, 0.2, 3, ["a"] * 20 + ["b"] * 10)[1]
    assert [x for x in together if int(x[1:]) < 20] == alone


def test_seeded_reproducible_and_order_independent():
    items = [Path(f"/img/{i:03d}.jpg") for i in range(57)]
    labels = [i % 3 for i in range(57)]
    first = split_items(items, 0.2, 11, labels)
    assert split_items(items, 0.2, 11, labels) == first
    pairs = list(zip(items, labels))
    random.Random(0).shuffle(pairs)
    shuffled = split_items([p for p, _ in pairs], 0.2, 11, [lb for _, lb in pairs])
    assert sorted(shuffled[1]) == sorted(first[1])
    assert split_items(items, 0.2, 12, labels)[1] != first[1]


@pytest.mark.parametrize("seed", range(5))
def test_every_item_on_exactly_one_side(seed):
    rng = random.Random(seed)
    n = rng.randrange(2, 200)
    items = list(range(n))
    labels = [rng.choice("abcde") for _ in items] if seed % 2 else None
    train, val = split_items(items, rng.uniform(0.05, 0.6), seed, labels)
    assert sorted(train + val) == items and not set(train) & set(val)
    assert train and val
    assert train == sorted(train) and val == sorted(val)  # in the order the items came in


def test_every_label_once_still_gives_one_validation_item():
    train, val = split_items(["a", "b", "c"], 0.1, 0, ["x", "y", "z"])
    assert len(val) == 1 and len(train) == 2


def test_splitter_errors():
    with pytest.raises(DataError, match="at least 2"):
        split_items([1], 0.1, 0)
    for fraction in (0, 1, -0.5, 2.0, "0.1", True):
        with pytest.raises(DataError, match="val_fraction"):
            split_items([1, 2, 3], fraction, 0)


# --- the one record, written by each domain's data preparation --------------------------------

COMMON = {"format", "kind", "source", "split", "seed", "val_fraction", "num_train", "num_val",
          "item", "train", "val"}


def _check_common(path: Path, kind: str) -> dict:
    record = read_split_record(path, kind=kind)
    assert record["format"] == SPLIT_RECORD_FORMAT == 1
    assert COMMON <= set(record)
    assert list(record)[-2:] == ["train", "val"]
    assert (record["num_train"], record["num_val"]) == (len(record["train"]), len(record["val"]))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # written atomically
    return record


def test_image_run_writes_the_record(tmp_path):
    root = make_synthetic_image_folder(tmp_path / "data", per_class=10, size=16)
    path = tmp_path / "run" / "data_split.json"
    train_ds, val_ds, classes = build_datasets(validate_image_folder(root), image_size=16,
                                               val_fraction=0.25, seed=4, split_record_path=path)
    record = _check_common(path, "image_folder")
    assert (record["split"], record["seed"], record["val_fraction"]) == ("seeded", 4, 0.25)
    assert record["class_names"] == classes and record["num_val"] == 3 * val_count(10, 0.25)
    assert record["val"][0] == {"path": f"{classes[0]}/{val_ds.samples[0][0].name}",
                                "label": classes[0]}
    assert {root / item["path"] for item in record["train"]} == {p for p, _ in train_ds.samples}


def test_image_run_with_a_validation_folder_records_a_given_split(tmp_path):
    root = make_synthetic_image_folder(tmp_path / "data", per_class=4, size=16, split=True)
    path = tmp_path / "run" / "data_split.json"
    build_datasets(validate_image_folder(root), image_size=16, split_record_path=path)
    record = _check_common(path, "image_folder")
    assert record["split"] == "given" and record["val_fraction"] is None
    assert all(item["path"].startswith("val/") for item in record["val"])


def test_text_run_writes_the_record(tmp_path):
    write_csv(tmp_path / "r.csv", sentiment_rows(40))
    path = tmp_path / "run" / "data_split.json"
    data = load_task_data(str(tmp_path / "r.csv"), "text_classification",
                          settings_for("text_classification", {"val_fraction": 0.25}), 9, path)
    record = _check_common(path, "text")
    assert (record["split"], record["seed"], record["val_fraction"]) == ("seeded", 9, 0.25)
    assert record["source"] == str(tmp_path / "r.csv")
    assert record["task"] == "text_classification" and record["stratified_by"] == "label"
    assert sorted(record["train"] + record["val"]) == list(range(40))
    assert len(record["val"]) == len(data.val) == 2 * val_count(20, 0.25)


def test_text_run_with_a_validation_file_writes_no_record(tmp_path):
    write_csv(tmp_path / "d" / "train.csv", sentiment_rows(10))
    write_csv(tmp_path / "d" / "val.csv", sentiment_rows(4, seed=1))
    path = tmp_path / "run" / "data_split.json"
    load_task_data(str(tmp_path / "d"), "text_classification",
                   settings_for("text_classification", {}), 0, path)
    assert not path.exists()


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_yolo_run_writes_the_record(tmp_path, layout):
    root = make_synthetic_yolo_dataset(tmp_path / "d", train_images=8, val_images=2,
                                       layout=layout, size=32)
    ds = validate_yolo_dataset(root, "detect", val_fraction=0.3, seed=2, verify_images=False)
    stage_dataset(ds, tmp_path / "run")
    record = read_split_record(tmp_path / "run" / "data_split.json", kind="yolo")
    assert COMMON <= set(record) and record["format"] == 1
    assert (record["num_train"], record["num_val"]) == (len(ds.train), len(ds.val))
    assert record["task"] == "detect" and record["names"] == ds.names
    if layout == "flat":
        assert (record["split"], record["seed"], record["val_fraction"]) == ("seeded", 2, 0.3)
        assert len(record["val"]) == val_count(10, 0.3)
    else:
        assert (record["split"], record["seed"], record["val_fraction"]) == ("given", None, None)
    base = Path(record["root"])
    assert [base / p for p in record["val"]] == [img.resolve() for img, _ in ds.val]
    assert all(not Path(p).is_absolute() for p in record["train"] + record["val"])


def test_record_reader_refuses_other_files(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"source": "x", "val_row_indices": [1]}))  # an old text record
    with pytest.raises(DataError, match="not a data split record"):
        read_split_record(path)
    write_split_record(path, kind="text", source="x", split="seeded", seed=0, val_fraction=0.5,
                       item="row", train=[0], val=[1])
    with pytest.raises(DataError, match="not image_folder data"):
        read_split_record(path, kind="image_folder")
    assert read_split_record(path)["val"] == [1]
