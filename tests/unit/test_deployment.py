"""The deployment export refuses an ONNX model that disagrees with PyTorch."""

import json

import pytest
import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.deployment import export_classifier


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


def test_agreeing_export_writes_the_folder(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(16, 3, 2, 2)
    result = export_classifier(Net(), Net(), images, tmp_path / "dep", tmp_path / "base.onnx",
                               False, CONFIG)
    assert result["agreement"]["top1_agreement"] == 1.0
    config = json.loads((tmp_path / "dep" / "config.json").read_text())
    assert config["class_names"] == list("abcd") and config["quantized"] is False
    assert (tmp_path / "dep" / "model.onnx").is_file()


def test_disagreeing_export_is_an_export_error(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(16, 3, 2, 2)
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_classifier(Net(drift=5.0), Net(), images, tmp_path / "dep", tmp_path / "b.onnx",
                          False, CONFIG)
