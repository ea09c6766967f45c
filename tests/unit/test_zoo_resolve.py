"""The resolver: local zoo, SparseZoo cache, Hugging Face cache (offline), failures, safety."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sparsify.errors import ModelNotFoundError, StubError
from sparsify.zoo.catalog import load_catalog
from sparsify.zoo.resolve import locate_local, resolve_model, resolve_model_path
from sparsify.zoo.stub import parse_stub

PRUNED95 = "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95_quant-none"
OBERT90 = ("zoo:nlp/masked_language_modeling/obert-base/pytorch/huggingface/"
           "wikipedia_bookcorpus/pruned90-none")
HUB_ID = "neuralmagic/oBERT-12-upstream-pruned-unstructured-90"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Every cache the resolver reads, inside tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    return tmp_path


def make_hf_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out ``repo_id`` the way huggingface_hub caches it: blobs, refs/main, snapshots."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def test_stub_resolves_from_local_zoo(_isolated_zoo, caches):
    folder = _isolated_zoo / parse_stub(PRUNED95).folder_name
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "model.pth").write_bytes(b"weights")
    (folder / "recipe").mkdir()
    (folder / "recipe" / "recipe.md").write_text("---\nnum_epochs: 1\n---\n")
    resolved = resolve_model(PRUNED95 + "?recipe_type=original", download=False)
    assert resolved.path == folder and resolved.origin == "local zoo"
    assert resolved.recipes == [folder / "recipe" / "recipe.md"]
    assert resolved.entry is load_catalog()["image_classification", "largest", "sparse"]
    assert resolve_model_path(PRUNED95) == folder


def test_second_zoo_root_is_searched(tmp_path, monkeypatch, caches):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / parse_stub(PRUNED95).folder_name / "training").mkdir(parents=True)
    monkeypatch.setenv("SPARSIFY_ZOO_PATH", os.pathsep.join([str(first), str(second)]))
    assert resolve_model(PRUNED95, download=False).path.is_relative_to(second)


@pytest.mark.parametrize("layout", ["uuid", "namespace"])
def test_stub_resolves_from_sparsezoo_cache_by_model_card(_isolated_zoo, caches, layout):
    root = _isolated_zoo / "sparsezoo"
    folder = root / ("5c5e4a02-0a5c-4b6b-9c15-0d6b06b1f0c7" if layout == "uuid"
                     else "neuralmagic/resnet50-pruned95-quant")
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "model.pth").write_bytes(b"w")
    # A card that also mentions another model's stub (its teacher) must not be matched to it.
    (folder / "model.md").write_text(
        "---\ndomain: cv\nsub_domain: classification\narchitecture: resnet_v1\n"
        "sub_architecture: 50\nframework: pytorch\nrepo: sparseml\ndataset: imagenet\n"
        "training_scheme: none\nsparse_tag: pruned95_quant-none\n---\n"
        "Distilled from zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/base-none\n")
    other = root / "000-notes"  # sorts first: only the card's own stub may win
    (other / "training").mkdir(parents=True)
    (other / "model.md").write_text("# notes\nsee " + PRUNED95 + "\n")  # mentions only
    resolved = resolve_model(PRUNED95, download=False)
    assert resolved.origin == "SparseZoo cache" and resolved.path == folder
    assert [a.found for a in resolved.attempts] == [False, True]


def test_sparsezoo_cache_stub_recorded_in_text(_isolated_zoo, caches):
    folder = _isolated_zoo / "sparsezoo" / "abc"
    (folder / "deployment").mkdir(parents=True)
    (folder / "deployment" / "model.onnx").write_bytes(b"onnx")
    (folder / "metadata.json").write_text('{"stub": "%s"}' % PRUNED95)
    assert resolve_model(PRUNED95, download=False).path == folder


def test_hub_id_resolves_from_prepopulated_hf_cache_offline(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = make_hf_snapshot(caches / "hf", HUB_ID, {"config.json": b'{"model_type": "bert"}',
                                                        "model.safetensors": b"x"})
    assert resolve_model_path(HUB_ID) == snapshot
    resolved = resolve_model(OBERT90)  # the catalog stub, through its first Hub source
    assert resolved.origin == "hf" and resolved.path == snapshot
    assert [a.found for a in resolved.attempts] == [False, False, True]


def test_hub_fetch_reads_the_cache_through_huggingface_hub_offline(caches, monkeypatch):
    from sparsify.zoo.catalog import Source
    from sparsify.zoo.sources import _fetch_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = make_hf_snapshot(caches / "hf", HUB_ID, {"config.json": b"{}"})
    assert _fetch_hf(Source("hf", HUB_ID), progress=False, trust_remote_code=False) == snapshot
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        _fetch_hf(Source("hf", "neuralmagic/not-cached"), progress=False,
                  trust_remote_code=False)


def test_every_source_failing_lists_each_source_and_the_add_command(_isolated_zoo, caches,
                                                                     monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(OBERT90)
    message = info.value.message
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(lines) == 4, message
    assert "local zoo" in lines[0] and "no model folder" in lines[0]
    assert "SparseZoo cache" in lines[1] and "does not exist" in lines[1]
    assert lines[2].startswith("  - hf:neuralmagic/oBERT-12-upstream-pruned-unstructured-90:")
    assert "HF_HUB_OFFLINE" in lines[2] and "-90-v2" in lines[3]
    assert f"sparsify.zoo add {OBERT90} /path/to/model-folder-or-checkpoint" in info.value.hint
    assert info.value.exit_code == 1


def test_sparsezoo_only_stub_says_the_servers_are_gone(caches):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(PRUNED95)
    assert "only on SparseZoo's servers" in info.value.message
    unknown = "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned99-none"
    with pytest.raises(ModelNotFoundError, match="stub not in the catalog"):
        resolve_model_path(unknown)


@pytest.mark.parametrize("bad", [
    "zoo:cv/classification/../../../../etc/pytorch/x",
    "zoo:/etc/passwd/a/b/c/d/e",
    "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/..",
    "zoo:cv\\..\\x",
])
def test_traversal_stubs_are_refused_before_any_file_access(bad, caches):
    with pytest.raises(StubError):
        resolve_model(bad, download=False)
    with pytest.raises(StubError):
        resolve_model_path(bad)


@pytest.mark.parametrize("name", ["../evil/x", "org/..", "org/na me", "/abs/x"])
def test_bad_hub_ids_never_reach_a_cache(name, caches):
    from sparsify.zoo.sources import hf_cached_snapshot, is_hub_id

    assert not is_hub_id(name)
    assert hf_cached_snapshot(name) is None


def test_framework_names_keep_none_semantics(caches):
    assert resolve_model_path("resnet50") is None
    assert resolve_model_path("yolov8n.pt") is None
    assert resolve_model_path("vit_b_16") is None  # not in the catalog: torchvision resolves it


def test_cached_ultralytics_and_torchvision_weights(caches):
    yolo = caches / "xdg" / "sparsify" / "weights" / "ultralytics" / "yolov8n.pt"
    yolo.parent.mkdir(parents=True)
    yolo.write_bytes(b"pt")
    assert resolve_model_path("yolov8n.pt") == yolo
    stub = load_catalog()["detection", "smallest", "dense"].stub
    assert resolve_model_path(stub) == yolo

    weights = caches / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"sd")
    stub = load_catalog()["image_classification", "largest", "dense"].stub
    resolved = resolve_model(stub, download=False)
    assert resolved.origin == "torchvision" and resolved.path == weights
    # a bare torchvision state dict is for torchvision's builder, not for a checkpoint loader
    assert resolve_model_path(stub) is None
    assert locate_local("resnet50").path == weights


def test_missing_paths_still_reported_as_missing(caches):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path("./nothing/here.pth")
