"""Data-parallel runs under ``torchrun`` (two CPU processes, gloo): one run folder, written by
the main process only, and the same weights on every rank at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from sparsify.data.synthetic import make_synthetic_image_folder

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def torchrun(args, work):
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           str(BIN / "sparsify.run"), "sparse-transfer", *args, "--working-dir", str(work)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    runs = list(work.iterdir())
    assert len(runs) == 1, runs  # not one folder per process
    run = runs[0]
    assert out.stdout.count("Done: ") == 1  # one summary, from the main process
    log = (run / "run.log").read_text()
    assert "Data-parallel check: parameters identical on all 2 ranks." in log
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["sparsity"]["overall"] >= 0.78 - 0.01
    assert (run / "deployment/model.onnx").is_file()
    return run, metrics


def test_image_classification_under_torchrun(tmp_path):
    make_synthetic_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=16,
                                size=64, split=True, seed=0, val_per_class=6)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, tmp_path / "m.pth")
    run, metrics = torchrun(
        ["--use-case", "ic", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "m.pth"),
         "--optim-level", "0.5", "--recipe-args", '{"num_epochs": 2}',
         "--train-kwargs", '{"image_size": 64, "batch_size": 8, "num_workers": 0}'],
        tmp_path / "runs")
    history = torch.load(run / "training_artifacts/model_last.pth", weights_only=True)
    assert history["epoch"] == 2
    # The final metrics cover the whole validation set (18 images), not one process's half.
    assert "Final model on the 18 validation images" in (run / "run.log").read_text()
    assert json.loads((run / "deployment/config.json").read_text())["num_classes"] == 3


def test_text_classification_under_torchrun(tmp_path):
    from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv

    make_tiny_bert(tmp_path / "bert", hidden=32, intermediate=64)
    write_csv(tmp_path / "reviews.csv", sentiment_rows(120))
    torchrun(["--use-case", "sentiment", "--data", str(tmp_path / "reviews.csv"),
              "--model", str(tmp_path / "bert"), "--optim-level", "0.5",
              "--recipe-args", '{"num_epochs": 2, "init_lr": 0.003}'], tmp_path / "runs")


def test_a_data_error_under_torchrun_stops_every_process_and_leaves_no_run_folder(tmp_path):
    from sparsify.data.synthetic_text import make_tiny_bert, write_csv

    make_tiny_bert(tmp_path / "bert", hidden=32, intermediate=64)
    write_csv(tmp_path / "bad.csv", [{"text": f"row {i}", "stars": i % 2} for i in range(40)])
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           str(BIN / "sparsify.run"), "sparse-transfer", "--use-case", "sentiment",
           "--data", str(tmp_path / "bad.csv"), "--model", str(tmp_path / "bert"),
           "--working-dir", str(tmp_path / "runs")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "bad.csv" in out.stderr and "label" in out.stderr  # the main process's real error
    assert "[rank 1] Error: The main process failed while preparing the run" in out.stderr
    assert "unexpected failure" not in out.stderr
    assert not any((tmp_path / "runs").iterdir())
