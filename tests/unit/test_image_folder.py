"""Tests of the image-classification data layer (offline, tiny generated images)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Self

import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as TV_EXTENSIONS

from sparsify.data import image_datasets as imd
from sparsify.data.image_datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_datasets,
    transform_config,
)
from sparsify.data.image_folder import IMG_EXTENSIONS, validate_image_folder
from sparsify.data.image_split import (
    LEGACY_SPLIT_FORMAT,
    DataSplit,
    read_split,
    split_train_val,
    write_split,
)
from sparsify.data.named_datasets import resolve_named_image_dataset
from sparsify.data.synthetic import make_synthetic_image_folder
from sparsify.errors import DataError
from sparsify.fetch import download_file, extract_archive


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


def _message(exc_info: pytest.ExceptionInfo[DataError]) -> str:
    err = exc_info.value
    return f"{err.message}\n{err.hint or ''}"


# ---------------------------------------------------------------------------------------------
# validate_image_folder: the error cases
# ---------------------------------------------------------------------------------------------


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(missing)
    assert str(missing) in exc_info.value.message
    assert "does not exist" in exc_info.value.message
    assert "train/" in exc_info.value.hint and "val/" in exc_info.value.hint


def test_file_instead_of_folder(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(archive)
    assert str(archive) in exc_info.value.message
    assert "not a folder" in exc_info.value.message
    assert "extract" in exc_info.value.hint


def test_no_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "loose.png")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    msg = exc_info.value.message
    assert "No class folders" in msg and str(tmp_path) in msg
    assert "loose.png" in msg  # says the images sit directly in the folder


def test_class_folder_without_images_lists_extensions(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    assert str(tmp_path / "dog") in exc_info.value.message
    assert "notes.txt" in exc_info.value.message
    for ext in IMG_EXTENSIONS:
        assert ext in exc_info.value.hint


def test_single_class_rejected(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "cat" / "b.png")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    assert "'cat'" in exc_info.value.message
    assert "at least 2 classes" in exc_info.value.message


def test_val_classes_differ_from_train(tmp_path: Path) -> None:
    for cls in ("ant", "bee", "cow"):
        _png(tmp_path / "train" / cls / "1.png")
    for cls in ("ant", "bee", "dog"):
        _png(tmp_path / "val" / cls / "1.png")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    msg = exc_info.value.message
    assert "missing from val/" in msg and "'cow'" in msg
    assert "not in train/" in msg and "'dog'" in msg
    assert "'ant'" not in msg


def test_validation_folder_name_accepted_and_test_ignored(tmp_path: Path) -> None:
    for cls in ("b", "a"):
        _png(tmp_path / "train" / cls / "1.png")
        _png(tmp_path / "validation" / cls / "1.png")
    _png(tmp_path / "test" / "zzz" / "1.png")
    layout = validate_image_folder(tmp_path)
    assert layout.val_dir == tmp_path / "validation"
    assert layout.class_names == ("a", "b")
    assert not layout.needs_split


def test_val_without_train_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "val" / "a" / "1.png")
    _png(tmp_path / "val" / "b" / "1.png")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    assert "no train/ folder" in exc_info.value.message
    assert str(tmp_path / "train") in exc_info.value.hint


def test_train_without_val_is_split(tmp_path: Path) -> None:
    make_synthetic_image_folder(tmp_path / "train", per_class=3, size=16)
    layout = validate_image_folder(tmp_path)
    assert layout.needs_split
    assert layout.train_dir == tmp_path / "train"
    assert layout.class_names == ("circle", "square", "triangle")


# ---------------------------------------------------------------------------------------------
# validate_image_folder: class order, hidden files, unreadable files
# ---------------------------------------------------------------------------------------------


def test_image_extensions_match_torchvision() -> None:
    assert tuple(IMG_EXTENSIONS) == tuple(TV_EXTENSIONS)


def test_class_order_is_sorted_like_torchvision_for_train_and_val(tmp_path: Path) -> None:
    names = ["zebra", "Apple", "mango", "b10", "b2"]
    for cls in names:
        _png(tmp_path / "train" / cls / "1.png")
        _png(tmp_path / "val" / cls / "1.png")
    layout = validate_image_folder(tmp_path)
    assert list(layout.class_names) == ImageFolder(str(tmp_path / "train")).classes
    assert list(layout.class_names) == ["Apple", "b10", "b2", "mango", "zebra"]
    assert list(layout.train_samples) == list(layout.class_names)
    assert list(layout.val_samples or {}) == list(layout.class_names)


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "1.jpeg")
    _png(tmp_path / ".cache" / "x.png")  # a hidden folder is not a class
    _broken(tmp_path / "a" / ".DS_Store.png")  # a hidden file is not an image to check
    _png(tmp_path / "a" / ".hidden_dir" / "2.png")
    layout = validate_image_folder(tmp_path)
    assert layout.class_names == ("a", "b")
    assert layout.train_samples["a"] == [tmp_path / "a" / "1.png"]
    assert layout.skipped == ()


def test_unreadable_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _png(tmp_path / "a" / "1.png")
    bad = _broken(tmp_path / "a" / "2.jpg")
    _png(tmp_path / "b" / "1.png")
    with caplog.at_level(logging.WARNING, logger="sparsify.data.image_folder"):
        layout = validate_image_folder(tmp_path)
    assert layout.train_samples["a"] == [tmp_path / "a" / "1.png"]
    assert layout.skipped == (bad,)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(bad) in warnings[0].getMessage()
    assert "1 image file" in warnings[0].getMessage()


def test_class_left_empty_by_unreadable_files_is_fatal(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png")
    _broken(tmp_path / "b" / "1.png")
    _broken(tmp_path / "b" / "2.png")
    with pytest.raises(DataError) as exc_info:
        validate_image_folder(tmp_path)
    msg = exc_info.value.message
    assert "'b'" in msg and "no readable image" in msg and "1.png" in msg


def test_unreadable_file_in_val_is_skipped(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        _png(tmp_path / "train" / cls / "1.png")
        _png(tmp_path / "val" / cls / "1.png")
    bad = _broken(tmp_path / "val" / "a" / "2.png")
    layout = validate_image_folder(tmp_path)
    assert layout.val_samples is not None
    assert layout.val_samples["a"] == [tmp_path / "val" / "a" / "1.png"]
    assert layout.skipped == (bad,)


# ---------------------------------------------------------------------------------------------
# split_train_val and the split record
# ---------------------------------------------------------------------------------------------


def _fake_samples(counts: dict[str, int]) -> dict[str, list[Path]]:
    return {c: [Path(f"/data/{c}/{i:03d}.png") for i in range(n)] for c, n in counts.items()}


def test_split_is_stratified_and_keeps_every_class_on_both_sides() -> None:
    samples = _fake_samples({"big": 100, "mid": 30, "tiny": 2, "three": 3})
    train, val = split_train_val(samples, val_fraction=0.2, seed=1)
    assert {c: len(v) for c, v in val.items()} == {"big": 20, "mid": 6, "tiny": 1, "three": 1}
    for cls, paths in samples.items():
        assert len(train[cls]) >= 1 and len(val[cls]) >= 1
        assert set(train[cls]).isdisjoint(val[cls])
        assert sorted(train[cls] + val[cls]) == sorted(paths)
        assert train[cls] == sorted(train[cls]) and val[cls] == sorted(val[cls])
    assert list(train) == sorted(samples)


def test_split_is_deterministic_per_seed_and_order_independent() -> None:
    samples = _fake_samples({"a": 50, "b": 40})
    shuffled = {c: list(reversed(p)) for c, p in reversed(list(samples.items()))}
    first = split_train_val(samples, 0.1, seed=7)
    assert split_train_val(shuffled, 0.1, seed=7) == first
    assert split_train_val(samples, 0.1, seed=8)[1] != first[1]


def test_split_of_one_class_does_not_depend_on_other_classes() -> None:
    with_b = split_train_val(_fake_samples({"a": 50, "b": 40}), 0.1, seed=3)
    without_b = split_train_val(_fake_samples({"a": 50}), 0.1, seed=3)
    assert with_b[1]["a"] == without_b[1]["a"]


def test_split_needs_two_images_per_class() -> None:
    with pytest.raises(DataError) as exc_info:
        split_train_val(_fake_samples({"a": 5, "lonely": 1}), 0.1)
    msg = _message(exc_info)
    assert "'lonely' (1)" in msg and "at least 2" in msg
    assert "train/" in exc_info.value.hint and "val/" in exc_info.value.hint


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError) as exc_info:
        split_train_val(_fake_samples({"a": 5, "b": 5}), fraction)
    assert str(fraction) in exc_info.value.message
    assert "between 0 and 1" in exc_info.value.message


def test_split_record_round_trip_is_relative_and_atomic(tmp_path: Path) -> None:
    root = tmp_path / "data"
    samples = {c: [root / c / f"{i}.png" for i in range(6)] for c in ("x", "y")}
    train, val = split_train_val(samples, 0.3, seed=5)
    split = DataSplit(root, ("x", "y"), train, val, seed=5, val_fraction=0.3)
    record_path = tmp_path / "run" / "data_split.json"
    assert write_split(record_path, split) == record_path

    raw = json.loads(record_path.read_text())
    # stored relative to the root
    assert raw["train"][0] == {"path": "x/" + train["x"][0].name, "label": "x"}
    assert raw["seed"] == 5 and raw["val_fraction"] == 0.3
    assert sorted(p.name for p in record_path.parent.iterdir()) == ["data_split.json"]

    back = read_split(record_path)
    assert back.class_names == ("x", "y")
    assert back.train == train and back.val == val
    assert back.seed == 5 and back.val_fraction == 0.3

    moved = read_split(record_path, root=tmp_path / "elsewhere")
    assert moved.val["y"][0] == tmp_path / "elsewhere" / "y" / val["y"][0].name


def test_read_split_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="Cannot read"):
        read_split(bad)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not a data split record"):
        read_split(other)


# ---------------------------------------------------------------------------------------------
# build_datasets and transforms
# ---------------------------------------------------------------------------------------------


def test_build_datasets_from_single_tree(tmp_path: Path) -> None:
    root = make_synthetic_image_folder(tmp_path / "data", per_class=10, size=24)
    layout = validate_image_folder(root)
    record = tmp_path / "run" / "split.json"
    train_ds, val_ds, classes = build_datasets(
        layout, image_size=20, val_fraction=0.2, seed=3, split_record_path=record
    )
    assert classes == ["circle", "square", "triangle"]
    assert len(train_ds) == 24 and len(val_ds) == 6
    assert Counter(val_ds.targets) == {0: 2, 1: 2, 2: 2}
    assert {p for p, _ in train_ds.samples}.isdisjoint({p for p, _ in val_ds.samples})
    for ds in (train_ds, val_ds):
        image, label = ds[0]
        assert isinstance(image, torch.Tensor) and image.shape == (3, 20, 20)
        assert image.dtype == torch.float32 and 0 <= label < 3
    # The recorded split is the one used.
    split = read_split(record)
    assert sorted(p for ps in split.val.values() for p in ps) == sorted(
        p for p, _ in val_ds.samples
    )
    assert split.val_fraction == 0.2 and split.seed == 3


def test_build_datasets_uses_val_folder_and_converts_to_rgb(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        _png(tmp_path / "train" / cls / "1.png")
        _png(tmp_path / "val" / cls / "1.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "train" / "a" / "gray.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "val" / "b" / "rgba.png")
    layout = validate_image_folder(tmp_path)
    train_ds, val_ds, _ = build_datasets(layout, image_size=16)
    assert len(train_ds) == 3 and len(val_ds) == 3
    for ds in (train_ds, val_ds):
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 16, 16)


def test_max_samples_are_respected_stratified_and_deterministic(tmp_path: Path) -> None:
    root = make_synthetic_image_folder(tmp_path / "d", per_class=12, size=16, split=True)
    layout = validate_image_folder(root)
    train_ds, val_ds, _ = build_datasets(
        layout, image_size=16, max_train_samples=9, max_eval_samples=4
    )
    assert len(train_ds) == 9 and Counter(train_ds.targets) == {0: 3, 1: 3, 2: 3}
    assert len(val_ds) == 4
    again, _, _ = build_datasets(layout, image_size=16, max_train_samples=9, max_eval_samples=4)
    assert again.samples == train_ds.samples
    other_seed, _, _ = build_datasets(layout, image_size=16, seed=1, max_train_samples=9)
    assert other_seed.samples != train_ds.samples
    with pytest.raises(DataError, match="max_train_samples"):
        build_datasets(layout, image_size=16, max_train_samples=0)


def test_transforms_and_transform_config() -> None:
    config = transform_config(224)
    assert config["resize"] == 256 and config["crop"] == 224
    assert config["mean"] == list(IMAGENET_MEAN) and config["std"] == list(IMAGENET_STD)
    assert transform_config(160)["resize"] == 182
    image = Image.new("RGB", (50, 30), (255, 255, 255))
    out = imd.build_eval_transform(24)(image)
    assert out.shape == (3, 24, 24)
    expected = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(out[0], torch.full((24, 24), expected), atol=1e-5)
    assert imd.build_train_transform(24)(image).shape == (3, 24, 24)
    with pytest.raises(DataError, match="image_size"):
        transform_config(0)


def test_synthetic_folder_is_deterministic(tmp_path: Path) -> None:
    a = make_synthetic_image_folder(tmp_path / "a", per_class=2, size=16, seed=4)
    b = make_synthetic_image_folder(tmp_path / "b", per_class=2, size=16, seed=4)
    c = make_synthetic_image_folder(tmp_path / "c", per_class=2, size=16, seed=5)
    name = Path("square") / "square_0001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()
    with pytest.raises(ValueError, match="At most"):
        make_synthetic_image_folder(tmp_path / "x", classes=[str(i) for i in range(9)])


# ---------------------------------------------------------------------------------------------
# Safe extraction
# ---------------------------------------------------------------------------------------------


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _extract_dataset_archive(archive: Path, dest: Path) -> Path:
    """The named datasets' extraction: sparsify.fetch with DataError, links inside the tree kept."""
    return extract_archive(archive, dest, error=DataError, allow_links=True)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../evil"), "contains '..'"),
        (_file("ok/../../evil"), "contains '..'"),
        (_file("/tmp/evil_absolute"), "absolute path"),
        (_link("ok/link", "../../outside"), "outside the destination"),
        (_link("ok/abs", "/etc/passwd"), "absolute path"),
        (_link("ok/hard", "../outside", tarfile.LNKTYPE), "outside the destination"),
        (_link("dev", "", tarfile.CHRTYPE), "device file"),
    ],
)
def test_safe_extraction_rejects_unsafe_members(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], reason: str
) -> None:
    archive = _tar_with(tmp_path / "a.tgz", [_file("ok/good.txt"), member])
    dest = tmp_path / "out"
    with pytest.raises(DataError) as exc_info:
        _extract_dataset_archive(archive, dest)
    msg = exc_info.value.message
    assert member[0].name in msg and reason in msg and str(archive) in msg
    # Nothing is written when any member is unsafe.
    assert not (dest / "ok" / "good.txt").exists()
    assert not (tmp_path / "evil").exists()


