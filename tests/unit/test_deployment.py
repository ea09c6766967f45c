"""The shared export tail: the fidelity rule judges the task metric, reports the output
statistics, and writes the deployment folder even when the rule fails."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.deployment import METRIC_TOLERANCE_POINTS, FidelityError, fidelity
from sparsify.export.image import export_classifier


class Net(nn.Module):
    def __init__(self, drift: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(12, 4)
        self.drift = drift

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if torch.onnx.is_in_onnx_export():  # what the exported graph computes
            y = y + self.drift * torch.arange(4, dtype=y.dtype)
        return y


CONFIG = {"task": "image_classification", "architecture": "net", "class_names": list("abcd"),
          "num_classes": 4, "resize": 2, "crop": 2, "mean": [0.0] * 3, "std": [1.0] * 3}


def _data():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 2, 2)
    net = Net()
    with torch.no_grad():
        labels = net(images).argmax(1)  # labels the model gets right
    return images, labels, net


def test_agreeing_export_writes_the_folder(tmp_path):
    images, labels, net = _data()
    result = export_classifier(net, Net(), images, labels, tmp_path / "dep",
                               tmp_path / "base.onnx", False, CONFIG)
    assert result.fidelity.agreement["top1_agreement"] == 1.0
    assert result.fidelity.metric == "top1" and result.fidelity.gap_points == 0.0
    assert result.fidelity.examples == 16 and result.fidelity.ok
    config = json.loads((tmp_path / "dep" / "config.json").read_text())
    assert config["class_names"] == list("abcd") and config["quantized"] is False
    assert (tmp_path / "dep" / "model.onnx").is_file()


def test_disagreeing_export_is_an_export_error_and_keeps_the_folder(tmp_path, monkeypatch):
    # judged like an INT8 export (no FP32 exactness check); this float graph has no integer
    # kernels, which is not what this test is about
    monkeypatch.setattr("sparsify.export.deployment.check_integer_graph",
                        lambda path, quantized: ({}, 1, 0, 0))
    images, labels, net = _data()
    net.drift = 50.0  # every ONNX prediction becomes class 3
    with pytest.raises(FidelityError, match="disagrees with PyTorch") as caught:
        export_classifier(net, Net(), images, labels, tmp_path / "dep", tmp_path / "b.onnx",
                          True, CONFIG)
    assert isinstance(caught.value, ExportError)
    f = caught.value.result.fidelity
    assert f.pytorch == pytest.approx(1.0) and f.gap_points > 50 and not f.ok
    assert "sparsify.run export" in caught.value.hint
    for name in ("model.onnx", "config.json", "README.md", "sample_input.npz"):
        assert (tmp_path / "dep" / name).is_file(), name


def test_fp32_export_that_does_not_compute_what_pytorch_computes_is_refused(tmp_path):
    images, labels, net = _data()
    net.drift = 1e-2  # too small to change top-1, far above FP32 rounding
    with pytest.raises(ExportError, match="FP32 ONNX model differs"):
        export_classifier(net, Net(), images, labels, tmp_path / "dep", tmp_path / "b.onnx",
                          False, CONFIG)


@pytest.mark.parametrize("examples, gap_examples, ok", [
    (1000, 4, True),     # 0.4 point
    (1000, 6, False),    # 0.6 point
    (360, 1, True),      # one flip of 360 is 0.28 point
    (360, 2, False),     # 0.56 point
    (12, 1, True),       # one example of 12 is 8.3 points: the smallest step the metric has
    (12, 2, False),
])
def test_fidelity_rule_half_a_point_or_one_example(examples, gap_examples, ok):
    result = fidelity("top1", 0.9, 0.9 - gap_examples / examples, examples, {"max_rel_diff": 0.3})
    assert result.ok is ok
    assert result.tolerance_points == pytest.approx(max(METRIC_TOLERANCE_POINTS, 100 / examples))
    report = result.to_dict()
    assert report["within_tolerance"] is ok and report["max_rel_diff"] == 0.3
    assert np.isclose(report["gap_points"], 100 * gap_examples / examples, atol=1e-4)


def test_metrics_already_in_points_are_not_scaled():
    result = fidelity("f1", 80.0, 79.6, 1000, fraction=False)  # SQuAD F1
    assert result.gap_points == pytest.approx(0.4) and result.ok


def test_a_larger_gap_passes_when_the_disagreements_split_like_chance():
    # 360 images, 2 net flips (0.56 point): 4 examples only PyTorch gets right, 2 only the
    # export - rounding noise on near-ties (McNemar p = 0.69)
    torch_right = np.zeros(360, bool)
    export_right = np.zeros(360, bool)
    torch_right[:276] = export_right[:276] = True
    torch_right[276:280] = True
    export_right[280:282] = True
    result = fidelity("top1", torch_right.mean(), export_right.mean(), 360,
                      right=(torch_right, export_right))
    assert result.gap_points > result.tolerance_points
    assert (result.only_pytorch_right, result.only_export_right) == (4, 2)
    assert result.p_value == pytest.approx(0.6875) and result.ok
    assert result.to_dict()["mcnemar_p"] == pytest.approx(0.6875)


def test_a_one_sided_loss_fails_the_paired_test():
    torch_right = np.ones(360, bool)
    export_right = torch_right.copy()
    export_right[:12] = False  # 12 losses, no wins: p = 0.0005
    result = fidelity("top1", torch_right.mean(), export_right.mean(), 360,
                      right=(torch_right, export_right))
    assert result.p_value < 0.001 and not result.ok
