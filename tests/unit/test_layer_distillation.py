"""PerLayerDistillationModifier: layer pairing, the loss it adds, one teacher pass per batch,
its composition with output distillation, and the fields it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsify.errors import RecipeError
from sparsify.modifiers.layer_distillation import span_ends
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import parse_recipe

transformers = pytest.importorskip("transformers")

LAYERS = """
keep_layers: {keep}
gain: {gain}
training_modifiers:
  - !EpochRangeModifier
      end_epoch: 1
structure_modifiers:
  - !LayerPruningModifier
      keep_fraction: eval(keep_layers)
distillation_modifiers:
  - !PerLayerDistillationModifier
      gain: eval(gain)
      student_layer_names: __LAYER_OUTPUTS__
{output_kd}"""
OUTPUT_KD = """  - !DistillationModifier
      hardness: 1.0
      temperature: 2.0
"""


def tiny_bert(layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=32, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def batch(padding: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 6, dtype=torch.long)
    if padding:
        mask[:, -padding:] = 0
    return {"input_ids": torch.randint(0, 50, (2, 6), generator=g), "attention_mask": mask,
            "labels": torch.tensor([0, 1])}


def lifecycle(recipe: str, model: nn.Module, teacher: nn.Module) -> ModifierLifecycle:
    lc = ModifierLifecycle(parse_recipe(recipe), model, teacher)
    lc.initialize_structure()
    lc.initialize(torch.optim.SGD(model.parameters(), lr=0.0), 4)
    return lc


def layer_outputs(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    out = model(**inputs, output_hidden_states=True)
    return list(out.hidden_states[1:])  # after each encoder layer


def test_span_ends_pairs_each_student_layer_with_the_end_of_its_span():
    assert span_ends(3, 6) == [1, 3, 5]
    assert span_ends(6, 6) == list(range(6))
    assert span_ends(2, 6) == [2, 5]
    assert span_ends(1, 4) == [3]


def test_layer_outputs_of_a_layer_pruned_student_follow_the_teachers_span_ends():
    teacher = tiny_bert(4)
    model = copy.deepcopy(teacher)
    lc = lifecycle(LAYERS.format(keep=0.5, gain=2.0, output_kd=""), model, teacher)
    modifier = lc.modifiers_of("PerLayerDistillationModifier")[0]
    assert modifier._pairs == [("bert.encoder.layer.0", "bert.encoder.layer.1"),
                               ("bert.encoder.layer.1", "bert.encoder.layer.3")]
    inputs = batch(padding=2)
    lc.batch_start()
    out = model(**inputs)
    loss = lc.loss_calculated(out.loss, inputs, out)
    # the same figure by hand: task loss + gain * sum of normalised MSEs over real tokens
    with torch.no_grad():
        s_layers = layer_outputs(model, inputs)
        t_layers = layer_outputs(teacher, inputs)
    keep = inputs["attention_mask"].bool()
    expected = out.loss.detach()
    for s, t in zip(s_layers, [t_layers[1], t_layers[3]]):
        s, t = s[keep], t[keep]
        expected = expected + 2.0 * (s - t).square().mean() / (t.square().mean() + 1e-6)
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    assert loss.item() - out.loss.item() > 1e-5  # half the layers: the student differs
    loss.backward()
    assert model.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_identical_student_adds_nothing_and_the_teacher_runs_once_per_batch():
    teacher = tiny_bert(2)
    model = copy.deepcopy(teacher)
    lc = lifecycle(LAYERS.format(keep=1.0, gain=1.0, output_kd=OUTPUT_KD), model, teacher)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    for step in range(3):
        inputs = batch()
        lc.batch_start()
        out = model(**inputs)
        loss = lc.loss_calculated(out.loss, inputs, out)
        # output KD at hardness 1 of identical models is 0, and so are the layer terms
        assert float(loss) == pytest.approx(0.0, abs=1e-6)
        assert len(calls) == step + 1
        lc.optim_post_step()
        lc.batch_end()


def test_layer_term_is_added_after_output_distillation_whatever_the_recipe_order():
    """hardness 1.0 replaces the task loss by the KD loss; the layer term adds to that."""
    teacher = tiny_bert(4)
    inputs = batch()
    losses = {}
    for name, recipe in (
            ("layer_first", LAYERS.format(keep=0.5, gain=1.0, output_kd=OUTPUT_KD)),
            ("kd_first", LAYERS.format(keep=0.5, gain=1.0, output_kd="").replace(
                "distillation_modifiers:\n", "distillation_modifiers:\n" + OUTPUT_KD)),
            ("kd_only", LAYERS.format(keep=0.5, gain=0.0, output_kd=OUTPUT_KD))):
        model = copy.deepcopy(teacher)
        lc = lifecycle(recipe, model, teacher)
        lc.batch_start()
        out = model(**inputs)
        losses[name] = float(lc.loss_calculated(out.loss, inputs, out))
    assert losses["layer_first"] == pytest.approx(losses["kd_first"], rel=1e-6)
    assert losses["layer_first"] > losses["kd_only"] > 0


def test_named_layers_of_different_shapes_or_unknown_names_are_refused():
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    recipe = """
modifiers:
  - !EpochRangeModifier
      end_epoch: 1
  - !PerLayerDistillationModifier
      student_layer_names: [{names}]
"""
    with pytest.raises(RecipeError, match="no module '3'"):
        lifecycle(recipe.format(names="'3'"), model, teacher)
    lc = lifecycle(recipe.format(names="'0'"), model, teacher)
    lc.batch_start()
    x = torch.randn(2, 4)
    out = model(x)
    with pytest.raises(RecipeError, match=r"shape \(2, 6\).*\(2, 8\)"):
        lc.loss_calculated(out.sum(), x, out)


def test_layer_outputs_on_a_model_without_a_layer_stack_is_refused_by_its_own_name():
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    recipe = LAYERS.format(keep=1.0, gain=1.0, output_kd="").replace(
        "structure_modifiers:\n  - !LayerPruningModifier\n      keep_fraction: eval(keep_layers)\n",
        "")
    with pytest.raises(RecipeError, match="PerLayerDistillationModifier: __LAYER_OUTPUTS__"):
        lifecycle(recipe, copy.deepcopy(teacher), teacher)


@pytest.mark.parametrize("fields, message", [
    ("gain: -1", "gain: must be a number >= 0"),
    ("normalize: 'yes'", "normalize: must be true or false"),
    ("student_layer_names: [a, b]\n      teacher_layer_names: [a]", "paired in order"),
    ("student_layer_names: __LAYER_OUTPUTS__\n      teacher_layer_names: [a]",
     "remove teacher_layer_names"),
    ("student_layer_names: []", "non-empty list"),
])
def test_fields_are_validated(fields, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(f"modifiers:\n  - !PerLayerDistillationModifier\n      {fields}\n")


def test_without_a_teacher_it_is_disabled_and_the_loss_is_unchanged(caplog):
    model = tiny_bert(2)
    lc = ModifierLifecycle(parse_recipe(LAYERS.format(keep=1.0, gain=1.0, output_kd="")),
                           model, None)
    lc.initialize_structure()
    lc.initialize(torch.optim.SGD(model.parameters(), lr=0.0), 4)
    inputs = batch()
    lc.batch_start()
    out = model(**inputs)
    assert lc.loss_calculated(out.loss, inputs, out) is out.loss
    assert "PerLayerDistillationModifier disabled" in caplog.text