def test_safe_extraction_extracts_a_good_archive(tmp_path: Path) -> None:
    archive = _tar_with(
        tmp_path / "a.tgz", [_file("top/a/1.txt", b"one"), _link("top/b", "a/1.txt")]
    )
    _extract_dataset_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "a" / "1.txt").read_bytes() == b"one"
    assert (tmp_path / "out" / "top" / "b").read_bytes() == b"one"


def test_damaged_archive_is_a_data_error(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="damaged"):
        _extract_dataset_archive(archive, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Named datasets and downloads
# ---------------------------------------------------------------------------------------------


class _FakeResponse:
    def __init__(self, data: bytes, content_length: int | None, on_read=None) -> None:
        self._buf = io.BytesIO(data)
        self.headers = {} if content_length is None else {"Content-Length": str(content_length)}
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        if self._on_read is not None:
            self._on_read()
        return self._buf.read(n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _imagenette_like_tgz(stem: str) -> bytes:
    buf = io.BytesIO()
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for part in ("train", "val"):
            for cls in ("n01440764", "n02102040"):
                info = tarfile.TarInfo(f"{stem}/{part}/{cls}/img.png")
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
    return buf.getvalue()


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


def test_unknown_name_is_not_a_named_dataset(tmp_path: Path) -> None:
    assert resolve_named_image_dataset("./my_images", cache_dir=tmp_path) is None
    assert resolve_named_image_dataset("imagenet", cache_dir=tmp_path) is None


def test_offline_download_error_mentions_cache_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as exc_info:
        resolve_named_image_dataset("ImageNette-160", cache_dir=cache)
    err = exc_info.value
    assert str(cache) in err.message
    assert "imagenette2-160.tgz" in err.message and "name resolution" in err.message
    assert "download" in err.hint.lower() and str(cache) in err.hint
    assert list(cache.iterdir()) == []  # no partial file left behind


def test_cache_folder_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    monkeypatch.setenv("SPARSIFY_DATA_CACHE", str(tmp_path / "env_cache"))
    with pytest.raises(DataError) as exc_info:
        resolve_named_image_dataset("imagenette")
    assert str(tmp_path / "env_cache") in exc_info.value.message


def test_truncated_download_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: _FakeResponse(b"x" * 10, content_length=1000)
    )
    dest = tmp_path / "dl" / "file.tgz"
    with pytest.raises(DataError) as exc_info:
        download_file("https://example.invalid/file.tgz", dest, error=DataError, hint="offline")
    assert "incomplete" in exc_info.value.message and "10 of 1000" in exc_info.value.message
    assert list(dest.parent.iterdir()) == []


def test_download_writes_a_temporary_file_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "file.bin"
    seen: list[list[str]] = []

    def on_read() -> None:
        assert not dest.exists()
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    data = b"abc" * 1000
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: _FakeResponse(data, len(data), on_read)
    )
    assert download_file("https://example.invalid/file.bin", dest, error=DataError,
                         hint="offline") == dest
    assert dest.read_bytes() == data
    assert seen and all(len(names) == 1 and names[0].endswith(".part") for names in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_named_dataset_download_extract_and_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _imagenette_like_tgz("imagenette2-320")
    urls: list[str] = []

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> _FakeResponse:
        urls.append(request.full_url)
        return _FakeResponse(payload, len(payload))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    folder = resolve_named_image_dataset("imagenette_320", cache_dir=cache)
    assert folder == cache / "imagenette2-320"
    assert urls == ["https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"]
    assert sorted(p.name for p in cache.iterdir()) == ["imagenette2-320"]  # archive removed
    layout = validate_image_folder(folder)
    assert layout.class_names == ("n01440764", "n02102040") and not layout.needs_split

    _offline(monkeypatch)  # the second call must not touch the network
    assert resolve_named_image_dataset("IMAGENETTE-320", cache_dir=cache) == folder


def test_named_dataset_uses_an_archive_put_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "imagenette2.tgz").write_bytes(_imagenette_like_tgz("imagenette2"))
    folder = resolve_named_image_dataset("imagenette", cache_dir=cache)
    assert folder == cache / "imagenette2"
    assert (folder / "val" / "n02102040" / "img.png").is_file()
    assert (cache / "imagenette2.tgz").is_file()  # the user's archive is kept


