"""Image-classification data: split, split record, named datasets offline, safe extraction."""

from __future__ import annotations

import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from sparsify.data.image_folder import (
    build_datasets, download_file, extract_tar_safely, read_split, resolve_named_image_dataset,
    split_train_val, validate_image_folder,
)
from sparsify.data.synthetic import make_synthetic_image_folder
from sparsify.errors import DataError


def _samples(n_per_class):
    return {c: [Path(f"/d/{c}/{i:03d}.png") for i in range(n)] for c, n in n_per_class.items()}


def test_split_is_stratified_deterministic_and_keeps_every_class_on_both_sides():
    samples = _samples({"b": 20, "a": 3, "c": 2})
    train, val = split_train_val(samples, 0.1, seed=7)
    assert list(train) == ["a", "b", "c"] and list(val) == ["a", "b", "c"]
    assert [len(val[c]) for c in "abc"] == [1, 2, 1]  # round(n * 0.1), at least 1
    assert all(len(train[c]) >= 1 for c in "abc")
    for c in "abc":
        assert not set(train[c]) & set(val[c])
        assert sorted(train[c] + val[c]) == sorted(samples[c])
    assert split_train_val(samples, 0.1, seed=7) == (train, val)
    assert split_train_val(samples, 0.1, seed=8)[1]["b"] != val["b"]


def test_split_refuses_a_class_of_one_image():
    with pytest.raises(DataError, match="at least 2 images") as info:
        split_train_val(_samples({"a": 5, "lonely": 1}), 0.1, 0)
    assert "'lonely' (1)" in str(info.value) and "train/" in info.value.hint


def test_build_datasets_records_split_and_orders_classes(tmp_path):
    make_synthetic_image_folder(tmp_path / "d", classes=("triangle", "circle", "square"),
                                per_class=10, size=32, split=False)
    layout = validate_image_folder(tmp_path / "d")
    train, val, classes = build_datasets(layout, image_size=24, val_fraction=0.2, seed=3,
                                         max_train_samples=12,
                                         split_record_path=tmp_path / "run" / "split.json")
    assert classes == ["circle", "square", "triangle"]  # lexicographic, as ImageFolder
    assert len(train) == 12 and len(val) == 6
    image, label = train[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and 0 <= label < 3
    record = read_split(tmp_path / "run" / "split.json")
    assert record.seed == 3 and list(record.class_names) == classes
    assert sum(len(v) for v in record.val.values()) == 6


def test_named_dataset_offline_is_a_data_error_naming_the_cache(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        resolve_named_image_dataset("Imagenette-160", cache_dir=tmp_path / "cache")
    text = f"{info.value} {info.value.hint}"
    assert "imagenette2-160.tgz" in text and str(tmp_path / "cache") in text
    assert not list((tmp_path / "cache").glob("*.tgz"))  # nothing half-downloaded is kept
    assert resolve_named_image_dataset("./my_images") is None  # not a dataset name


def test_truncated_download_leaves_no_file(tmp_path, monkeypatch):
    class Short(io.BytesIO):
        headers = {"Content-Length": "1000"}
        status = 200

        def getheader(self, name, default=None):
            return self.headers.get(name, default)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Short(b"x" * 10))
    with pytest.raises(DataError):
        download_file("https://example.invalid/f.tgz", tmp_path / "f.tgz")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt"])
def test_safe_extraction_refuses_escaping_members(tmp_path, member):
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("ok/file.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(member)
        bad.size = 4
        tar.addfile(bad, io.BytesIO(b"evil"))
    with pytest.raises(DataError):
        extract_tar_safely(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    assert not (tmp_path / "out" / "ok" / "file.txt").exists()  # checked before writing
