"""bench/bench_catalog_tiers.py: the default path's tier of each optim level, read from the real
catalog and plan, and the export of what each level ships (INT8 graph vs FP32) on tiny
stand-ins."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsify.export.inspect import count_qdq, integer_kernel_count, optimized_graph_op_counts

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_catalog_tiers as tiers_bench  # noqa: E402  (bench/bench_catalog_tiers.py)
from tiny_models import TinyResNet, randomize_bn_  # noqa: E402

TINY_BERT = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 200, "max_position_embeddings": 64, "type_vocab_size": 2}


@pytest.mark.parametrize("family", sorted(tiers_bench.USE_CASES))
def test_levels_take_distinct_largest_medium_smallest_tiers(family):
    tiers = tiers_bench.tier_lookup(family)
    assert [t.level for t in tiers] == [0.0, 0.5, 1.0]
    assert [t.tier for t in tiers] == ["largest", "medium", "smallest"]
    assert len({t.architecture for t in tiers}) == 3, [t.architecture for t in tiers]
    assert [t.format for t in tiers] == ["FP32", "INT8", "INT8"]
    assert [t.pruned for t in tiers] == [False, True, True]
    assert [t.target_sparsity for t in tiers] == [0.0, 0.78, 0.95]
    assert tiers[0].recipe.endswith("_finetune")
    from sparsify.recipe.shipped import is_gradual_recipe

    assert all(is_gradual_recipe(t.recipe) or t.recipe.endswith("_transfer") for t in tiers[1:])


def test_the_architectures_are_those_of_the_catalog():
    arch = {f: [t.architecture for t in tiers_bench.tier_lookup(f)]
            for f in ("image_classification", "nlp", "detection")}
    # mobilenet_v2: the smallest sparse entry (MobileNet-V1, SparseZoo only) falls back to the
    # tier's dense model, as a run on a machine without a SparseZoo cache does
    assert arch["image_classification"] == ["resnet50", "resnet18", "mobilenet_v2"]
    assert arch["detection"] == ["yolov8l", "yolov8s", "yolov8n"]
    assert [tiers_bench.bert_layers(a) for a in arch["nlp"]] == [12, 6, 3]
    with pytest.raises(ValueError):
        tiers_bench.bert_layers("bert-base")


def _kernels(path: Path) -> int:
    return integer_kernel_count(optimized_graph_op_counts(path))


def _tiny_classifier(tier) -> object:
    torch.manual_seed(0)
    model = randomize_bn_(TinyResNet(num_classes=4)).eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    return tiers_bench.Built(model, (torch.zeros(1, 3, 16, 16),),
                             {"input_names": ["input"], "output_names": ["logits"],
                              "dynamic_axes": axes})


def test_level_0_exports_fp32_and_level_05_int8_for_a_tiny_classifier(tmp_path):
    dense, medium, _ = tiers_bench.tier_lookup("image_classification")
    fp32 = tiers_bench.export_fp32(_tiny_classifier(dense), tmp_path / "dense.onnx")
    assert count_qdq(fp32) == (0, 0) and _kernels(fp32) == 0

    built = _tiny_classifier(medium)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    int8, sparsity = tiers_bench.export_int8(built, medium, tmp_path / "medium.onnx")
    assert sparsity == pytest.approx(0.78, abs=0.02)  # conv2 (conv1 is the stem, fc the head)
    assert _kernels(int8) >= 2 and count_qdq(int8)[1] > 0
    # the stand-in itself is left as it was (the export prunes and prepares a copy)
    assert all(torch.equal(p, before[n]) for n, p in built.model.named_parameters())


def test_level_1_exports_int8_for_a_tiny_bert(tmp_path):
    pytest.importorskip("transformers")
    dense, _, smallest = tiers_bench.tier_lookup("nlp")
    small = dataclasses.replace(smallest, architecture="bert (2 layers)")
    built = tiers_bench.build(small, bert_dims=TINY_BERT)
    int8, sparsity = tiers_bench.export_int8(built, small, tmp_path / "small.onnx")
    assert sparsity == pytest.approx(0.95, abs=0.01)
    counts = optimized_graph_op_counts(int8)
    assert integer_kernel_count(counts) > 0, counts
    fp32 = tiers_bench.export_fp32(tiers_bench.build(dataclasses.replace(
        dense, architecture="bert (2 layers)"), bert_dims=TINY_BERT), tmp_path / "dense.onnx")
    assert _kernels(fp32) == 0
    from sparsify.export.inspect import run_onnx

    feed = tiers_bench.text_inputs(3, 12, vocab=TINY_BERT["vocab_size"])
    assert run_onnx(int8, feed)[0].shape == run_onnx(fp32, feed)[0].shape == (3, 2)


def _rows(tmp_path: Path) -> list:
    tiers = tiers_bench.tier_lookup("image_classification")
    row = tiers_bench.Row
    return [row(tiers[0], "FP32", tmp_path / "a", 1.0, 0.0, "level"),
            row(tiers[1], "INT8", tmp_path / "b", 1.0, 0.78, "level"),
            row(tiers[1], "FP32", tmp_path / "c", 1.0, 0.0, "baseline"),
            row(tiers[2], "INT8", tmp_path / "d", 1.0, 0.95, "level"),
            row(tiers[2], "FP32", tmp_path / "e", 1.0, 0.0, "baseline")]


def test_what_ships_follows_the_speed_check(tmp_path):
    rows = _rows(tmp_path)
    names = [r.name for r in rows]
    assert names == ["0.0 FP32", "0.5 INT8", "(0.5) FP32", "1.0 INT8", "(1.0) FP32"]
    rng = np.random.default_rng(0)

    def ms(value: float) -> list[float]:
        return list(value * rng.uniform(0.98, 1.02, 9))

    # level 0.5: INT8 is faster than its dense baseline; level 1.0: INT8 slower than its own
    times = {b: {"0.0 FP32": ms(100.0), "0.5 INT8": ms(25.0), "(0.5) FP32": ms(40.0),
                 "1.0 INT8": ms(12.0), "(1.0) FP32": ms(10.0)} for b in (1, 32)}
    shipped = {s.level: s for s in tiers_bench.shipped_per_level(rows, times)}
    assert shipped[0.0].fmt == "FP32" and shipped[0.0].speedup[1][1] == pytest.approx(1.0)
    assert shipped[0.5].fmt == "INT8"
    assert shipped[0.5].speedup[32][1] == pytest.approx(4.0, rel=0.05)
    assert shipped[1.0].fmt.startswith("FP32") and shipped[1.0].row == "(1.0) FP32"
    assert shipped[1.0].speedup[1][1] == pytest.approx(10.0, rel=0.05)
    text = tiers_bench.summary("image_classification", rows, times)
    assert "level 0.5 ships INT8: 4.0" in text and "level 1.0 ships FP32 (INT8 slower)" in text