def test_named_dataset_truncated_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _imagenette_like_tgz("imagenette2-160")
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: _FakeResponse(payload[:100], len(payload))
    )
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as exc_info:
        resolve_named_image_dataset("imagenette-160", cache_dir=cache)
    assert "imagenette2-160.tgz" in exc_info.value.message
    assert f"100 of {len(payload)}" in exc_info.value.message
    assert str(cache) in exc_info.value.hint
    assert list(cache.iterdir()) == []


def test_named_dataset_archive_with_an_escaping_link_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = _tar_with(
        cache / "imagenette2.tgz",
        [_file("imagenette2/train/a/1.png"), _link("imagenette2/train/b", "../../../../etc")],
    )
    with pytest.raises(DataError) as exc_info:
        resolve_named_image_dataset("imagenette", cache_dir=cache)
    msg = exc_info.value.message
    assert "imagenette2/train/b" in msg and "outside the destination" in msg
    assert sorted(p.name for p in cache.iterdir()) == [archive.name]  # the user's archive kept


def test_read_split_of_an_earlier_run(tmp_path: Path) -> None:
    """Records written before the common format are still read."""
    record = tmp_path / "data_split.json"
    record.write_text(json.dumps({
        "format": LEGACY_SPLIT_FORMAT, "version": 1, "root": str(tmp_path / "data"),
        "class_names": ["x", "y"], "seed": 3, "val_fraction": 0.2, "max_train_samples": None,
        "max_eval_samples": None, "num_train": 2, "num_val": 2,
        "train": {"x": ["x/1.png"], "y": ["y/1.png"]},
        "val": {"x": ["x/2.png"], "y": ["y/2.png"]}, "note": "kept"}))
    split = read_split(record)
    assert split.class_names == ("x", "y") and split.seed == 3 and split.val_fraction == 0.2
    assert split.val["y"] == [tmp_path / "data" / "y" / "2.png"]
    assert split.extra == {"note": "kept"}


def test_a_symlink_loop_is_read_once(tmp_path, caplog):
    from PIL import Image

    from sparsify.data.image_folder import validate_image_folder

    for cls in ("a", "b"):
        for i in range(3):
            path = tmp_path / "d" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)
    (tmp_path / "d" / "a" / "loop").symlink_to(tmp_path / "d" / "a")  # a -> a -> a ...
    (tmp_path / "d" / "b" / "again.png").symlink_to(tmp_path / "d" / "b" / "0.png")
    layout = validate_image_folder(tmp_path / "d")
    counts = {cls: len(files) for cls, files in layout.train_samples.items()}
    assert counts == {"a": 3, "b": 3}, counts
    assert "link loop" in caplog.text
