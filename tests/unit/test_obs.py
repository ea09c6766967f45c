"""OBSPruningModifier (oBERT): recipe fields, schedule under the lifecycle, the OBS maths."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import RecipeError
from sparsify.modifiers import obs_math
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.modifiers.masks import tensor_sparsity
from sparsify.modifiers.obs import OBSPruningModifier
from sparsify.modifiers.sparsity_schedule import sparsity_at
from sparsify.recipe.parser import load_recipe, parse_recipe

SPE = 10

OBERT_STYLE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 30
training_modifiers:
  - !OBSPruningModifier
    params: [
      "re:bert.encoder.layer.*.attention.self.query.weight",
      "re:bert.encoder.layer.*.intermediate.dense.weight",
    ]
    init_sparsity: 0.3
    final_sparsity: 0.8
    start_epoch: 2
    end_epoch: 26
    update_frequency: 4.0
    inter_func: cubic
    global_sparsity: True
    leave_enabled: True
    mask_type: block4
    num_grads: 1024
    damp: 1e-7
    fisher_block_size: 32
    num_recomputations: 2
    eps: 1e-8
    grad_sampler_kwargs:
      batch_size: 8
"""


def test_parser_accepts_a_sparseml_obs_recipe():
    recipe = parse_recipe(OBERT_STYLE)
    (spec,) = recipe.of_type("OBSPruningModifier")
    modifier = spec.build()
    assert isinstance(modifier, OBSPruningModifier)
    # 'damp: 1e-7' is a string to YAML 1.1; SparseML reads it as a number and so do we
    assert modifier.damp == 1e-7 and modifier.eps == 1e-8
    assert (modifier.mask_type, modifier.fisher_block_size, modifier.num_grads) == ("block4", 32,
                                                                                    1024)
    assert modifier.global_sparsity is True and modifier.num_recomputations == 2
    assert modifier.grad_sampler_kwargs == {"batch_size": 8}
    assert recipe.max_epochs == 30
    again = parse_recipe(recipe.to_yaml())
    assert [(m.type, m.args) for m in again.modifiers] == [(m.type, m.args)
                                                            for m in recipe.modifiers]
    # SparseML's default for OBS is global sparsity (GMP's is per layer)
    defaults = OBSPruningModifier(params="__ALL_PRUNABLE__", final_sparsity=0.5, start_epoch=0,
                                  end_epoch=1)
    assert defaults.global_sparsity and defaults.fisher_block_size == 50
    assert (defaults.num_grads, defaults.damp) == (1024, 1e-7)


def _one(fields: str) -> str:
    return f"""
pruning_modifiers:
  - !OBSPruningModifier
      params: __ALL_PRUNABLE__
      final_sparsity: 0.8
      start_epoch: 0
      end_epoch: 2
{fields}"""


@pytest.mark.parametrize("fields,message", [
    ("      num_grad: 64\n", "unknown field 'num_grad'. Did you mean 'num_grads'"),
    ("      grad_sampler: {batch_size: 8}\n", "unknown field 'grad_sampler'"),
    ("      num_grads: 0\n", "num_grads: must be an integer >= 1"),
    ("      num_grads: 1.5\n", "num_grads: must be an integer >= 1"),
    ("      damp: 0\n", "damp: must be a finite number > 0"),
    ("      damp: lots\n", "damp: must be a number, got 'lots'"),
    ("      eps: -1.0\n", "eps: must be a finite number >= 0"),
    ("      fisher_block_size: 0\n", "fisher_block_size: must be an integer >= 1"),
    ("      mask_type: block4\n", "fisher_block_size: must be a multiple of 4 for mask_type block4"),
    ('      mask_type: "2:4"\n', "mask_type: '2:4' (N:M) is not supported by OBSPruningModifier"),
    ("      mask_type: channel\n", "mask_type: 'channel' is not valid"),
    ("      num_recomputations: 0\n", "num_recomputations: must be an integer >= 1"),
    ("      grad_sampler_kwargs: 8\n", "grad_sampler_kwargs: must be a mapping"),
    ("      final_sparsity: 1.0\n", "final_sparsity: must be a fraction in [0, 1)"),
])
def test_parser_refuses_unknown_and_invalid_fields_by_name(fields, message):
    text = _one(fields)
    if "final_sparsity: 1.0" in fields:
        text = text.replace("      final_sparsity: 0.8\n", "")
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        parse_recipe(text)


