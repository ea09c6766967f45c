"""The smallest tier with an NLP --model, end to end: the plan halves the encoder's depth, the
Hugging Face trainer trains the shrunk model, and `sparsify.run export` restores its checkpoint
into a fresh full-depth model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv
from sparsify.export.inspect import onnx_weight_sparsity

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")
# the deployment's initializer names are read below: those of the INT8 graph, whatever this
# machine's speed check would decide for a tiny BERT (tests/unit/test_export_fallback.py)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "SPARSIFY_EXPORT_FORMAT": "int8"}


def train_tiny_bert(tmp_path: Path, level: str, layers: int, **recipe_args) -> Path:
    """The real CLI on a tiny BERT and 160 templated reviews, no teacher; the run folder."""
    make_tiny_bert(tmp_path / "bert", hidden=64, intermediate=128, layers=layers)
    write_csv(tmp_path / "reviews.csv", sentiment_rows(160))
    work = tmp_path / "runs"
    out = subprocess.run(
        [CLI, "sparse-transfer", "--use-case", "sentiment_analysis", "--data",
         str(tmp_path / "reviews.csv"), "--model", str(tmp_path / "bert"), "--optim-level",
         level, "--teacher", "disable", "--recipe-args",
         json.dumps({"num_epochs": 3, "init_lr": 0.003, **recipe_args}), "--working-dir",
         str(work)],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return next(work.glob("sparse_transfer_*"))


def test_level_075_trains_and_exports_half_the_layers(tmp_path):
    run = train_tiny_bert(tmp_path, "0.75", layers=4)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["recipe"]["args"]["keep_layers"] == 0.5 and plan["shrink"].startswith("layers")
    assert "keeps layers 0, 2 of 4" in (run / "run.log").read_text()
    config = json.loads((run / "training_artifacts/last/config.json").read_text())
    assert config["num_hidden_layers"] == 2

    def onnx_layers():
        per = onnx_weight_sparsity(run / "deployment/model.onnx")["per_initializer"]
        return {k.split(".layer.")[1].split(".")[0] for k in per if ".layer." in k}

    assert onnx_layers() == {"0", "1"}
    again = subprocess.run([CLI, "export", str(run)], capture_output=True, text=True, env=ENV,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert onnx_layers() == {"0", "1"}


def test_keep_ffn_trains_and_exports_the_narrow_feed_forward_in_int8(tmp_path):
    import onnx
    from onnx import numpy_helper

    run = train_tiny_bert(tmp_path, "0.5", layers=2, keep_ffn=0.25)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["shrink"].startswith("FFN width: keep 1/4")
    assert "keep 32 of 128 feed-forward channels" in (run / "run.log").read_text()
    config = json.loads((run / "training_artifacts/last/config.json").read_text())
    assert config["intermediate_size"] == 32 and config["num_hidden_layers"] == 2
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["export"]["format"] == "int8" and metrics["export"]["integer_kernels"] > 0
    assert metrics["sparsity"]["pruned_layers"] == pytest.approx(0.78, abs=0.01)

    def ffn_shapes():
        graph = onnx.load(str(run / "deployment/model.onnx")).graph
        return {numpy_helper.to_array(i).shape for i in graph.initializer
                if "intermediate.dense.weight" in i.name or "output.dense.weight" in i.name
                and "attention" not in i.name}

    assert ffn_shapes() and all(32 in shape and 128 not in shape for shape in ffn_shapes())
    again = subprocess.run([CLI, "export", str(run)], capture_output=True, text=True, env=ENV,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert ffn_shapes() and all(32 in shape for shape in ffn_shapes())
