"""LayerPruningModifier: whole transformer layers removed before training, masks only on the
kept layers, and a shrunk checkpoint restored into a fresh full-depth model."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyResNet

from sparsify.errors import ModelNotFoundError, RecipeError
from sparsify.modifiers.layer_pruning import LayerPruningModifier, kept_count, kept_indices
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import load_recipe, parse_recipe
from sparsify.trainers.common import restore_checkpoint

transformers = pytest.importorskip("transformers")

SPE = 4


def tiny_bert(layers=4, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def ids(seed=1):
    return torch.randint(0, 60, (3, 10), generator=torch.Generator().manual_seed(seed))


def recipe(shrink="keep_fraction: 0.5", params="__COMPUTE_LAYERS__", quant=False):
    # the shrinking modifier comes last: the lifecycle still initialises it first
    text = f"""
pruning_modifiers:
  - !GMPruningModifier
      params: {params}
      init_sparsity: 0.5
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: 2.0
      update_frequency: 0.5
"""
    if quant:
        text += "quantization_modifiers:\n  - !QuantizationModifier\n      start_epoch: 0.0\n"
    text += f"structure_modifiers:\n  - !LayerPruningModifier\n      {shrink}\n"
    return parse_recipe(text)


def train_steps(model, lc, steps=3):
    """A few real optimizer steps through the lifecycle's events."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lc.initialize(opt, SPE)
    model.train()
    for _ in range(steps):
        lc.batch_start()
        out = model(input_ids=ids())
        loss = lc.loss_calculated(F.cross_entropy(out.logits, torch.tensor([0, 1, 2])))
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    model.eval()
    return opt


def layer_weights(model):
    return [layer.attention.self.query.weight.detach().clone()
            for layer in model.bert.encoder.layer]


@pytest.mark.parametrize("params", ["__COMPUTE_LAYERS__", "__ALL_PRUNABLE__"])
def test_keep_half_of_four_layers_keeps_0_and_2_and_masks_only_them(params):
    model = tiny_bert()
    before = layer_weights(model)
    lc = ModifierLifecycle(recipe(params=params), model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lc.initialize(opt, SPE)
    after = layer_weights(model)
    assert len(after) == 2 and model.config.num_hidden_layers == 2
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[2])
    # the optimizer keeps its groups (a resumed Trainer loads its state before initialising)
    assert sum(len(g["params"]) for g in opt.param_groups) > len(list(model.parameters()))
    lc.batch_start()  # GMP starts: masks at init_sparsity
    names = lc.masked_parameter_names()
    layer_names = [n for n in names if ".encoder.layer." in n]
    assert layer_names and {n.split(".")[3] for n in layer_names} == {"0", "1"}
    assert set(names) <= set(dict(model.named_parameters()))
    gmp = lc.modifiers_of("GMPruningModifier")[0]
    assert all(m.shape == dict(model.named_parameters())[n].shape
               for n, m in gmp._masks.items())
    # the shrunk model runs and gives 3 logits
    assert model(input_ids=ids()).logits.shape == (3, 3)


def test_layers_field_removes_the_named_layers():
    model = tiny_bert()
    before = layer_weights(model)
    lc = ModifierLifecycle(recipe("layers: [bert.encoder.layer.1, bert.encoder.layer.3]"), model)
    lc.initialize(None, SPE)
    after = layer_weights(model)
    assert model.config.num_hidden_layers == 2
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[2])


def test_keep_fraction_one_changes_nothing_even_on_a_cnn():
    model = tiny_bert()
    lc = ModifierLifecycle(recipe("keep_fraction: 1.0"), model)
    lc.initialize(None, SPE)
    assert len(model.bert.encoder.layer) == 4 and model.config.num_hidden_layers == 4
    cnn = TinyResNet()
    lc = ModifierLifecycle(parse_recipe(
        "modifiers:\n  - !LayerPruningModifier\n      keep_fraction: 1.0\n"), cnn)
    lc.initialize(None, SPE)


@pytest.mark.parametrize("quant", [False, True])
def test_shrunk_checkpoint_restores_into_a_fresh_full_depth_model(quant):
    model = tiny_bert(seed=0)
    lc = ModifierLifecycle(recipe(quant=quant), model)
    train_steps(model, lc)
    lc.finalize()
    with torch.no_grad():
        expected = model(input_ids=ids(5)).logits
    saved = model.state_dict()
    started = lc.started_modifiers()
    shrink = lc.modifiers_of("LayerPruningModifier")[0]
    assert lc.modifiers.index(shrink) in started
    fresh = tiny_bert(seed=7)  # another initialisation: everything must come from the checkpoint
    qat = restore_checkpoint(fresh, recipe(quant=quant), saved, started, path=None)
    assert qat == quant
    assert len(fresh.bert.encoder.layer) == 2 and fresh.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids(5)).logits, expected)


