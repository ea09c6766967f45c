"""SIGTERM (what schedulers send) and Ctrl-C during training: one line, exit 143 / 130, the
run folder kept and marked in metrics.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from sparsify.data.synthetic import make_synthetic_image_folder

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")


@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "Terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "Interrupted")])
def test_a_signal_during_training_stops_cleanly_and_keeps_the_folder(tmp_path, sig, code, line):
    make_synthetic_image_folder(tmp_path / "data", classes=("a", "b"), per_class=24, size=48,
                                split=True, seed=0, val_per_class=4)
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                "arch_key": "resnet18"}, tmp_path / "init.pth")
    cmd = [CLI, "sparse-transfer", "--use-case", "ic", "--data", str(tmp_path / "data"),
           "--model", str(tmp_path / "init.pth"), "--optim-level", "0", "--device", "cpu",
           "--recipe-args", '{"num_epochs": 50}', "--working-dir", str(tmp_path / "w"),
           "--train-kwargs", '{"image_size": 48, "batch_size": 4, "num_workers": 0}']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmp_path.glob("w/*/logs/events.*")):
        time.sleep(0.5)  # the TensorBoard file appears when the training loop starts
    time.sleep(2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert line in err and "Traceback" not in err
    runs = list(tmp_path.glob("w/sparse_transfer_*"))
    assert len(runs) == 1
    metrics = yaml.safe_load((runs[0] / "metrics.yaml").read_text())
    assert metrics["status"] == "interrupted" and metrics["failure"]["stage"] == "train"
    # stopped at a step: a resumable checkpoint, and the folder says how to go on
    command = f"sparsify.run sparse-transfer --resume {runs[0]}"
    assert f"Resume with: {command}" in err
    assert (runs[0] / "INCOMPLETE").read_text().strip() == command
    assert (runs[0] / "training_artifacts" / "resume.pth").is_file()
