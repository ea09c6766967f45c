"""No export ships a model slower than its dense FP32 baseline: an INT8 model that the export's
speed check finds slower is replaced by the trained weights in FP32 (export/fallback.py), and
the deployment, config.json, metrics.yaml and the summary say so.

The speed check is stubbed (the decision must not depend on this machine's load); the tiny
model has what ONNX Runtime cannot run on integers (hard-swish, a squeeze-excite Mul).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sparsify.export import fallback
from sparsify.export.fallback import FP32, FP32_SPARSE, INT8, Candidate, ship_not_slower
from sparsify.export.image import export_classifier
from sparsify.quantization import disable_observers_, fold_qat_batchnorm_, prepare_qat_
from sparsify.quantization.fake_quant import fake_quant_bypassed
from sparsify.report import _export_section, _shipped_text, slow_int8_warning

torchvision = pytest.importorskip("torchvision")

SIZE = 16
CONFIG = {"task": "image_classification", "architecture": "tiny_se", "class_names": list("abc"),
          "num_classes": 3, "resize": SIZE, "crop": SIZE, "mean": [0.0] * 3, "std": [1.0] * 3}


class TinySE(nn.Module):
    """Conv-BN-hard-swish, a squeeze-excite block with a hard-sigmoid gate, Conv-BN-ReLU, head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.Hardswish())
        self.se = SqueezeExcitation(16, 8, scale_activation=nn.Hardsigmoid)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.body(self.se(self.stem(x))))))


def _trained_qat_model() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """A QAT model as training leaves it (observers frozen, BatchNorm folded, 50% of the body's
    weights pruned) beside its dense start, and validation images it classifies."""
    torch.manual_seed(0)
    baseline = TinySE().eval()
    model = TinySE()
    model.load_state_dict(baseline.state_dict())
    with torch.no_grad():
        weight = model.body[0].weight
        weight.mul_((weight.abs() > weight.abs().median()).float())
    prepare_qat_(model)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, SIZE, SIZE))
    disable_observers_(model)
    model.eval()
    fold_qat_batchnorm_(model)
    images = torch.randn(24, 3, SIZE, SIZE)
    with torch.no_grad():
        labels = model(images).argmax(1)  # the trained model is right on all of them
    return model, baseline, images, labels


def _speed(value: float) -> dict[str, dict[str, float]]:
    return {f"batch_{b}": {"speedup": value, "speedup_p25": value - 0.05,
                           "speedup_p75": value + 0.05} for b in fallback.TIMED_BATCH_SIZES}


def _stub_speed(monkeypatch, int8: float, fp32: float = 1.01) -> list[str]:
    """The speed check answers ``int8`` for an INT8 file, ``fp32`` for any other; returns the
    formats it was asked about."""
    asked: list[str] = []

    def check(model: Path, baseline: Path, make_inputs, *args, **kwargs):
        feed = make_inputs(2)
        assert feed["input"].shape == (2, 3, SIZE, SIZE)
        n_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(model)).graph.node)
        asked.append(INT8 if n_q else FP32)
        return _speed(int8 if n_q else fp32)

    monkeypatch.setattr(fallback, "speed_check", check)
    return asked