def test_shipped_obs_recipe_parses_with_overrides():
    recipe = load_recipe("nlp_obs", {"num_epochs": 2, "mask_type": "block4",
                                     "obs_global_sparsity": True})
    (spec,) = recipe.of_type("OBSPruningModifier")
    assert spec.args["mask_type"] == "block4" and spec.args["global_sparsity"] is True
    assert spec.args["end_epoch"] <= recipe.summary()["qat_start_epoch"] < 2



@pytest.mark.parametrize("family", ["nlp", "image_classification"])
def test_shipped_obs_recipe_is_the_gmp_schedule_on_compute_layers(family):
    """<family>_obs compares like for like with <family>_gmp: same weights, phases, teacher,
    structure and QAT."""
    args = {"num_epochs": 10, "target_sparsity": 0.78}
    obs, gmp = load_recipe(f"{family}_obs", args), load_recipe(f"{family}_gmp", args)
    (o,) = obs.of_type("OBSPruningModifier")
    (g,) = gmp.of_type("GMPruningModifier")
    assert o.args["params"] == g.args["params"] == "__COMPUTE_LAYERS__"
    assert o.args["global_sparsity"] is True  # embeddings are not selected: one ranking is safe
    for key in ("init_sparsity", "final_sparsity", "start_epoch", "end_epoch", "inter_func"):
        assert o.args[key] == g.args[key], key
    assert o.args["update_frequency"] == pytest.approx(1.0)  # num_epochs / 10: fewer inversions
    assert obs.summary()["qat_start_epoch"] == gmp.summary()["qat_start_epoch"] == 6.5
    assert obs.variables["teacher_epochs"] == gmp.variables["teacher_epochs"] == 10
    assert [m.args.get("init_lr") for m in obs.of_type("LearningRateFunctionModifier")] == \
        [m.args.get("init_lr") for m in gmp.of_type("LearningRateFunctionModifier")]
    assert [m.type for m in obs.modifiers if "Pruning" not in m.type or "Layer" in m.type
            or "Channel" in m.type] == \
        [m.type for m in gmp.modifiers if "Pruning" not in m.type or "Layer" in m.type
         or "Channel" in m.type]
    assert obs.variables.get("distill_hardness") == gmp.variables.get("distill_hardness")

# --- under the lifecycle ---------------------------------------------------------------------
def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def weights(model):
    return [model[0].weight, model[2].weight]


