"""FFNPruningModifier: every transformer layer's feed-forward block narrowed before training,
exactly what zeroing the removed channels computes; the record restores a fresh model; the
shrunk model saves, reloads, prunes, and exports to INT8 ONNX."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyResNet

from sparsify.errors import RecipeError
from sparsify.modifiers.ffn_pruning import FFNPruningModifier, kept_channel_count, find_ffn_blocks
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import parse_recipe
from sparsify.trainers.common import restore_checkpoint

transformers = pytest.importorskip("transformers")

SPE = 4


def tiny_bert(seed=0, layers=2):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def ids(seed=1):
    return torch.randint(0, 60, (3, 10), generator=torch.Generator().manual_seed(seed))


def recipe(keep=0.25, extra="", gmp=True, quant=False):
    text = ("structure_modifiers:\n  - !FFNPruningModifier\n"
            f"      keep_fraction: {keep}\n      channel_multiple: 8\n{extra}")
    if gmp:
        text += """pruning_modifiers:
  - !GMPruningModifier
      params: __COMPUTE_LAYERS__
      init_sparsity: 0.5
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: 2.0
      update_frequency: 0.5
"""
    if quant:
        text += "quantization_modifiers:\n  - !QuantizationModifier\n      start_epoch: 0.0\n"
    return parse_recipe(text)


def train_steps(model, lc, steps=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lc.initialize(opt, SPE)
    model.train()
    for _ in range(steps):
        lc.batch_start()
        loss = lc.loss_calculated(F.cross_entropy(model(input_ids=ids()).logits,
                                                  torch.tensor([0, 1, 2])))
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    model.eval()
    return opt


def test_shrunk_model_computes_what_zeroing_the_removed_channels_computes():
    model = tiny_bert()
    reference = tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    old = {n: p for n, p in model.named_parameters()}
    lc = ModifierLifecycle(recipe(gmp=False), model)
    lc.initialize(opt, SPE)
    kept = lc.modifiers_of("FFNPruningModifier")[0]._kept
    assert sorted(kept) == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    for layer, ref_layer in zip(model.bert.encoder.layer, reference.bert.encoder.layer):
        assert layer.intermediate.dense.weight.shape == (16, 16)  # 64 * 0.25
        assert layer.output.dense.weight.shape == (16, 16)
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 16
    assert model.config.intermediate_size == 16
    # the kept channels are the 16 of largest ||down column|| * ||up row||
    ref = reference.bert.encoder.layer[0]
    score = ref.output.dense.weight.norm(dim=0) * ref.intermediate.dense.weight.norm(dim=1)
    assert kept["bert.encoder.layer.0"] == sorted(torch.topk(score, 16).indices.tolist())
    # the same function as the full model with the removed channels' output columns zeroed
    with torch.no_grad():
        for name, ref_layer in zip(sorted(kept), reference.bert.encoder.layer):
            drop = [i for i in range(64) if i not in kept[name]]
            ref_layer.output.dense.weight[:, drop] = 0
        assert torch.allclose(model(input_ids=ids()).logits, reference(input_ids=ids()).logits,
                              atol=1e-6)
    # the optimizer now holds the new parameters, where the old ones were
    params = [p for g in opt.param_groups for p in g["params"]]
    now = dict(model.named_parameters())
    assert all(any(p is q for p in params) for q in now.values())
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    assert not any(p is old[name] for p in params)


def test_gmp_masks_only_the_shrunk_tensors_and_training_runs():
    model = tiny_bert()
    lc = ModifierLifecycle(recipe(), model)
    train_steps(model, lc)
    gmp = lc.modifiers_of("GMPruningModifier")[0]
    params = dict(model.named_parameters())
    assert all(m.shape == params[n].shape for n, m in gmp._masks.items())
    weight = model.bert.encoder.layer[1].output.dense.weight
    assert weight.shape == (16, 16) and float((weight == 0).float().mean()) >= 0.5


@pytest.mark.parametrize("quant", [False, True])
def test_shrunk_checkpoint_restores_into_a_fresh_model_from_the_record(quant):
    model = tiny_bert(seed=0)
    lc = ModifierLifecycle(recipe(quant=quant), model)
    train_steps(model, lc)
    lc.finalize()
    with torch.no_grad():
        expected = model(input_ids=ids(5)).logits
    fresh = tiny_bert(seed=7)  # its own weights would rank other channels: the record decides
    restore_checkpoint(fresh, recipe(quant=quant), model.state_dict(), lc.started_modifiers(),
                       path=None)
    assert fresh.bert.encoder.layer[0].intermediate.dense.out_features == 16
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids(5)).logits, expected)


def test_resume_shrinks_once():
    model = tiny_bert()
    lc = ModifierLifecycle(recipe(), model)
    train_steps(model, lc)
    saved = lc.resume_state()
    fresh = tiny_bert(seed=2)
    again = ModifierLifecycle(recipe(), fresh)
    again.initialize(torch.optim.AdamW(fresh.parameters()), SPE, start_step=saved["step"])
    again.load_resume_state(saved)
    assert fresh.bert.encoder.layer[0].intermediate.dense.out_features == 16
    fresh.load_state_dict(model.state_dict())


def test_saved_shrunk_model_reloads_with_from_pretrained(tmp_path):
    model = tiny_bert()
    ModifierLifecycle(recipe(gmp=False), model).initialize(None, SPE)
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.config.intermediate_size == 16
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids()).logits, model(input_ids=ids()).logits)


def test_keep_fraction_one_changes_nothing_even_on_a_cnn():
    model = TinyResNet()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    ModifierLifecycle(recipe(keep=1.0, gmp=False), model).initialize(None, SPE)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes


def test_a_cnn_is_refused_by_name():
    with pytest.raises(RecipeError, match="FFNPruningModifier.*transformer"):
        ModifierLifecycle(recipe(gmp=False), TinyResNet()).initialize(None, SPE)


def test_blocks_found_for_bert():
    blocks = find_ffn_blocks(tiny_bert())
    assert blocks["bert.encoder.layer.1"] == (["bert.encoder.layer.1.intermediate.dense"],
                                              "bert.encoder.layer.1.output.dense")


@pytest.mark.parametrize("width,fraction,multiple,expected", [
    (1536, 0.25, 16, 384), (1536, 0.5, 16, 768), (64, 0.1, 8, 8), (64, 1.0, 8, 64),
    (60, 0.5, 16, 32), (10, 0.01, 16, 10)])
def test_kept_count(width, fraction, multiple, expected):
    assert kept_channel_count(width, fraction, multiple) == expected


@pytest.mark.parametrize("fields,field", [
    ({"keep_fraction": 0}, "keep_fraction"), ({"keep_fraction": 1.5}, "keep_fraction"),
    ({"keep_fraction": 0.5, "importance": "l3"}, "importance"),
    ({"keep_fraction": 0.5, "channel_multiple": 0}, "channel_multiple"),
    ({"keep_fraction": 0.5, "start_epoch": 2.0}, "start_epoch"),
    ({"keep_fraction": 0.5, "end_epoch": 3.0}, "end_epoch")])
def test_bad_fields_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        FFNPruningModifier(**fields)
