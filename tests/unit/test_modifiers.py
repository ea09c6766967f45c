"""Modifiers driven through the lifecycle on a tiny model with real optimizer steps."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.modifiers.base import epoch_at
from sparsify.modifiers.kd import distillation_loss
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.modifiers.masks import magnitude_mask, tensor_sparsity
from sparsify.modifiers.schedule import LearningRateModifier
from sparsify.modifiers.sparsity_schedule import sparsity_at
from sparsify.recipe.parser import parse_recipe

SPE = 10  # optimizer steps per epoch
ACCUM = 2  # micro-batches per optimizer step


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def train(recipe_text, model=None, teacher=None, record=None, args=None):
    model = model or tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, betas=(0.9, 0.99))
    lc = ModifierLifecycle(parse_recipe(recipe_text, args), model, teacher)
    lc.initialize(opt, SPE)
    gen = torch.Generator().manual_seed(1)
    history, lrs_used = [], []
    lc.lrs_used = lrs_used  # the LR each optimizer step used
    for _ in range(lc.max_epochs):
        lc.epoch_start()
        for _ in range(SPE):
            for _ in range(ACCUM):
                lc.batch_start()
                x = torch.randn(4, 16, generator=gen)
                y = torch.randint(0, 8, (4,), generator=gen)
                out = model(x)
                loss = lc.loss_calculated(F.cross_entropy(out, y), x, out)
                (loss / ACCUM).backward()
            lc.optim_pre_step()
            lrs_used.append(opt.param_groups[0]["lr"])
            opt.step()
            opt.zero_grad()
            lc.optim_post_step()
            lc.batch_end()
            history.append(record(lc, model, opt) if record else None)
        lc.epoch_end()
    lc.finalize()
    return model, opt, lc, history


def weights(model):
    return [model[0].weight, model[2].weight]


def overall_sparsity(model):
    ws = weights(model)
    return sum(float((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_epoch_formula():
    assert epoch_at(0, 10) == 0 and epoch_at(15, 10) == 1.5 and epoch_at(20, 10) == 2.0


def test_constant_pruning_keeps_zeros_through_adamw_and_accumulation():
    model = tiny()
    with torch.no_grad():
        for w in weights(model):
            w.mul_(magnitude_mask(w, 0.6))
    zero_masks = [(w == 0).clone() for w in weights(model)]
    recipe = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 2
  - !ConstantPruningModifier
      params: __ALL_PRUNABLE__
"""
    def record(lc, m, opt):
        return all(bool((w[z] == 0.0).all()) for w, z in zip(weights(m), zero_masks))
    model, _, _, history = train(recipe, model=model, record=record)
    assert all(history), "a pruned weight became non-zero after an optimizer step"
    for w, z in zip(weights(model), zero_masks):
        assert (w[z] == 0.0).all() and (w[~z] != 0).all()
    assert model[0].bias.ne(0).all()  # biases are not prunable


def test_without_constant_pruning_zeros_would_be_revived():
    # guards the test above: AdamW with weight decay really does move zeroed weights
    model = tiny()
    with torch.no_grad():
        model[0].weight.mul_(magnitude_mask(model[0].weight, 0.6))
    train("m_modifiers:\n  - !EpochRangeModifier\n      end_epoch: 1\n", model=model)
    assert tensor_sparsity(model[0].weight) < 0.1


GMP = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 3
  - !GMPruningModifier
      params: __ALL_PRUNABLE__
      init_sparsity: 0.05
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: 2.0
      update_frequency: 0.1
      mask_type: {mask}