def overall_sparsity(model):
    ws = weights(model)
    return sum(float((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def train(recipe_text, model=None, record=None, epochs=None):
    model = model or tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    lc = ModifierLifecycle(parse_recipe(recipe_text), model)
    lc.initialize(opt, SPE)
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(epochs or lc.max_epochs):
        lc.epoch_start()
        for _ in range(SPE):
            lc.batch_start()
            x = torch.randn(8, 16, generator=gen)
            y = torch.randint(0, 8, (8,), generator=gen)
            out = model(x)
            loss = lc.loss_calculated(F.cross_entropy(out, y), x, out)
            loss.backward()
            lc.optim_pre_step()
            opt.step()
            opt.zero_grad()
            lc.optim_post_step()
            lc.batch_end()
            history.append(record(lc, model) if record else None)
        lc.epoch_end()
    lc.finalize()
    return model, lc, history


OBS = """
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 3
  - !OBSPruningModifier
      params: __ALL_PRUNABLE__
      init_sparsity: 0.05
      final_sparsity: 0.8
      start_epoch: {start}
      end_epoch: 2.0
      update_frequency: 0.5
      num_grads: 4
      fisher_block_size: 8
      damp: 1.0e-4
      global_sparsity: {global_}
      mask_type: {mask}
"""


def test_reaches_final_sparsity_at_end_epoch_and_masks_hold():
    text = OBS.format(start=0.5, global_="false", mask="unstructured")

    def record(lc, m):
        fishers = lc.modifiers[1]._fishers
        return (lc.step, [tensor_sparsity(w) for w in weights(m)],
                [(w == 0).clone() for w in weights(m)], fishers is not None)

    model, _, history = train(text, record=record)
    zeros_at_end = None
    for step, layers, zeros, holding in history:
        epoch = step / SPE
        if epoch < 0.5:
            assert layers == [0.0, 0.0]
        else:
            last = min(math.floor(epoch * 2 + 1e-9) / 2, 2.0)
            for value in layers:  # per layer: each follows the cubic schedule exactly
                assert value == pytest.approx(sparsity_at(last, 0.5, 2.0, 0.05, 0.8), abs=0.005)
        if step == 20:
            zeros_at_end = zeros
        if step >= 20:
            assert not holding  # the Fisher is freed after the last update
            # masked weights stay exactly zero through further AdamW steps
            assert all(bool(z_end[z_end].eq(z[z_end]).all()) for z_end, z in zip(zeros_at_end,
                                                                                   zeros))
    assert [tensor_sparsity(w) for w in weights(model)] == [pytest.approx(0.8, abs=0.005)] * 2
    for w, z in zip(weights(model), zeros_at_end):
        assert (w[z] == 0).all()
    # the Fisher exists only while the num_grads=4 steps before each update (at steps 5, 10,
    # 15, 20) are collected: created at step s-4, freed by the update at step s
    held = [step for step, *_, holding in history if holding]
    assert held == [s - k for s in (5, 10, 15, 20) for k in (3, 2, 1)]


def test_gradients_collected_before_each_update(caplog):
    caplog.set_level(logging.INFO, logger="sparsify.modifiers.obs")
    train(OBS.format(start=0.5, global_="false", mask="unstructured"))
    updates = [r.getMessage() for r in caplog.records if "OBS masks updated" in r.getMessage()]
    assert len(updates) == 4  # epochs 0.5, 1.0, 1.5, 2.0
    assert all(m.endswith("from 4 gradients") for m in updates)


def test_first_update_waits_for_gradients_when_none_precede_it(caplog):
    caplog.set_level(logging.INFO, logger="sparsify.modifiers.obs")
    text = OBS.format(start=0.0, global_="false", mask="unstructured").replace(
        "init_sparsity: 0.05", "init_sparsity: 0.3")
    _, _, history = train(text, record=lambda lc, m: (lc.step, overall_sparsity(m)))
    by_step = dict(history)
    assert by_step[3] == 0.0  # steps 0..3: gradients being collected
    assert by_step[4] == pytest.approx(0.3, abs=0.005)  # pruned to the epoch-0 target
    assert by_step[30] == pytest.approx(0.8, abs=0.005)
    assert any("no gradients yet at epoch 0.000; pruning after the next 4 steps" in r.getMessage()
               for r in caplog.records)


def test_updates_closer_than_half_a_fisher_block_prune_by_magnitude(caplog):
    # 5 steps between updates, fisher_block_size 16: fewer than 8 gradients per update
    text = OBS.format(start=0.5, global_="false", mask="unstructured").replace(
        "fisher_block_size: 8", "fisher_block_size: 16")
    gmp = "\n".join(line for line in text.splitlines()
                    if not line.strip().startswith(("num_grads", "fisher_block_size", "damp",
                                                    "global_sparsity")))
    gmp = gmp.replace("OBSPruningModifier", "GMPruningModifier")
    caplog.set_level(logging.INFO, logger="sparsify.modifiers.obs")

    def record(lc, m):
        return lc.modifiers[1]._fishers is not None

    obs_model, _, held = train(text, record=record)
    gmp_model, _, _ = train(gmp)
    assert not any(held)  # no Fisher is ever built
    assert not any("OBS masks updated" in r.getMessage() for r in caplog.records)
    warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "5.0 optimizer steps apart" in warning and "fisher_block_size=16" in warning
    assert "by magnitude" in warning
    for a, b in zip(weights(obs_model), weights(gmp_model)):
        assert torch.equal(a == 0, b == 0) and torch.allclose(a, b)
    # half a block of gradients is enough: the same run with fisher_block_size 10 uses OBS
    caplog.clear()
    train(text.replace("fisher_block_size: 16", "fisher_block_size: 10"))
    assert sum("OBS masks updated" in r.getMessage() for r in caplog.records) == 4


def test_global_and_per_layer_sparsity():
    per_layer, *_ = train(OBS.format(start=0.5, global_="false", mask="unstructured"))
    assert [tensor_sparsity(w) for w in weights(per_layer)] == [pytest.approx(0.8, abs=0.005)] * 2
    glob, *_ = train(OBS.format(start=0.5, global_="true", mask="unstructured"))
    assert overall_sparsity(glob) == pytest.approx(0.8, abs=0.005)
    layers = [tensor_sparsity(w) for w in weights(glob)]
    assert abs(layers[0] - layers[1]) > 0.02, layers  # one ranking across layers


def test_block4_masks():
    text = OBS.format(start=0.5, global_="false", mask="block4")
    model, *_ = train(text)
    for w in weights(model):
        nonzero = (w.detach().reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert ((nonzero == 0) | (nonzero == 4)).all()
    assert overall_sparsity(model) == pytest.approx(0.8, abs=0.01)


def test_block_mask_rows_not_divisible_keep_partial_groups():
    # 10 input channels: the last group of each row holds 2 real weights and is never pruned,
    # and the target counts it, as for GMP's block masks (masks.py)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 8))
    text = OBS.format(start=0.5, global_="false", mask="block4").replace(
        "__ALL_PRUNABLE__", "['0.weight']").replace("final_sparsity: 0.8", "final_sparsity: 0.5")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lc = ModifierLifecycle(parse_recipe(text), model)
    lc.initialize(opt, SPE)
    for _ in range(3 * SPE):
        lc.batch_start()
        loss = model(torch.randn(4, 10)).square().mean()
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    lc.finalize()
    w = model[0].weight.detach()
    assert (w[:, 8:] != 0).all()
    groups = (w[:, :8].reshape(12, 2, 4) != 0).sum(-1)
    assert ((groups == 0) | (groups == 4)).all()
    assert int((groups == 0).sum()) == round(0.5 * 36)


def test_grad_sampler_kwargs_accepted_and_ignored_with_a_note(caplog):
    caplog.set_level(logging.INFO, logger="sparsify.modifiers.obs")
    text = OBS.format(start=0.5, global_="false", mask="unstructured") + (
        "      grad_sampler_kwargs:\n        batch_size: 8\n")
    train(text, epochs=1)
    assert any("grad_sampler_kwargs {'batch_size': 8} ignored" in r.getMessage()
               for r in caplog.records)


# --- memory ----------------------------------------------------------------------------------
def test_memory_refusal_names_the_fields():
    # a 1024x1024 layer in one Fisher block: 4 TB of float32 (and 32 TB of float64 work
    # space to invert it), over any machine's memory
    model = nn.Sequential(nn.Linear(1024, 1024))
    text = _one("      fisher_block_size: 1048576\n")
    lc = ModifierLifecycle(parse_recipe(text), model)
    with pytest.raises(ValueError, match=r"fisher_block_size: .*1,048,576 weights selected by "
                                         r"params needs [\d.]+ GB.*lower fisher_block_size or "
                                         r"select fewer weights with params"):
        lc.initialize(torch.optim.SGD(model.parameters(), lr=0.1), SPE)


def test_memory_limit_can_be_capped(monkeypatch):
    monkeypatch.setattr(OBSPruningModifier, "max_fisher_memory_gb", 0.25)
    text = _one("      fisher_block_size: 50\n")
    small = nn.Sequential(nn.Linear(16, 32))  # 512 x 50 x 4 bytes: fits
    ModifierLifecycle(parse_recipe(text), small).initialize(None, SPE)
    big = nn.Sequential(nn.Linear(1024, 1024))  # 1M x 50 x 4 bytes + work space: 0.46 GB
    with pytest.raises(ValueError, match=r"over 0\.25 GB \(the limit\)"):
        ModifierLifecycle(parse_recipe(text), big).initialize(None, SPE)


def test_fit_fisher_block_size_halves_the_block_until_it_fits(monkeypatch, caplog):
    monkeypatch.setattr(OBSPruningModifier, "max_fisher_memory_gb", 0.45)
    big = nn.Sequential(nn.Linear(1024, 1024))  # block 64: 0.52 GB with work space; 32: 0.39
    text = _one("      fisher_block_size: 64\n      fit_fisher_block_size: true\n")
    lc = ModifierLifecycle(parse_recipe(text), big)
    with caplog.at_level("INFO"):
        lc.initialize(None, SPE)
    modifier = lc.modifiers_of("OBSPruningModifier")[0]
    assert modifier.fisher_block_size == 32
    assert "fisher_block_size 64 -> 32" in caplog.text
    # a block mask's group bounds the halving: block4 stops at 4 and refuses below it
    monkeypatch.setattr(OBSPruningModifier, "max_fisher_memory_gb", 1e-4)
    text = _one("      fisher_block_size: 16\n      fit_fisher_block_size: true\n"
                "      mask_type: block4\n")
    with pytest.raises(ValueError, match="lower fisher_block_size"):
        ModifierLifecycle(parse_recipe(text), nn.Sequential(nn.Linear(1024, 1024))
                          ).initialize(None, SPE)


def test_fisher_bytes_counts_blocks_and_padding():
    assert obs_math.fisher_bytes((32, 16), 50) == 11 * 50 * 50 * 4 + 16 * 11 * 50
    assert obs_math.Layout((8, 16, 3, 3), 32).numel == 8 * 16 * 9
    assert obs_math.Layout((12, 10), 8, group=4).cols_pad == 12
    assert obs_math.Layout((4, 4), 50).block == 16  # a block never exceeds the weight


# --- the maths -------------------------------------------------------------------------------
def _regression(n=4096):
    """Features of very different scales: 8 large ones (x10) with small weights, 8 small ones
    (x0.1) strongly correlated with them and with large weights. Magnitude pruning removes the
    large-scale features (which carry the signal); OBS removes the small ones and moves their
    contribution onto the correlated large-scale features."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 8, generator=g)
    x = torch.cat([10 * z, 0.1 * (z + 0.3 * torch.randn(n, 8, generator=g))], 1)
    w_true = torch.cat([0.1 * torch.randn(8, generator=g), 3 * torch.randn(8, generator=g)])
    y = x @ w_true + 0.1 * torch.randn(n, generator=g)
    return x, y


def _loss(x, y, w):
    return float(((x @ w - y) ** 2).mean() / 2)


def _refit(x, y, keep):
    w = torch.zeros(x.shape[1], dtype=x.dtype)
    w[keep] = torch.linalg.lstsq(x[:, keep], y.unsqueeze(1)).solution.squeeze(1)
    return w


@pytest.mark.parametrize("recomputations", [1, 4])
def test_obs_update_with_the_exact_hessian_is_the_least_squares_refit(recomputations):
    """With F = H exactly (gradients whose outer products sum to m*H), the OBS update of a
    quadratic loss is its exact minimiser on the kept weights, and the saliency of each weight
    is w_i^2 / (2 [H^-1]_ii)."""
    x, y = (t.double() for t in _regression())
    hessian = x.T @ x / x.shape[0]
    w0 = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    layer = nn.Linear(16, 1, bias=False).double()
    layer.weight.data.copy_(w0.unsqueeze(0))
    fisher = obs_math.BlockFisher(layer.weight, 16)
    factor = torch.linalg.cholesky(hessian)
    for i in range(16):  # sum_i (4 L_i)(4 L_i)^T / 16 = L L^T = H
        assert obs_math.add_gradients([fisher], [(4 * factor[:, i]).unsqueeze(0)], [None])
    keep_scores = obs_math._Layer(layer.weight, fisher, None).scores(1e-12, 0.0)[0]
    expected = w0**2 / (2 * torch.linalg.inv(hessian).diagonal())
    assert torch.allclose(keep_scores, expected, rtol=1e-3)
    (mask,) = obs_math.obs_prune_([layer.weight], [fisher], [None], [0.5], global_sparsity=False,
                                  damp=1e-12, eps=0.0, num_recomputations=recomputations)
    keep = mask[0].bool()
    assert int(keep.sum()) == 8
    w = layer.weight.detach()[0]
    assert (w[~keep] == 0).all()
    assert torch.allclose(w, _refit(x, y, keep), atol=1e-4)
    if recomputations == 1:  # one round prunes the 8 lowest saliencies
        assert set(torch.nonzero(~keep).flatten().tolist()) == set(
            torch.topk(expected, 8, largest=False).indices.tolist())


def _one_shot(kind: str, fields: str = ""):
    """Least-squares weights, then one-shot pruning to 50% at epoch 1 under the lifecycle; the
    Fisher comes from the 200 mini-batch gradients of epoch 0 (lr 0: only the Fisher moves)."""
    x, y = _regression()
    steps = 200
    model = nn.Linear(16, 1, bias=False)
    w0 = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    with torch.no_grad():
        model.weight.copy_(w0.unsqueeze(0))
    recipe = f"""
m_modifiers:
  - !EpochRangeModifier
      end_epoch: 1.0
  - !{kind}
      params: [weight]
      init_sparsity: 0.5
      final_sparsity: 0.5
      start_epoch: 1.0
      end_epoch: 1.0
{fields}"""
    lc = ModifierLifecycle(parse_recipe(recipe), model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    lc.initialize(opt, steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        lc.batch_start()
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        loss = lc.loss_calculated(((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean() / 2)
        loss.backward()
        lc.optim_pre_step()
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    lc.finalize()
    w = model.weight.detach()[0]
    keep = w != 0
    assert int(keep.sum()) == 8
    return _loss(x, y, w), _loss(x, y, w0 * keep), _loss(x, y, _refit(x, y, keep))


def test_obs_beats_magnitude_pruning_when_feature_scales_differ():
    magnitude, _, _ = _one_shot("GMPruningModifier")
    obs, same_mask_no_update, best_on_mask = _one_shot(
        "OBSPruningModifier", "      num_grads: 200\n      fisher_block_size: 16\n"
                              "      damp: 1.0e-7\n      global_sparsity: false\n")
    assert obs < 0.1 * magnitude  # the Fisher saliency picks the right weights
    assert obs < 0.85 * same_mask_no_update  # and the update compensates for the pruned ones
    assert obs < 1.1 * best_on_mask  # nearly the least-squares refit on the kept weights
    diagonal, diagonal_no_update, _ = _one_shot(
        "OBSPruningModifier", "      num_grads: 200\n      fisher_block_size: 1\n"
                              "      damp: 1.0e-7\n      global_sparsity: false\n")
    assert diagonal == pytest.approx(diagonal_no_update)  # a 1x1 block moves no other weight
    assert diagonal < 0.1 * magnitude


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_fisher_and_masks_stay_on_the_device():
    model = tiny().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    lc = ModifierLifecycle(parse_recipe(OBS.format(start=0.5, global_="true", mask="block4")),
                           model)
    lc.initialize(opt, SPE)
    for _ in range(3 * SPE):
        lc.batch_start()
        x = torch.randn(8, 16, device="cuda")
        loss = F.cross_entropy(model(x), torch.randint(0, 8, (8,), device="cuda"))
        loss.backward()
        lc.optim_pre_step()
        if lc.modifiers[1]._fishers:
            assert all(f.gram.is_cuda for f in lc.modifiers[1]._fishers.values())
        opt.step()
        opt.zero_grad()
        lc.optim_post_step()
        lc.batch_end()
    lc.finalize()
    assert overall_sparsity(model) == pytest.approx(0.8, abs=0.01)
    assert obs_math.memory_limit_bytes(torch.device("cuda")) > 0
