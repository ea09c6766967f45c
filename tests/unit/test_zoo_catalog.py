"""The catalog's content: real stubs, sources that match their libraries, paired recipes."""

from __future__ import annotations

import pytest

from sparsify.recipe.parser import shipped_recipes
from sparsify.zoo.catalog import (
    SOURCE_TYPES, TIERS, VARIANTS, entries, families, find_entries_by_source,
    find_entries_by_stub, load_catalog,
)
from sparsify.zoo.sources import check_name
from sparsify.zoo.stub import parse_stub

ENTRIES = list(load_catalog().values())


def test_every_family_has_every_tier_and_variant():
    assert families() == ["image_classification", "detection", "segmentation", "nlp"]
    for family in families():
        assert {(e.tier, e.variant) for e in entries(family)} == {
            (t, v) for t in TIERS for v in VARIANTS}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.family}-{e.tier}-{e.variant}")
def test_entry_is_consistent(entry):
    stub = parse_stub(entry.stub)
    assert stub.long_form and stub.framework == "pytorch"
    assert find_entries_by_stub(entry.stub.upper()) == [entry]
    family = "detection" if entry.family == "segmentation" else entry.family
    from sparsify.recipe.shipped import gradual_recipe

    expected = f"{family}_transfer" if entry.sparsity > 0.05 else gradual_recipe(family)
    assert entry.recipe == expected and entry.recipe in shipped_recipes()
    if entry.zoo_recipe:
        parse_stub(entry.zoo_recipe)
    for source in entry.sources:
        assert source.type in SOURCE_TYPES
        check_name(source)
    if entry.variant == "dense":
        assert entry.sources and entry.sparsity == 0.0
    elif not entry.sources:
        assert entry.fallback == "dense"


def test_torchvision_sources_match_torchvision_registry():
    models = pytest.importorskip("torchvision.models")
    sources = [s for e in ENTRIES for s in e.sources if s.type == "torchvision"]
    assert len(sources) == 3
    for source in sources:
        weights = models.get_model_weights(source.name)[source.weights]
        assert weights.url == source.url and weights.url.endswith("/" + source.file)


def test_ultralytics_sources_are_ultralytics_assets():
    downloads = pytest.importorskip("ultralytics.utils.downloads")
    sources = [s for e in ENTRIES for s in e.sources if s.type == "ultralytics"]
    assert {s.name for s in sources} == {f"yolov8{k}{seg}.pt" for k in "lsn" for seg in ("", "-seg")}
    for source in sources:
        assert source.name in downloads.GITHUB_ASSETS_NAMES
        assert source.url.startswith("https://github.com/ultralytics/assets/releases/download/")
        assert source.url.endswith("/" + source.name)


def test_obert_hub_sources_per_tier():
    hub = {(e.tier, e.variant): [s.name for s in e.sources] for e in entries("nlp")}
    assert hub["largest", "dense"] == ["neuralmagic/oBERT-12-upstream-pretrained-dense"]
    assert hub["medium", "dense"] == ["neuralmagic/oBERT-6-upstream-pretrained-dense"]
    assert hub["smallest", "dense"] == ["neuralmagic/oBERT-3-upstream-pretrained-dense"]
    assert hub["largest", "sparse"][0] == "neuralmagic/oBERT-12-upstream-pruned-unstructured-90"
    assert find_entries_by_source("hf", "NEURALMAGIC/oBERT-6-upstream-pretrained-dense")[0].tier \
        == "medium"