"""


def test_gmp_reaches_target_exactly_at_end_epoch_and_holds():
    model, _, lc, history = train(GMP.format(mask="unstructured"),
                                  record=lambda lc, m, o: (lc.epoch, overall_sparsity(m)))
    by_epoch = dict(history)
    assert abs(by_epoch[2.0] - 0.8) <= 0.005
    assert by_epoch[1.0] < 0.75  # still ramping (cubic) before end_epoch
    for epoch, value in history:
        if epoch >= 2.0:
            assert abs(value - 0.8) <= 0.005, (epoch, value)
        else:
            # masks follow the cubic schedule, updated every 0.1 epoch
            last_update = math.floor(epoch * 10 + 1e-9) / 10
            assert value == pytest.approx(sparsity_at(last_update, 0, 2, 0.05, 0.8), abs=0.005)
    assert abs(overall_sparsity(model) - 0.8) <= 0.005


def test_masks_are_held_as_bool_one_byte_per_weight():
    """Masks cost one byte per pruned weight, not a float copy of the weights (QAT memory)."""
    for text, name in ((GMP.format(mask="unstructured"), "GMPruningModifier"),
                       (GMP.format(mask="block4"), "GMPruningModifier")):
        model, _, lc, _ = train(text)
        masks = lc.modifiers_of(name)[0]._masks
        assert masks and all(m.dtype == torch.bool for m in masks.values())
        params = dict(model.named_parameters())
        for n, m in masks.items():
            assert bool((params[n][~m] == 0).all()) and bool((params[n][m] != 0).any())


def test_nm_2_4_masks():
    model, *_ = train(GMP.format(mask='"2:4"').replace("0.8", "0.5"))
    for w in weights(model):
        groups = w.detach().reshape(w.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) == 2).all()


def test_block4_masks():
    model, *_ = train(GMP.format(mask="block4"))
    for w in weights(model):
        nonzero = (w.detach().reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert ((nonzero == 0) | (nonzero == 4)).all()
    assert abs(overall_sparsity(model) - 0.8) <= 0.01


def test_global_magnitude_pruning_one_threshold():
    model, *_ = train(GMP.format(mask="unstructured").replace("GMPruningModifier",
                                                               "GlobalMagnitudePruningModifier"))
    assert abs(overall_sparsity(model) - 0.8) <= 0.005
    layer = [tensor_sparsity(w) for w in weights(model)]
    assert layer[0] != pytest.approx(layer[1], abs=0.01)  # a shared threshold, not per layer
    survivors = torch.cat([w[w != 0].abs().flatten() for w in weights(model)])
    assert survivors.numel() > 0


def test_dict_final_sparsity_and_from_param():
    model = tiny()
    with torch.no_grad():
        model[2].weight.mul_(magnitude_mask(model[2].weight, 0.3))
    recipe = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 1
  - !GMPruningModifier
      init_sparsity: __FROM_PARAM__
      final_sparsity: {0.5: ["0.weight"], 0.9: ["re:2\\\\.w.*"]}
      start_epoch: 0
      end_epoch: 1
      update_frequency: 0.5
"""
    model, *_ = train(recipe, model=model)
    assert tensor_sparsity(model[0].weight) == pytest.approx(0.5, abs=0.005)
    assert tensor_sparsity(model[2].weight) == pytest.approx(0.9, abs=0.005)


def test_selector_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="matches no parameter"):
        train("m_modifiers:\n  - !ConstantPruningModifier\n      params: ['re:nothing']\n"
              "  - !EpochRangeModifier\n      end_epoch: 1\n")


@pytest.mark.parametrize("func", ["linear", "cosine", "cyclic_linear"])
def test_lr_function_at_every_step(func):
    recipe = f"""
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 3
  - !LearningRateFunctionModifier
      lr_func: {func}
      init_lr: 0.1
      final_lr: 0.001
      start_epoch: 0.5
      end_epoch: 2.5
      cycle_epochs: 0.7
"""
    _, _, lc, _ = train(recipe)
    assert len(lc.lrs_used) == 3 * SPE
    for step, lr in enumerate(lc.lrs_used):
        e = epoch_at(step, SPE)  # the LR used by the step that started at this epoch
        if e < 0.5:
            expected = 0.01  # untouched before start
        else:
            x = min((e - 0.5) / 2.0, 1.0)
            if func == "linear":
                expected = 0.1 + x * (0.001 - 0.1)
            elif func == "cosine":
                expected = 0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * x))
            else:
                expected = 0.1 + ((e - 0.5) % 0.7) / 0.7 * (0.001 - 0.1) if e < 2.5 else \
                    0.1 + ((2.5 - 0.5) % 0.7) / 0.7 * (0.001 - 0.1)
        assert abs(lr - expected) < 1e-9, (step, lr, expected)


