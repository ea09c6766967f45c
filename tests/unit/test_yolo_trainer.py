"""Pieces of the YOLO trainer adapter: masks through the optimizer step and on the EMA, the DFL
kept out of pruning, quantized SiLU that ONNX Runtime runs on integers."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn

# Ultralytics writes its settings file on import: keep it out of the user's home.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="sparsify-yolo-cfg-"))
os.environ.setdefault("YOLO_OFFLINE", "1")
pytest.importorskip("ultralytics")

from sparsify.modifiers.lifecycle import ModifierLifecycle  # noqa: E402
from sparsify.quantization import QATSiLU  # noqa: E402
from sparsify.recipe.parser import parse_recipe  # noqa: E402
from sparsify.trainers.detection import (  # noqa: E402
    _trainer_class, freeze_dfl_, mask_like_, quantize_conv_activations_,
)

RECIPE = """
training_modifiers:
  - !EpochRangeModifier
      start_epoch: 0.0
      end_epoch: 1.0
pruning_modifiers:
  - !ConstantPruningModifier
      start_epoch: 0.0
      params: __ALL_PRUNABLE__
"""


def test_optimizer_step_keeps_zeros_in_model_and_ema():
    from ultralytics.utils.torch_utils import ModelEMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))
    ema = ModelEMA(model)  # made from the dense weights, as Ultralytics does before pruning
    with torch.no_grad():
        for p in (model[0].weight, model[1].weight):
            p[p.abs() < p.abs().median()] = 0.0
    zeros = [(p == 0).clone() for p in (model[0].weight, model[1].weight)]
    lifecycle = ModifierLifecycle(parse_recipe(RECIPE), model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    lifecycle.initialize(optimizer, 4)

    trainer = object.__new__(_trainer_class("detect"))  # the real optimizer_step, no setup
    trainer.model, trainer.optimizer, trainer.ema = model, optimizer, ema
    trainer.device = torch.device("cpu")
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer.lifecycle = lifecycle
    for _ in range(3):
        lifecycle.batch_start()
        trainer.masked_names = lifecycle.masked_parameter_names()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        trainer.optimizer_step()
    assert lifecycle.step == 3 and ema.updates == 3
    for mask, p, e in zip(zeros, (model[0].weight, model[1].weight),
                          (ema.ema[0].weight, ema.ema[1].weight)):
        assert torch.all(p[mask] == 0) and torch.all(e[mask] == 0)
        assert torch.all(p[~mask] != 0)  # the rest trained


def test_mask_like_only_touches_named_parameters():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    with torch.no_grad():
        b.weight[0] = 0
        b.bias.zero_()
    mask_like_(a, b, ["weight"])
    assert torch.all(a.weight[0] == 0) and torch.all(a.weight[1:] != 0)
    assert torch.all(a.bias != 0)


def test_dfl_is_a_buffer_not_a_prunable_weight():
    from ultralytics.nn.tasks import DetectionModel

    from sparsify.modifiers.selectors import prunable_parameter_names

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    keys = set(model.state_dict())
    names = freeze_dfl_(model)
    assert names == ["model.22.dfl"]
    assert set(model.state_dict()) == keys  # same checkpoint layout
    assert "model.22.dfl.conv.weight" not in prunable_parameter_names(model)
    assert "model.22.dfl.conv.weight" not in dict(model.named_parameters())
    assert torch.equal(model.model[22].dfl.conv.weight.flatten(), torch.arange(16.0))
    model.eval()(torch.zeros(1, 3, 32, 32))  # still runs


def test_quantized_silu_exports_integer_kernels(tmp_path):
    from ultralytics.nn.modules import Conv

    from sparsify.export.onnx_export import export_onnx
    from sparsify.export.inspect import optimized_graph_op_counts
    from sparsify.quantization import prepare_qat_

    torch.manual_seed(0)
    model = nn.Sequential(Conv(3, 8, 3), Conv(8, 8, 3), Conv(8, 4, 1))
    assert model[0].act is model[1].act  # Ultralytics shares one SiLU
    prepare_qat_(model)
    assert quantize_conv_activations_(model) == 3
    acts = [m.act for m in model]
    assert all(isinstance(a, QATSiLU) for a in acts) and len({id(a) for a in acts}) == 3
    model.train()
    for _ in range(3):
        model(torch.rand(4, 3, 16, 16))
    path = export_onnx(model, (torch.rand(1, 3, 16, 16),), tmp_path / "m.onnx",
                       input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    counts = optimized_graph_op_counts(path)
    assert counts.get("QLinearConv") == 3, counts
    assert counts.get("QLinearSigmoid") == 3 and counts.get("QLinearMul") == 3, counts
    assert "Conv" not in counts and "Sigmoid" not in counts, counts


def test_silu_on_a_float_input_stays_float():
    act = QATSiLU()
    x = torch.randn(10)
    assert torch.equal(act(x), torch.nn.functional.silu(x))
    assert not bool(act.output_quant.initialized)
