import pytest

from sparsify.errors import OptimLevelError, TrainKwargsError, UsageError
from sparsify.plan import (
    band_for_level, build_plan, choose_recipe, parse_device, parse_eval_metric,
    parse_optim_level, parse_train_kwargs, target_sparsity_for_level,
)
from sparsify.recipe.shipped import is_gradual_recipe
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
            assert is_gradual_recipe(plan.recipe)
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
    assert choose_recipe(ic, band_for_level(0.5), False) == "image_classification_obs"
    assert choose_recipe(resolve_use_case("sentiment_analysis"), band_for_level(0.5), False) == \
        "nlp_gmp"
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


# --- shrinking by depth at the smallest tier (LayerPruningModifier through keep_layers) ------


@pytest.mark.parametrize("level,ffn", [(0.5, None), (0.74, None), (0.75, None), (0.9, 0.55),
                                       (1.0, 0.25)])
def test_smallest_tier_shrinks_a_user_nlp_model(level, ffn):
    plan = build_plan(resolve_use_case("sentiment"), level, model="bert-base-uncased")
    assert plan.recipe == "nlp_gmp"
    data = plan.to_dict()
    if level < 0.75:
        assert "keep_layers" not in plan.recipe_args and "shrink" not in data
        assert "keep_ffn" not in plan.recipe_args
        return
    assert plan.recipe_args["keep_layers"] == 0.5
    assert data["recipe"]["args"]["keep_layers"] == 0.5
    assert data["shrink"].startswith("layers: keep 1/2 of the encoder layers")
    assert "LayerPruningModifier keep_fraction 0.5" in data["shrink"]
    assert "12 -> 6, 6 -> 3" in data["shrink"]
    assert plan.recipe_args.get("keep_ffn") == ffn
    if ffn is None:
        assert "FFN width" not in data["shrink"]
    else:
        assert f"FFN width: keep {'1/4' if ffn == 0.25 else '55%'} of each layer" in data["shrink"]
        assert f"FFNPruningModifier keep_fraction {ffn:g}" in data["shrink"]
    assert plan.target_sparsity == 0.78  # a shrunk model: the default level's target
    # the recipe takes them (the dry-run preview parses it)
    from sparsify.recipe.parser import load_recipe

    recipe = load_recipe(plan.recipe, plan.recipe_args)
    assert recipe.of_type("LayerPruningModifier")[0].build().keep_fraction == 0.5
    assert recipe.of_type("FFNPruningModifier")[0].build().keep_fraction == (ffn or 1.0)


def test_keep_layers_and_ffn_for_level():
    from sparsify.plan import keep_ffn_for_level, keep_layers_for_level

    assert keep_layers_for_level(0.7) is None and keep_ffn_for_level(0.7) is None
    assert {keep_layers_for_level(x / 100) for x in range(75, 101)} == {0.5}
    assert keep_ffn_for_level(0.75) is None
    values = [keep_ffn_for_level(x / 100) for x in range(76, 101)]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(0.97)
    assert values[-1] == 0.25 and keep_ffn_for_level(0.9) == pytest.approx(0.55)


def test_catalog_path_is_not_shrunk():
    plan = build_plan(resolve_use_case("sentiment"), 0.9)
    assert "keep_layers" not in plan.recipe_args
    assert plan.to_dict()["shrink"].startswith("none: the catalog's smallest model")


def test_the_users_keep_layers_wins():
    plan = build_plan(resolve_use_case("qa"), 1.0, model="bert-base-uncased",
                      recipe_args={"keep_layers": 0.75})
    assert plan.recipe_args["keep_layers"] == 0.75
    assert "keep 3/4 of the encoder layers" in plan.shrink
    plan = build_plan(resolve_use_case("qa"), 0.9, model="bert-base-uncased",
                      recipe_args={"keep_layers": 1.0})
    assert plan.recipe_args["keep_layers"] == 1.0  # the level still narrows the FFN
    assert plan.shrink.startswith("FFN width: keep 55%")
    plan = build_plan(resolve_use_case("qa"), 0.9, model="bert-base-uncased",
                      recipe_args={"keep_layers": 1.0, "keep_ffn": 1.0})
    assert plan.shrink == "none: keep_layers 1.0 and keep_ffn 1.0 keep every layer and channel"


def test_keep_ffn_is_shown_with_the_layers_and_holds_the_shrunk_target():
    plan = build_plan(resolve_use_case("sentiment"), 0.75, model="bert-base-uncased",
                      recipe_args={"keep_layers": 1.0, "keep_ffn": 0.25})
    assert plan.shrink.startswith("FFN width: keep 1/4 of each layer's feed-forward channels")
    assert "BERT-base 3072 -> 768, MiniLM 1536 -> 384" in plan.shrink
    # structure removed: the target is the default level's, not the 0.87 of level 0.75
    assert plan.target_sparsity == 0.78 and plan.recipe_args["target_sparsity"] == 0.78
    both = build_plan(resolve_use_case("sentiment"), 0.75, model="bert-base-uncased",
                      recipe_args={"keep_ffn": 0.5})
    assert both.shrink.startswith("layers: keep 1/2 of the encoder layers")
    assert "; FFN width: keep 1/2" in both.shrink
    plain = build_plan(resolve_use_case("sentiment"), 0.5, model="bert-base-uncased",
                       recipe_args={"keep_ffn": 1.0})
    assert plain.shrink == "none: keep_ffn 1.0 keeps every feed-forward channel"
    assert plain.target_sparsity == 0.78


def test_a_users_recipe_gets_no_keep_layers():
    plan = build_plan(resolve_use_case("ner"), 0.9, model="bert-base-uncased",
                      recipe="nlp_obs")
    assert "keep_layers" not in plan.recipe_args
    assert plan.shrink.startswith("none: a recipe given with --recipe decides")