@pytest.mark.parametrize("lr_class,kwargs,torch_cls", [
    ("StepLR", {"step_size": 2, "gamma": 0.5}, torch.optim.lr_scheduler.StepLR),
    ("MultiStepLR", {"milestones": [1, 3, 4], "gamma": 0.3}, torch.optim.lr_scheduler.MultiStepLR),
    ("ExponentialLR", {"gamma": 0.8}, torch.optim.lr_scheduler.ExponentialLR),
    ("CosineAnnealingWarmRestarts", {"T_0": 2, "T_mult": 2, "eta_min": 0.001},
     torch.optim.lr_scheduler.CosineAnnealingWarmRestarts),
])
def test_torch_style_schedules_match_torch_at_epoch_boundaries(lr_class, kwargs, torch_cls):
    ours = LearningRateModifier(lr_class=lr_class, lr_kwargs=kwargs, init_lr=0.1,
                                start_epoch=0.0, end_epoch=-1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch_cls(opt, **kwargs)
    for epoch in range(8):
        assert ours.lr_at(float(epoch)) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()
    # within an epoch the value is defined on the fractional epoch (steps, not epochs)
    if lr_class == "CosineAnnealingWarmRestarts":
        assert ours.lr_at(0.5) != ours.lr_at(0.0)


def test_set_lr_and_weight_decay_and_trainable():
    recipe = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 2
  - !SetLearningRateModifier
      learning_rate: 0.05
      start_epoch: 1
  - !SetWeightDecayModifier
      weight_decay: 0.0
      start_epoch: 1
  - !TrainableParamsModifier
      params: ["0.weight", "0.bias"]
      trainable: false
      start_epoch: 0
      end_epoch: 1
"""
    model = tiny()
    first = model[0].weight.detach().clone()
    def record(lc, m, o):
        return (lc.epoch, o.param_groups[0]["lr"], o.param_groups[0]["weight_decay"],
                m[0].weight.requires_grad)
    model, _, _, history = train(recipe, model=model, record=record)
    for epoch, lr, wd, grad in history:
        if epoch <= 1.0:  # steps of epoch 0 (the record after the 10th step shows epoch 1.0)
            assert (lr, wd) == (0.01, 0.1) or epoch == 1.0
        else:
            assert (lr, wd) == (0.05, 0.0)
        assert grad == (epoch >= 1.0)
    assert not torch.equal(model[0].weight, first)  # unfrozen in epoch 1 and trained


def test_distillation_matches_hand_computed_formula():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[0.5, 2.5, 0.0], [1.0, 0.0, 2.0]])
    task, T, h = torch.tensor(0.7), 2.0, 0.25
    kl_rows = []
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps = [math.exp(v / T) for v in srow]
        pt = [math.exp(v / T) for v in trow]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        kl_rows.append(sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt)))
    expected = (1 - h) * 0.7 + h * (sum(kl_rows) / 2) * T * T
    got = distillation_loss(task, {"logits": s, "loss": task}, {"logits": t}, h, T)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    two = distillation_loss(task, {"a": s, "b": s}, {"a": t, "b": s}, 1.0, T, ["a", "b"])
    assert float(two) == pytest.approx((sum(kl_rows) / 2) * T * T / 2, rel=1e-5)
    # Per-token logits (batch 1, 3 tokens): the padded third token, whose logits disagree
    # wildly, must not count; only the two real tokens' KL is averaged.
    s3 = torch.cat([s, torch.tensor([[9.0, -9.0, 0.0]])]).unsqueeze(0)
    t3 = torch.cat([t, torch.tensor([[-9.0, 9.0, 0.0]])]).unsqueeze(0)
    mask = torch.tensor([[1, 1, 0]])
    masked = distillation_loss(task, {"logits": s3}, {"logits": t3}, 1.0, T, None, mask)
    assert float(masked) == pytest.approx((sum(kl_rows) / 2) * T * T, rel=1e-6)
    unmasked = distillation_loss(task, {"logits": s3}, {"logits": t3}, 1.0, T)
    assert float(unmasked) > 2 * float(masked)
    # Sequence-level logits (batch, classes) are not masked per token.
    pooled = distillation_loss(task, {"logits": s}, {"logits": t}, 1.0, T, None,
                               torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert float(pooled) == pytest.approx((sum(kl_rows) / 2) * T * T, rel=1e-6)


def test_distillation_modifier_replaces_loss_and_teacher_frozen():
    teacher = tiny()
    teacher.train()
    recipe = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 1
  - !DistillationModifier
      hardness: 1.0
      temperature: 3.0
"""
    model = tiny()
    lc = ModifierLifecycle(parse_recipe(recipe), model, teacher)
    lc.initialize(torch.optim.SGD(model.parameters(), lr=0.1), SPE)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    lc.batch_start()
    x = torch.randn(3, 16)
    out = model(x)
    loss = lc.loss_calculated(torch.tensor(5.0), x, out)
    from sparsify.modifiers.kd import kd_loss
    assert float(loss.detach()) == pytest.approx(float(kd_loss(out, teacher(x), 3.0).detach()),
                                                 rel=1e-6)
    assert loss.requires_grad


def test_distillation_without_teacher_is_disabled_with_notice(caplog):
    caplog.set_level(logging.WARNING)
    model = tiny()
    lc = ModifierLifecycle(parse_recipe(
        "m_modifiers:\n  - !DistillationModifier\n      hardness: 1.0\n"), model, None)
    lc.initialize(None, SPE)
    lc.batch_start()
    assert float(lc.loss_calculated(torch.tensor(2.5))) == 2.5
    assert "DistillationModifier disabled: no teacher" in caplog.text


def test_lifecycle_guards_and_facts():
    recipe = parse_recipe("""
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 2.5
  - !LearningRateFunctionModifier
      init_lr: 0.1
      end_epoch: 2
""")
    lc = ModifierLifecycle(recipe, tiny())
    assert lc.max_epochs == 3 and lc.controls_lr and not lc.qat_active
    assert not lc.modifiers_of("QuantizationModifier")  # the recipe does not quantize
    with pytest.raises(RuntimeError, match="before initialize"):
        lc.batch_start()
    lc.initialize(None, 4)
    with pytest.raises(RuntimeError, match="twice"):
        lc.initialize(None, 4)
    lc.finalize()
    with pytest.raises(RuntimeError, match="after finalize"):
        lc.batch_start()
    with pytest.raises(RuntimeError, match="twice"):
        lc.finalize()
    no_lr = ModifierLifecycle(parse_recipe(
        "m_modifiers:\n  - !EpochRangeModifier\n      end_epoch: 1\n"), tiny())
    assert not no_lr.controls_lr


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.norm(self.emb(ids))))).mean(1)