def test_a_checkpoint_lacking_entries_is_completed_after_the_layers_are_removed():
    """save_pretrained leaves tied weights out of a checkpoint: ``complete`` takes them from
    the restructured (shrunk) model, so no entry of a removed layer is offered to it."""
    model = tiny_bert(seed=0)
    lc = ModifierLifecycle(recipe(), model)
    train_steps(model, lc)
    lc.finalize()
    saved = model.state_dict()
    missing = "bert.embeddings.token_type_embeddings.weight"
    partial = {k: v for k, v in saved.items() if k != missing}
    fresh = tiny_bert(seed=3)
    own = fresh.state_dict()[missing].clone()
    restore_checkpoint(fresh, recipe(), partial, lc.started_modifiers(), path=None,
                       complete=True)
    got = fresh.state_dict()
    assert len(fresh.bert.encoder.layer) == 2
    assert torch.equal(got[missing], own)
    assert all(torch.equal(got[k], v) for k, v in partial.items())
    with pytest.raises(ModelNotFoundError, match="does not fit"):  # without: refused
        restore_checkpoint(tiny_bert(seed=3), recipe(), partial, lc.started_modifiers(),
                           path=None)


def test_resume_removes_the_layers_once():
    model = tiny_bert()
    lc = ModifierLifecycle(recipe(), model)
    train_steps(model, lc)
    saved = lc.resume_state()
    fresh = tiny_bert(seed=2)
    again = ModifierLifecycle(recipe(), fresh)
    again.initialize(torch.optim.AdamW(fresh.parameters()), SPE, start_step=saved["step"])
    again.load_resume_state(saved)
    assert len(fresh.bert.encoder.layer) == 2 and fresh.config.num_hidden_layers == 2
    fresh.load_state_dict(model.state_dict())


def test_shrunk_model_copies_and_pickles():
    model = tiny_bert()
    ModifierLifecycle(recipe(), model).initialize(None, SPE)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        other.load_state_dict(model.state_dict())
        assert len(other.bert.encoder.layer) == 2


def test_gpt2_style_stack_and_layer_idx():
    config = transformers.GPT2Config(vocab_size=60, n_embd=16, n_layer=6, n_head=2,
                                     n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    ModifierLifecycle(parse_recipe(
        "modifiers:\n  - !LayerPruningModifier\n      keep_fraction: 0.5\n"), model
    ).initialize(None, SPE)
    assert len(model.transformer.h) == 3 and model.config.n_layer == 3
    idx = [getattr(b.attn, "layer_idx", i) for i, b in enumerate(model.transformer.h)]
    assert idx == [0, 1, 2]
    assert model(input_ids=ids()).logits.shape == (3, 10, 60)


@pytest.mark.parametrize("total,fraction,expected", [
    (12, 0.5, [0, 2, 4, 6, 8, 10]), (12, 0.3333, [0, 3, 6, 9]), (6, 0.5, [0, 2, 4]),
    (6, 0.3333, [0, 3]), (4, 0.5, [0, 2]), (4, 1.0, [0, 1, 2, 3]), (3, 0.1, [0]),
])
def test_kept_indices(total, fraction, expected):
    assert kept_indices(total, fraction) == expected
    assert kept_count(total, fraction) == len(expected)


@pytest.mark.parametrize("fields,field", [
    ({"keep_fraction": 0}, "keep_fraction"), ({"keep_fraction": -0.5}, "keep_fraction"),
    ({"keep_fraction": 1.5}, "keep_fraction"), ({"keep_fraction": True}, "keep_fraction"),
    ({"keep_fraction": "half"}, "keep_fraction"), ({}, "keep_fraction"),
    ({"keep_fraction": 0.5, "layers": ["bert.encoder.layer.1"]}, "keep_fraction"),
    ({"layers": []}, "layers"), ({"layers": "bert.encoder.layer.1"}, "layers"),
    ({"layers": ["a.1", "a.1"]}, "layers"),
    ({"keep_fraction": 0.5, "start_epoch": 2}, "start_epoch"),
    ({"keep_fraction": 0.5, "end_epoch": 5}, "end_epoch"),
])
def test_bad_fields_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        LayerPruningModifier(**fields)


def test_bad_field_in_a_recipe_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"keep_fraction: must be a number in \(0, 1\]"):
        parse_recipe("modifiers:\n  - !LayerPruningModifier\n      keep_fraction: 0.0\n")