@pytest.mark.parametrize("use_case,model", [("detection", "yolov8n.pt"),
                                            ("segmentation", None)])
def test_yolo_plans_are_not_shrunk_yet(use_case, model):
    plan = build_plan(resolve_use_case(use_case), 0.9, model=model)
    assert "keep_layers" not in plan.recipe_args and "keep_channels" not in plan.recipe_args
    assert plan.to_dict()["shrink"].startswith("none: detection models are not shrunk "
                                               "structurally yet")
    assert "shrink" not in build_plan(resolve_use_case(use_case), 0.5, model=model).to_dict()


# --- shrinking by width at the smallest tier (ChannelPruningModifier through keep_channels) ---


@pytest.mark.parametrize("level,keep,share", [(0.5, None, None), (0.74, None, None),
                                              (0.75, 0.75, "3/4"), (0.9, 0.6, "3/5"),
                                              (1.0, 0.5, "1/2")])
def test_smallest_tier_shrinks_a_user_image_model_by_channels(level, keep, share):
    plan = build_plan(resolve_use_case("ic"), level, model="resnet18")
    assert plan.recipe == "image_classification_obs"
    data = plan.to_dict()
    if keep is None:
        assert "keep_channels" not in plan.recipe_args and "shrink" not in data
        return
    assert plan.recipe_args["keep_channels"] == keep and "keep_layers" not in plan.recipe_args
    assert data["shrink"].startswith(f"channels: keep {share} of the output channels")
    assert f"ChannelPruningModifier keep_fraction {keep:g}" in data["shrink"]
    from sparsify.recipe.parser import load_recipe

    for name in ("image_classification_obs", "image_classification_transfer"):  # run decides
        shrink = load_recipe(name, plan.recipe_args | {"target_sparsity": 0.9}
                             if name.endswith("obs") else {"keep_channels": keep})
        assert shrink.of_type("ChannelPruningModifier")[0].build().keep_fraction == keep


def test_keep_channels_for_level_is_linear_from_three_quarters_to_a_half():
    from sparsify.plan import keep_channels_for_level

    assert keep_channels_for_level(0.74) is None
    values = [keep_channels_for_level(x / 100) for x in range(75, 101)]
    assert values == sorted(values, reverse=True)
    assert values[0] == 0.75 and values[-1] == 0.5
    assert keep_channels_for_level(0.8) == pytest.approx(0.7)


def test_image_catalog_path_and_users_recipe_are_not_shrunk():
    plan = build_plan(resolve_use_case("ic"), 0.9)
    assert "keep_channels" not in plan.recipe_args
    assert plan.shrink == "none: the catalog's smallest model is already small: mobilenet_v2"
    plan = build_plan(resolve_use_case("ic"), 0.9, model="resnet18", recipe="my.yaml")
    assert "keep_channels" not in plan.recipe_args
    assert "ChannelPruningModifier in it removes channels" in plan.shrink


def test_the_users_keep_channels_wins():
    plan = build_plan(resolve_use_case("ic"), 1.0, model="resnet18",
                      recipe_args={"keep_channels": 0.75})
    assert plan.recipe_args["keep_channels"] == 0.75 and "keep 3/4" in plan.shrink
    plan = build_plan(resolve_use_case("ic"), 0.8, model="resnet18",
                      recipe_args={"keep_channels": 1.0})
    assert plan.shrink == "none: keep_channels 1.0 keeps every channel"
    plan = build_plan(resolve_use_case("ic"), 0.5, model="resnet18",
                      recipe_args={"keep_channels": 0.5})  # any level, when asked
    assert plan.shrink.startswith("channels: keep 1/2")


def test_recorded_plan_keeps_keep_layers():
    import yaml

    from sparsify.plan import plan_from_dict, plan_to_yaml

    plan = build_plan(resolve_use_case("sentiment"), 0.75, model="bert-base-uncased")
    again = plan_from_dict(yaml.safe_load(plan_to_yaml(plan)))
    assert again.recipe_args == plan.recipe_args and again.shrink == plan.shrink


@pytest.mark.parametrize("use_case,model", [("sentiment_analysis", "bert-base-uncased"),
                                            ("ic", "resnet18")])
def test_a_shrunk_users_model_is_pruned_to_the_default_levels_target(use_case, model):
    """Removed structure gives levels >= 0.75 their speed; zeros above 0.78 only give size."""
    for level in (0.75, 1.0):
        plan = build_plan(resolve_use_case(use_case), level, model=model)
        assert is_gradual_recipe(plan.recipe) and plan.shrink.split(":")[0] in ("layers",
                                                                                "channels")
        assert plan.recipe_args["target_sparsity"] == plan.target_sparsity == 0.78
        assert any("shrunk structurally" in note for note in plan.notes)
    # nothing removed (keep 1.0): the level's own target; an explicit target always wins
    keeps = (("keep_layers", "keep_ffn") if use_case == "sentiment_analysis"
             else ("keep_channels",))
    plan = build_plan(resolve_use_case(use_case), 1.0, model=model,
                      recipe_args=dict.fromkeys(keeps, 1.0))
    assert plan.recipe_args["target_sparsity"] == target_sparsity_for_level(1.0) == 0.95
    plan = build_plan(resolve_use_case(use_case), 1.0, model=model,
                      recipe_args={"target_sparsity": 0.9})
    assert plan.recipe_args["target_sparsity"] == 0.9
    # the catalog path is not shrunk: the smallest tier's model gets the level's target
    assert build_plan(resolve_use_case(use_case), 1.0).recipe_args["target_sparsity"] == 0.95