def test_quantization_modifier_starts_on_schedule_on_selected_layers_only():
    from sparsify.quantization import is_qat_prepared, quantized_module_names

    model = Block()
    recipe = parse_recipe("""
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 2
  - !QuantizationModifier
      start_epoch: 1.0
      disable_quantization_observer_epoch: 1.5
      exclude_module_types: [LayerNorm]
      quantize_embeddings: false
      submodules: [fc1, norm, emb]
  - !ConstantPruningModifier
      params: __ALL_PRUNABLE__
""")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lc = ModifierLifecycle(recipe, model)
    lc.initialize(opt, SPE)
    assert [m.start_epoch for m in lc.modifiers_of("QuantizationModifier")] == [1.0]
    seen = []
    for step in range(2 * SPE):
        lc.batch_start()
        if step == SPE - 1:
            assert not lc.qat_active and not is_qat_prepared(model)
        ids = torch.randint(0, 20, (4, 5))
        loss = lc.loss_calculated(model(ids).pow(2).mean())
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
        seen.append(lc.qat_active)
    lc.finalize()
    assert seen.index(True) == SPE - 1  # QAT switched on by the step that reached epoch 1.0
    names = quantized_module_names(model)
    assert "fc1" in names  # selected
    assert "fc2" not in names  # outside submodules
    assert "norm" not in names and "emb" not in names  # excluded type, embeddings off
    observers = [m for m in model.modules() if hasattr(m, "observer_enabled")]
    assert observers and not any(bool(m.observer_enabled) for m in observers)  # frozen at 1.5
    # parameter names are unchanged, so masks still follow the weights
    assert {n for n, _ in model.named_parameters()} >= {"fc1.weight", "fc2.weight", "emb.weight"}


def test_quantization_modifier_key_styles_are_not_mixed():
    from sparsify.errors import RecipeError

    with pytest.raises(RecipeError, match="cannot be mixed"):
        parse_recipe("m_modifiers:\n  - !QuantizationModifier\n      ignore: [Upsample]\n"
                     "      quantize_embeddings: false\n")
    recipe = parse_recipe("m_modifiers:\n  - !QuantizationModifier\n      start_epoch: 3\n"
                          "      ignore: [Upsample, model.22.dfl]\n"
                          "      scheme: {weights: {num_bits: 8, symmetric: true, "
                          "strategy: channel}, input_activations: {num_bits: 8}}\n")
    config = recipe.modifiers[0].build().quantization_config()
    assert "Upsample" in config.exclude_module_types and "model.22.dfl" in config.ignore


def test_quantization_fields_are_honoured_or_refused():
    from sparsify.errors import RecipeError

    def build(fields):
        text = "m_modifiers:\n  - !QuantizationModifier\n" + "".join(
            f"      {k}: {v}\n" for k, v in fields.items())
        return parse_recipe(text).modifiers[0].build()

    assert build({"model_fuse_fn_name": "no_fuse"}).quantization_config().fold_batchnorm is False
    assert build({}).quantization_config().fold_batchnorm is True
    config = build({"scheme_overrides": "{Linear: null, model.0.conv: default}"}
                   ).quantization_config()
    assert "Linear" in config.exclude_module_types
    for bad, field in [({"model_fuse_fn_name": "magic"}, "model_fuse_fn_name"),
                       ({"custom_quantizable_module_types": "[MyConv]"},
                        "custom_quantizable_module_types"),
                       ({"scheme_overrides": "{Linear: {weights: {num_bits: 4}}}"},
                        "scheme_overrides"),
                       ({"weight_bits": 4}, "weight_bits"),
                       ({"end_epoch": 3}, "end_epoch")]:
        with pytest.raises(RecipeError, match=field):
            build(bad)
