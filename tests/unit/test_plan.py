import pytest

from sparsify.errors import OptimLevelError, TrainKwargsError, UsageError
from sparsify.plan import (
    band_for_level, build_plan, choose_recipe, parse_device, parse_eval_metric,
    parse_optim_level, parse_train_kwargs, target_sparsity_for_level,
)
from sparsify.usecases import USE_CASES, resolve_use_case
from sparsify.zoo.catalog import TIERS, VARIANTS, families, load_catalog
from sparsify.zoo.stub import parse_stub

# level -> (tier, pruned, quantized)
BANDS = {
    0.0: ("largest", False, False), 0.1: ("largest", False, True),
    0.2499: ("largest", False, True), 0.25: ("largest", True, True),
    0.3: ("largest", True, True), 0.5: ("medium", True, True), 0.74: ("medium", True, True),
    0.75: ("smallest", True, True), 1.0: ("smallest", True, True),
}


@pytest.mark.parametrize("level,expected", BANDS.items())
def test_bands(level, expected):
    band = band_for_level(level)
    assert (band.tier, band.pruned, band.quantized) == expected


@pytest.mark.parametrize("text,value", [("0.5", 0.5), ("0", 0.0), ("1", 1.0), ("50", 0.5),
                                        ("100", 1.0), ("2", 0.02), ("0.0", 0.0), (" 75 ", 0.75)])
def test_parse_optim_level(text, value):
    assert parse_optim_level(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-0.1", "abc", "101", "1.5", "nan", "50.5", ""])
def test_bad_optim_level(text):
    with pytest.raises(OptimLevelError) as info:
        parse_optim_level(text)
    assert "optim level" in str(info.value) and info.value.exit_code == 2


def test_target_sparsity_monotone_and_zero_when_not_pruned():
    assert target_sparsity_for_level(0.0) == 0 and target_sparsity_for_level(0.2) == 0
    values = [target_sparsity_for_level(x / 100) for x in range(25, 101)]
    assert values == sorted(values)
    assert values[0] == 0.70 and values[-1] == 0.95
    assert target_sparsity_for_level(0.5) == 0.78


@pytest.mark.parametrize("uc", USE_CASES, ids=lambda u: u.id)
@pytest.mark.parametrize("level", [0.0, 0.1, 0.3, 0.5, 0.9])
def test_plan_every_use_case_and_band(uc, level):
    plan = build_plan(uc, level)
    band = band_for_level(level)
    assert plan.band == band
    entry = plan.model.entry
    assert entry.tier == band.tier and entry.family == uc.catalog_family
    family = "detection" if uc.catalog_family in ("detection", "segmentation") else uc.catalog_family
    assert plan.recipe.startswith(family + "_")
    if not band.pruned:
        assert plan.recipe.endswith("_quant" if band.quantized else "_finetune")
        assert "target_sparsity" not in plan.recipe_args
    else:
        if entry.sparsity > 0.05:  # a sparse checkpoint with a remote source (oBERT-12 90%)
            assert entry.variant == "sparse" and entry.sources
            assert plan.recipe.endswith("_transfer")
        else:  # nothing in the local zoo: the dense fallback is pruned gradually to the target
            assert entry.variant == "dense"
            assert plan.recipe.endswith("_gmp")
            assert plan.recipe_args["target_sparsity"] == target_sparsity_for_level(level)
    data = plan.to_dict()
    assert data["tier"] == band.tier and data["use_case"] == uc.id


def test_plan_uses_local_sparse_model_when_registered(_isolated_zoo):
    uc = resolve_use_case("ic")
    stub = load_catalog()["image_classification", "medium", "sparse"].stub
    folder = _isolated_zoo / parse_stub(stub).folder_name / "training"
    folder.mkdir(parents=True)
    plan = build_plan(uc, 0.5)
    assert plan.model.spec == stub and str(folder.parent) in plan.model.location
    assert plan.recipe == "image_classification_transfer"
    assert "target_sparsity" not in plan.recipe_args


def test_user_model_overrides_model_not_scheme(tmp_path):
    model = tmp_path / "m.pth"
    model.write_bytes(b"x")
    plan = build_plan(resolve_use_case("ic"), 0.9, model=str(model))
    assert plan.model.origin == "user" and plan.model.local_path == str(model.resolve())
    assert plan.band.tier == "smallest" and plan.band.pruned
    assert any("recipe chosen after loading" in n for n in plan.notes)


def test_choose_recipe_table():
    ic = resolve_use_case("ic")
    assert choose_recipe(ic, band_for_level(0.0), True) == "image_classification_finetune"
    assert choose_recipe(ic, band_for_level(0.1), False) == "image_classification_quant"
    assert choose_recipe(ic, band_for_level(0.5), True) == "image_classification_transfer"
    assert choose_recipe(ic, band_for_level(0.5), False) == "image_classification_gmp"
    assert choose_recipe(resolve_use_case("segmentation"), band_for_level(0.5), False) == \
        "detection_gmp"


def test_catalog_complete():
    table = load_catalog()
    for family in ("image_classification", "detection", "segmentation", "nlp"):
        for tier in TIERS:
            for variant in VARIANTS:
                entry = table[family, tier, variant]
                parse_stub(entry.stub)
                assert entry.sources or entry.fallback
    assert set(families()) == {"image_classification", "detection", "segmentation", "nlp"}


def test_train_kwargs():
    ic = resolve_use_case("ic")
    assert parse_train_kwargs('{"batch_size": 8, "learning_rate": 1}', ic) == {
        "batch_size": 8, "learning_rate": 1.0}
    with pytest.raises(TrainKwargsError) as info:
        parse_train_kwargs('{"batch_sise": 8}', ic)
    assert "Did you mean 'batch_size'?" in str(info.value) and "image_size" in str(info.value)
    with pytest.raises(TrainKwargsError, match="max_seq_length"):
        parse_train_kwargs('{"max_seq_length": 8}', ic)
    with pytest.raises(TrainKwargsError, match="must be int"):
        parse_train_kwargs('{"batch_size": "8"}', ic)
    with pytest.raises(TrainKwargsError, match="> 0"):
        parse_train_kwargs('{"batch_size": 0}', ic)
    with pytest.raises(TrainKwargsError, match="not valid JSON"):
        parse_train_kwargs("{batch_size: 8}", ic)
    with pytest.raises(TrainKwargsError, match="optimizer"):
        parse_train_kwargs('{"optimizer": "lion"}', ic)
    assert parse_train_kwargs('{"max_seq_length": 64}', resolve_use_case("qa")) == {
        "max_seq_length": 64}


def test_device_and_metric():
    assert parse_device("CUDA:1") == "cuda:1"
    with pytest.raises(UsageError, match="Valid: auto"):
        parse_device("gpu")
    ic = resolve_use_case("ic")
    assert parse_eval_metric(None, ic) == "top1"
    assert parse_eval_metric("accuracy", ic) == "top1"
    with pytest.raises(UsageError, match="Valid: top1"):
        parse_eval_metric("f1", ic)