def _judged_files(monkeypatch) -> list[str]:
    """sha256 of every file the fidelity rule's comparison ran on."""
    import sparsify.export.inspect as inspect

    seen: list[str] = []
    real = inspect.compare_with_torch

    def spy(model, onnx_path, *args, **kwargs):
        seen.append(hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest())
        return real(model, onnx_path, *args, **kwargs)

    monkeypatch.setattr(inspect, "compare_with_torch", spy)
    return seen


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_slower_int8_ships_the_trained_weights_in_fp32(tmp_path, monkeypatch):
    model, baseline, images, labels = _trained_qat_model()
    asked = _stub_speed(monkeypatch, int8=0.7)
    judged = _judged_files(monkeypatch)
    deploy, artifacts = tmp_path / "deployment", tmp_path / "training_artifacts"

    result = export_classifier(model, baseline, images, labels, deploy,
                               artifacts / "dense_baseline.onnx", True, CONFIG)

    assert asked == [INT8, FP32]  # INT8 timed first, then the fallback
    assert result.format == FP32_SPARSE and result.quantized is False
    shipped = deploy / "model.onnx"
    assert result.onnx == shipped
    assert not _ops(shipped) & {"QuantizeLinear", "DequantizeLinear"}
    assert result.quantize_nodes == 0 and result.integer_kernels == 0
    # the rejected INT8 model is kept beside the baseline, not in the deployment
    kept = artifacts / "model_int8.onnx"
    assert "QuantizeLinear" in _ops(kept)
    assert sorted(p.name for p in deploy.glob("*.onnx")) == ["model.onnx"]
    # sparsity kept: the pruned body conv's zeros are in the FP32 file
    assert result.onnx_sparsity > 0.2
    # the fidelity rule ran on the very file that ships, and passed
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() in judged
    assert result.fidelity.ok and result.fidelity.agreement["max_rel_diff"] < 1e-4
    # it says what shipped and why: config.json, README, metrics.yaml, summary
    config = json.loads((deploy / "config.json").read_text())
    assert config["export_format"] == FP32_SPARSE and config["quantized"] is False
    assert "slower" in config["fallback_reason"] and "0.70x" in config["fallback_reason"]
    assert "fp32_sparse" in (deploy / "README.md").read_text()
    section = _export_section(result)
    assert section["format"] == FP32_SPARSE and "0.70x" in section["fallback_reason"]
    assert [c["format"] for c in section["candidates"]] == [INT8, FP32_SPARSE]
    assert section["candidates"][0]["slower"] and not section["candidates"][1]["slower"]
    line = _shipped_text(section)
    assert line.startswith("FP32") and "INT8 was slower" in line
    # no "INT8 is slower" warning about a model that is not INT8
    slow = {k: {**v, "speedup": 0.7, "speedup_p25": 0.6, "speedup_p75": 0.8}
            for k, v in _speed(0.7).items()}
    assert slow_int8_warning(slow, result.quantized, lambda: {}) is None
    # the shipped file computes the trained model in float (fake quantization off)
    with torch.no_grad(), fake_quant_bypassed():
        expected = model(images).numpy()
    from sparsify.export.inspect import run_onnx

    got = run_onnx(shipped, {"input": images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.ptp(expected)


def test_int8_that_is_not_slower_ships_as_int8(tmp_path, monkeypatch):
    model, baseline, images, labels = _trained_qat_model()
    asked = _stub_speed(monkeypatch, int8=1.6)
    judged = _judged_files(monkeypatch)
    deploy, artifacts = tmp_path / "deployment", tmp_path / "training_artifacts"

    result = export_classifier(model, baseline, images, labels, deploy,
                               artifacts / "dense_baseline.onnx", True, CONFIG)

    assert asked == [INT8]
    assert result.format == INT8 and result.quantized is True
    assert "QuantizeLinear" in _ops(deploy / "model.onnx") and result.integer_kernels > 0
    assert not (artifacts / "model_int8.onnx").exists()
    assert not (artifacts / "model_fp32_sparse.onnx").exists()
    assert hashlib.sha256((deploy / "model.onnx").read_bytes()).hexdigest() in judged
    config = json.loads((deploy / "config.json").read_text())
    assert config["export_format"] == INT8 and "fallback_reason" not in config
    section = _export_section(result)
    assert section["format"] == INT8 and section["fallback_reason"] is None
    assert _shipped_text(section) == "INT8"


def test_a_run_without_qat_ships_its_fp32_model_untimed(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a dense FP32 run is not timed by the export")

    monkeypatch.setattr(fallback, "speed_check", never)
    torch.manual_seed(0)
    model = TinySE().eval()
    images = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad():
        labels = model(images).argmax(1)
    result = export_classifier(model, TinySE().eval(), images, labels, tmp_path / "dep",
                               tmp_path / "base.onnx", False, CONFIG)
    assert result.format == FP32 and result.quantized is False
    assert json.loads((tmp_path / "dep" / "config.json").read_text())["export_format"] == FP32


def _fake_judge(ok_formats: set[str], drift: float = 0.0):
    from sparsify.trainers.base import Fidelity

    def judge(path: Path, fmt: str) -> Fidelity:
        assert path.is_file()
        gap = 0.0 if fmt in ok_formats else 5.0
        return Fidelity("top1", 0.9, 0.9 - gap / 100, gap, 0.5, 1000, {"max_rel_diff": drift})

    return judge


def _files(tmp_path: Path) -> tuple[Path, Path]:
    deploy = tmp_path / "dep"
    deploy.mkdir()
    (deploy / "model.onnx").write_bytes(b"int8")
    (tmp_path / "base.onnx").write_bytes(b"dense")
    return deploy / "model.onnx", tmp_path / "base.onnx"


def _write(path: Path) -> Path:
    path.write_bytes(b"fp32")
    return path


def test_an_fp32_fallback_that_fails_the_fidelity_rule_is_not_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(fallback, "speed_check", lambda m, b, f, **kw: _speed(
        0.7 if m.read_bytes() == b"int8" else 1.0))
    model, base = _files(tmp_path)
    shipped = ship_not_slower(model, base, quantized=True, make_inputs=lambda b: {},
                              judge=_fake_judge({INT8}), export_fp32=_write,
                              fp32_tolerance=1e-4)
    assert shipped.format == INT8 and shipped.quantized
    assert model.read_bytes() == b"int8" and not (tmp_path / "model_fp32_sparse.onnx").exists()
    assert "refused" in shipped.reason and "fidelity rule" in shipped.reason
    assert shipped.candidates[1].refused


def test_an_fp32_fallback_that_does_not_match_pytorch_is_not_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(fallback, "speed_check", lambda m, b, f, **kw: _speed(
        0.7 if m.read_bytes() == b"int8" else 1.0))
    model, base = _files(tmp_path)
    shipped = ship_not_slower(model, base, quantized=True, make_inputs=lambda b: {},
                              judge=_fake_judge({INT8, FP32_SPARSE}, drift=1e-2),
                              export_fp32=_write, fp32_tolerance=1e-4)
    assert shipped.format == INT8 and "output range" in shipped.reason


def test_slower_means_slower_across_the_spread():
    # one batch size whose upper quartile lies below 1.0 is enough
    mixed = {**_speed(1.5), "batch_32": {"speedup": 0.8, "speedup_p25": 0.7,
                                         "speedup_p75": 0.95}}
    assert Candidate(INT8, Path("m"), True, mixed).slower
    # a range that straddles 1.0 is noise, not slower
    straddles = {"batch_1": {"speedup": 0.9, "speedup_p25": 0.8, "speedup_p75": 1.05}}
    assert not Candidate(INT8, Path("m"), True, straddles).slower


def test_a_long_timing_is_also_judged_on_its_median():
    """RegNetX-200MF's INT8 at batch 32, idle machine: 0.79x (0.61-1.13) of a ~100 ms baseline
    is slower; MiniLM's 5 ms 12-token batch-1 timing, 0.80x (0.71-1.26), is noise."""
    long = {"speedup": 0.79, "speedup_p25": 0.61, "speedup_p75": 1.13, "baseline_ms": 104.0}
    short = {"speedup": 0.80, "speedup_p25": 0.71, "speedup_p75": 1.26, "baseline_ms": 5.1}
    assert fallback.is_slower(long) and not fallback.is_slower(short)
    assert Candidate(INT8, Path("m"), True, {**_speed(1.4), "batch_32": long}).slower
    assert not Candidate(INT8, Path("m"), True, {**_speed(1.4), "batch_1": short}).slower
    # the report's entries name the baseline's time differently; the rule reads both
    report_entry = {"speedup": 0.9, "speedup_p25": 0.8, "speedup_p75": 1.05,
                    "dense_fp32_baseline_ms": fallback.MEDIAN_RULE_MIN_MS}
    assert fallback.is_slower(report_entry)
    assert not fallback.is_slower({**report_entry, "speedup": 1.0})


def test_an_unclear_speed_check_takes_more_repetitions(monkeypatch):
    import sparsify.export.inspect as inspect

    calls: list[list[int]] = []
    # batch 1: clearly slower (0.5x) from the start; batch 32: straddles 1.0 at first, then
    # the further repetitions show it slower
    answers = {1: [[2.0] * 10], 32: [[0.8, 1.2] * 5, [2.0] * 10]}

    def fake(models, make_inputs, batch_sizes, warmup, runs):
        calls.append(list(batch_sizes))
        return {b: {"model": answers[b].pop(0), "baseline": [1.0] * runs} for b in batch_sizes}

    monkeypatch.setattr(inspect, "measure_interleaved", fake)
    speed = fallback.speed_check(Path("m"), Path("b"), lambda b: {})
    # batch 32 is timed again until its spread no longer straddles 1.0
    assert calls == [[1, 32], [32]]
    assert speed["batch_1"]["runs"] == 10 and speed["batch_32"]["runs"] == 20
    assert speed["batch_1"]["baseline_ms"] == speed["batch_32"]["baseline_ms"] == 1.0
    assert fallback.is_slower(speed["batch_32"]) and fallback.is_slower(speed["batch_1"])


def test_speed_check_times_every_sequence_length_the_report_times(monkeypatch):
    import sparsify.export.inspect as inspect

    seen: list[tuple[int, int]] = []

    def fake(models, make_inputs, batch_sizes, warmup, runs):
        out = {}
        for b in batch_sizes:
            seen.append((b, make_inputs(b)["length"]))
            out[b] = {"model": [1.0] * runs, "baseline": [2.0] * runs}
        return out

    monkeypatch.setattr(inspect, "measure_interleaved", fake)
    speed = fallback.speed_check(Path("m"), Path("b"),
                                 lambda batch, length: {"length": length},
                                 lengths={"max_seq_length": 64, "data_p95": 12})
    assert sorted(speed) == ["batch_1", "batch_1_data_p95", "batch_32", "batch_32_data_p95"]
    assert sorted(seen) == [(1, 12), (1, 64), (32, 12), (32, 64)]


def test_speed_check_times_both_files_at_the_reports_batch_sizes(tmp_path):
    from sparsify.export.onnx_export import export_onnx
    from sparsify.report import measure_latencies

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}}
    path = export_onnx(model, (torch.randn(1, 3, 2, 2),), tmp_path / "m.onnx",
                       input_names=["x"], output_names=["y"], dynamic_axes=axes)
    inputs = lambda b: {"x": np.zeros((b, 3, 2, 2), np.float32)}  # noqa: E731
    speed = fallback.speed_check(path, path, inputs, runs=3, warmup=1, max_runs=9)
    assert set(speed) == {f"batch_{b}" for b in fallback.TIMED_BATCH_SIZES}
    assert all(v["speedup_p25"] <= v["speedup"] <= v["speedup_p75"] for v in speed.values())
    # a file against itself straddles 1.0 more often than not: more repetitions, within bounds
    assert all(v["runs"] in (3, 6, 9) for v in speed.values())
    assert set(measure_latencies(path, path, inputs, runs=2)) == set(speed)


def test_fake_quant_bypassed_computes_the_float_model_and_changes_no_quantizer():
    torch.manual_seed(0)
    model = TinySE()
    prepare_qat_(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, SIZE, SIZE))
    model.eval()
    dense = TinySE().eval()
    dense.load_state_dict(model.state_dict(), strict=False)  # the QAT model's float weights
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        quantized = model(x)
        before = {k: v.clone() for k, v in model.state_dict().items() if "quant" in k}
        with fake_quant_bypassed():
            floating = model(x)
            model.train()  # not even a training-mode forward observes
            model(x)
        model.eval()
        expected = dense(x)
    assert torch.allclose(floating, expected, atol=1e-5)
    assert not torch.allclose(quantized, expected, atol=1e-5)
    after = model.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_the_environment_can_ship_int8_without_the_speed_check(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("SPARSIFY_EXPORT_FORMAT=int8 skips the speed check")

    monkeypatch.setattr(fallback, "speed_check", never)
    monkeypatch.setenv(fallback.FORMAT_ENV, "int8")
    model, base = _files(tmp_path)
    shipped = ship_not_slower(model, base, quantized=True, make_inputs=lambda b: {},
                              judge=_fake_judge({INT8}), export_fp32=_write,
                              fp32_tolerance=1e-4)
    assert shipped.format == INT8 and shipped.forced
    assert "speed check skipped" in shipped.to_dict()["chosen_by"]
    monkeypatch.setenv(fallback.FORMAT_ENV, "fp16")
    from sparsify.errors import ExportError

    with pytest.raises(ExportError, match="valid: auto"):
        ship_not_slower(model, base, quantized=True, make_inputs=lambda b: {},
                        judge=_fake_judge({INT8}), export_fp32=_write, fp32_tolerance=1e-4)


def test_three_models_timed_in_turn_never_run_twice_in_a_row(monkeypatch):
    # reversing the order every other repetition (A B C, C B A) ran A and C twice in a row and
    # favoured them over B; rotating it does not (two models: A B, B A as before)
    import sparsify.export.inspect as inspect

    log: list[str] = []

    class Session:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, outputs, feed):
            log.append(self.name)

    monkeypatch.setattr(inspect, "ort_session", lambda path, threads=None: Session(str(path)))
    inspect.measure_interleaved({"a": "A", "b": "B", "c": "C"}, lambda b: {}, (1,), warmup=0,
                                runs=6)
    assert all(x != y for x, y in zip(log, log[1:])), log
    assert sorted(log[::3]) == ["A", "A", "B", "B", "C", "C"]  # each first equally often
    log.clear()
    inspect.measure_interleaved({"a": "A", "b": "B"}, lambda b: {}, (1,), warmup=0, runs=4)
    assert log == ["A", "B", "B", "A", "A", "B", "B", "A"]
