"""bench/bench_training_cost.py on a tiny CNN: the three configurations it times really differ
(the lifecycle holds the pruning masks and sets the LR, QAT swaps in fake quantization), so
the benchmark cannot time a plain loop three times; and its timing, summary and report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_training_cost",
                                                  BENCH / "bench_training_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_training_cost"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _runners(steps: int = 3, sparsity: float = 0.8):
    spec = bench.tiny_spec()
    runners = {c: bench.Runner(spec, c, sparsity=sparsity, steps_per_epoch=2)
               for c in bench.CONFIGS}
    batches = bench.make_batches(spec, 2)
    for runner in runners.values():
        for i in range(steps):
            runner.step(batches[i % 2])
    return runners


def test_the_lifecycle_holds_the_masks_and_sets_the_lr():
    runners = _runners(steps=5)  # crosses two epoch boundaries (steps_per_epoch=2)
    plain, masks, qat = (runners[c] for c in bench.CONFIGS)
    # the same pruned start; the plain loop's SGD grows the zeros back, the masks keep them
    assert masks.names == plain.names and len(masks.names) == 2  # conv1, conv2: not the stem
    assert plain.compute_sparsity() < 0.1
    for runner in (masks, qat):
        assert runner.compute_sparsity() == pytest.approx(0.8, abs=0.01)
        params = dict(runner.model.named_parameters())
        for name in runner.names:
            zeros = float((params[name] == 0).float().mean())
            assert zeros == pytest.approx(0.8, abs=0.02), name
        # the lifecycle's clock moved with the steps; the recipe's cosine LR was applied
        assert runner.lifecycle.step == 5
        lr_modifier = runner.lifecycle.modifiers_of("LearningRateFunctionModifier")[0]
        # set at the last batch_start, one step before the clock advanced
        assert runner.lr() == pytest.approx(lr_modifier.lr_at((runner.lifecycle.step - 1) / 2))
        assert runner.lr() < bench.tiny_spec().lr
    assert plain.lifecycle is None


def test_qat_is_active_only_in_the_qat_configuration():
    from sparsify.quantization import FakeQuantizer, QATConv2d, WeightFakeQuantizer

    runners = _runners()
    qat = runners["qat"]
    assert qat.lifecycle.qat_active
    assert isinstance(qat.model.conv1, QATConv2d)
    assert any(isinstance(m, WeightFakeQuantizer) for m in qat.model.modules())
    assert qat.calibrated_observers() > 0  # observers on: they saw the training batches
    observer = next(m for m in qat.model.modules() if isinstance(m, FakeQuantizer))
    assert bool(observer.observer_enabled)
    for name in ("plain", "masks"):
        assert runners[name].qat_modules() == 0
        assert not any(isinstance(m, FakeQuantizer) for m in runners[name].model.modules())
    lines = bench.check_configurations(runners)
    assert set(lines) == set(bench.CONFIGS) and "80.0%" in lines["masks"]


def test_the_check_refuses_configurations_that_do_not_differ():
    runners = _runners(steps=1)
    runners["masks"].lifecycle = None  # a "masks" loop that no longer applies them
    with torch.no_grad():
        for p in runners["masks"].model.parameters():
            p.add_(1.0)  # the zeros gone, as without masks
    with pytest.raises(RuntimeError, match="masks"):
        bench.check_configurations(runners)
    runners = _runners(steps=1)
    runners["plain"] = runners["masks"]  # the "plain" loop holds masks
    with pytest.raises(RuntimeError, match="plain"):
        bench.check_configurations(runners)


def test_the_qat_recipe_carries_the_family_fields():
    text = bench.recipe_text(bench.bert_spec(), "qat")
    assert "!QuantizationModifier" in text and "!ConstantPruningModifier" in text
    assert 'exclude_module_types: ["LayerNorm", "Tanh"]' in text
    assert "quantize_linear_activations: false" in text
    assert "QuantizationModifier" not in bench.recipe_text(bench.bert_spec(), "masks")
    from sparsify.recipe.parser import parse_recipe

    kinds = [m.type for m in parse_recipe(text).modifiers]
    assert kinds == ["EpochRangeModifier", "LearningRateFunctionModifier",
                     "ConstantPruningModifier", "QuantizationModifier"]


def test_interleaving_and_summary():
    runners = _runners(steps=0)
    times = bench.interleave(runners, bench.make_batches(bench.tiny_spec(), 2), warmup=1,
                             reps=2, block=2)
    assert {c: [len(rep) for rep in reps] for c, reps in times.items()} == {
        c: [2, 2] for c in bench.CONFIGS}
    assert all(r.steps == 5 for r in runners.values())
    stats = bench.summarize(times)
    assert stats["plain"]["ratio"] == 1.0 and stats["plain"]["paired_min"] == 1.0
    assert stats["plain"]["median_ratio"] == 1.0
    for name in ("masks", "qat"):  # per repetition: the block's mean over plain's
        paired = [sum(s["total"] for s in mine) / sum(s["total"] for s in theirs)
                  for mine, theirs in zip(times[name], times["plain"])]
        assert stats[name]["ratio"] == pytest.approx(sorted(paired)[0] / 2 + sorted(paired)[1] / 2)
        assert stats[name]["hooks_share"] == pytest.approx(
            stats[name]["hooks_ms"] / stats["plain"]["median_ms"])
    for entry in stats.values():
        assert entry["p25_ms"] <= entry["median_ms"] <= entry["p75_ms"]
        assert entry["steps"] == 4
        assert sum(entry[f"{p}_ms"] for p in bench.PARTS) <= entry["median_ms"] * 2 + 1
    assert stats["plain"]["hooks_ms"] < stats["masks"]["hooks_ms"]  # the plain loop has none


def test_the_memory_child_and_the_report(tmp_path, capsys):
    memory = bench.memory_child(bench.tiny_spec(), "qat", 2, "cpu", 0.8)
    assert memory["qat_modules"] > 0 and memory["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert memory["peak_mb"] >= memory["built_mb"] > 0
    assert memory["peak_mb"] >= memory["runtime_mb"] > 0
    assert memory["training_mb"] == pytest.approx(memory["peak_mb"] - memory["runtime_mb"])
    assert memory["saved_mb"] > 0  # activations, fake-quantized weights, STE masks
    out = tmp_path / "cost.md"
    text = bench.main(["--models", "tiny", "--reps", "2", "--block", "1", "--warmup", "1",
                       "--no-memory", "--results", str(out)])
    assert out.read_text() == text
    assert "| tiny CNN 16 px, batch 4 | qat |" in text
    assert "masks + LR" in text and "QAT step" in text and "family" in text
    assert "80.0%" in text and "QAT modules" in text


def test_the_verdicts_follow_the_goals():
    def timing(masks, qat):
        entry = {"median_ms": 100.0, "p25_ms": 90.0, "p75_ms": 110.0, "hooks_ms": 0.5,
                 "forward_ms": 40.0, "backward_ms": 50.0, "optimizer_ms": 9.0,
                 "median_ratio": 1.0, "hooks_share": 0.005, "paired_p25": 1.0,
                 "paired_p75": 1.0}
        return {c: {**entry, "ratio": r} for c, r in
                (("plain", 1.0), ("masks", masks), ("qat", qat))}

    def memory(qat_training):
        base = {"peak_mb": 1000.0, "training_mb": 400.0, "increase_mb": 200.0,
                "saved_mb": 100.0}
        return {"plain": base, "masks": base, "qat": {**base, "training_mb": qat_training}}

    good = {"label": "good", "timing": timing(1.02, 1.9), "memory": memory(590.0)}
    bad = {"label": "bad", "timing": timing(1.08, 2.2), "memory": memory(610.0)}
    lines = bench.verdicts({"good": good, "bad": bad})
    assert lines[0].count("met (") == 3 and "MISSED" not in lines[0]
    assert lines[1].count("MISSED (") == 3
    text = bench.table({"good": good})
    assert "| good | qat | 1000 (1.00x) | 590 (1.48x) | 200 (1.00x) | 100 (1.00x) |" in text