def test_unknown_layer_names_are_refused_with_the_valid_ones():
    model = tiny_bert()
    lc = ModifierLifecycle(recipe("layers: [bert.encoder.layer.4, bert.encoder.layer.1]"), model)
    with pytest.raises(RecipeError) as info:
        lc.initialize(None, SPE)
    text = str(info.value)
    assert "LayerPruningModifier.layers: bert.encoder.layer.4 is not a layer" in text
    assert "bert.encoder.layer.0 .. bert.encoder.layer.3" in text
    every = "layers: [bert.encoder.layer.0, bert.encoder.layer.1, bert.encoder.layer.2, " \
            "bert.encoder.layer.3]"
    with pytest.raises(RecipeError, match="removes every layer"):
        ModifierLifecycle(recipe(every), tiny_bert()).initialize(None, SPE)


@pytest.mark.parametrize("shrink,field", [("keep_fraction: 0.5", "keep_fraction"),
                                          ("layers: [layer.1]", "layers")])
def test_a_cnn_is_refused(shrink, field):
    lc = ModifierLifecycle(parse_recipe(
        f"modifiers:\n  - !LayerPruningModifier\n      {shrink}\n"), TinyResNet())
    with pytest.raises(RecipeError, match=f"LayerPruningModifier.{field}: the model "
                                          r"\(TinyResNet\) has no stack"):
        lc.initialize(None, SPE)


@pytest.mark.parametrize("name", ["nlp_gmp", "nlp_obs", "nlp_transfer"])
def test_shipped_nlp_recipes_carry_keep_layers(name):
    default = load_recipe(name, {}).of_type("LayerPruningModifier")[0].build()
    assert default.keep_fraction == 1.0
    shrunk = load_recipe(name, {"keep_layers": 0.5}).of_type("LayerPruningModifier")[0].build()
    assert shrunk.keep_fraction == 0.5


RESUME_RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 4.0
  - !GMPruningModifier
    params: __COMPUTE_LAYERS__
    init_sparsity: 0.2
    final_sparsity: 0.7
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 0.5
  - !QuantizationModifier
    start_epoch: 3.0
  - !LayerPruningModifier
    keep_fraction: 0.5
"""


def test_hf_trainer_resumes_a_shrunk_model_bit_identical(tmp_path, monkeypatch):
    """The Trainer loads its optimizer state before the lifecycle initialises: the groups keep
    their sizes, and the resumed run ends as the uninterrupted one."""
    from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv
    from sparsify.plan import build_plan
    from sparsify.stop import Stopped
    from sparsify.trainers import resume as resume_module
    from sparsify.trainers.nlp import NLPTask
    from sparsify.trainers.resume import find_resume
    from sparsify.usecases import resolve_use_case

    make_tiny_bert(tmp_path / "bert", layers=4)
    write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=0))
    write_csv(tmp_path / "validation.csv", sentiment_rows(16, seed=1))

    def task(name):
        plan = build_plan(resolve_use_case("sentiment"), 0.5, model=str(tmp_path / "bert"),
                          train_kwargs={"batch_size": 16, "max_seq_length": 32})
        (tmp_path / name).mkdir()
        out = NLPTask(plan, str(tmp_path), tmp_path / name)
        out.load_model()
        return out

    whole = task("whole")
    expected = whole.train(parse_recipe(RESUME_RECIPE))
    assert whole.model.config.num_hidden_layers == 2
    calls = []
    monkeypatch.setattr(resume_module, "stop_requested", lambda: calls.append(1) or len(calls) >= 6)
    first = task("stopped")
    with pytest.raises(Stopped):
        first.train(parse_recipe(RESUME_RECIPE))
    monkeypatch.undo()
    second = task("resumed")
    second.run_dir = first.run_dir
    result = second.train(parse_recipe(RESUME_RECIPE),
                          resume=find_resume(first.run_dir / "training_artifacts"))
    want, got = whole.model.state_dict(), second.model.state_dict()
    assert got.keys() == want.keys() and len(second.model.bert.encoder.layer) == 2
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert result.metrics == expected.metrics
