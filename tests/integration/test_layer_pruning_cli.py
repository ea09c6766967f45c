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


def test_level_075_trains_and_exports_half_the_layers(tmp_path):
    make_tiny_bert(tmp_path / "bert", hidden=64, intermediate=128, layers=4)
    write_csv(tmp_path / "reviews.csv", sentiment_rows(160))
    work = tmp_path / "runs"
    out = subprocess.run(
        [CLI, "sparse-transfer", "--use-case", "sentiment_analysis", "--data",
         str(tmp_path / "reviews.csv"), "--model", str(tmp_path / "bert"), "--optim-level",
         "0.75", "--teacher", "disable", "--recipe-args",
         json.dumps({"num_epochs": 3, "init_lr": 0.003}), "--working-dir", str(work)],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    run = next(work.glob("sparse_transfer_*"))
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
