"""The real command, interrupted and resumed: ``sparsify.run sparse-transfer`` gets Ctrl-C once
its first resumable checkpoint exists, exits 130 naming the resume command, and
``sparsify.run sparse-transfer --resume RUN_DIR`` finishes it with the same metrics, masks and
weights as an uninterrupted run of the same command (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")


def _text_case(root: Path) -> tuple[list[str], str, str]:
    from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv

    make_tiny_bert(root / "bert")
    write_csv(root / "reviews.csv", sentiment_rows(160))
    args = ["--use-case", "sentiment", "--data", str(root / "reviews.csv"),
            "--model", str(root / "bert"),
            "--recipe-args", json.dumps({"num_epochs": 6, "init_lr": 0.003}),
            "--train-kwargs", json.dumps({"batch_size": 16, "checkpoint_steps": 1,
                                          "max_seq_length": 32})]
    return args, "last/model.safetensors", "accuracy"


def _image_case(root: Path) -> tuple[list[str], str, str]:
    import torchvision

    from sparsify.data.synthetic import make_synthetic_image_folder

    make_synthetic_image_folder(root / "data", classes=("a", "b"), per_class=8, size=32,
                                split=True, seed=0, val_per_class=4)
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                "arch_key": "resnet18"}, root / "init.pth")
    args = ["--use-case", "ic", "--data", str(root / "data"), "--model", str(root / "init.pth"),
            "--recipe-args", json.dumps({"num_epochs": 4}),
            "--train-kwargs", json.dumps({"batch_size": 4, "num_workers": 0, "image_size": 32,
                                          "checkpoint_steps": 1})]
    return args, "model_last.pth", "top1"


def _yolo_case(root: Path) -> tuple[list[str], str, str]:
    pytest.importorskip("ultralytics")
    from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset

    make_synthetic_yolo_dataset(root / "data", "detect", train_images=12, val_images=4,
                                size=64, seed=0)
    args = ["--use-case", "yolo", "--data", str(root / "data"), "--model", "yolov8n.yaml",
            "--recipe-args", json.dumps({"num_epochs": 4}),
            "--train-kwargs", json.dumps({"batch_size": 4, "image_size": 64})]
    return args, "model_final.pt", "map50_95"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    if path.name == "model_final.pt":  # the trained module itself (written by the run)
        return torch.load(path, map_location="cpu", weights_only=False)["model"].state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _env() -> dict[str, str]:
    # INT8 always: whether a tiny model's INT8 file times slower than its FP32 baseline (and an
    # FP32 file ships instead, export/fallback.py) depends on the machine's load, not on resume
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "SPARSIFY_EXPORT_FORMAT": "int8"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run([CLI, "sparse-transfer", *args], capture_output=True, text=True,
                         env=_env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.mark.parametrize("case", [_text_case, _image_case, _yolo_case],
                         ids=["text", "image", "yolo"])
def test_ctrl_c_then_resume_ends_as_the_uninterrupted_run(tmp_path, case, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics_config"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    args, weights, metric = case(tmp_path)
    _run([*args, "--device", "cpu", "--working-dir", str(tmp_path / "whole")])
    (whole,) = (tmp_path / "whole").glob("sparse_transfer_*")

    work = tmp_path / "stopped"
    proc = subprocess.Popen([CLI, "sparse-transfer", *args, "--device", "cpu",
                             "--working-dir", str(work)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not (
            list(work.glob("*/training_artifacts/**/resume.pth"))):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    (run,) = work.glob("sparse_transfer_*")
    command = f"sparsify.run sparse-transfer --resume {run}"
    assert f"Resume with: {command}" in err and "Traceback" not in err
    assert (run / "INCOMPLETE").read_text().strip() == command

    resumed = _run(["--resume", str(run)])
    assert "Resuming" in resumed.stdout + resumed.stderr
    assert not (run / "INCOMPLETE").exists()
    got = yaml.safe_load((run / "metrics.yaml").read_text())
    want = yaml.safe_load((whole / "metrics.yaml").read_text())
    assert got["status"] == want["status"] == "complete"
    assert got["task_metrics"][metric] == want["task_metrics"][metric]
    assert got["task_metrics"] == want["task_metrics"]
    assert got["sparsity"] == want["sparsity"]
    mine, theirs = (_weights(r / "training_artifacts" / weights) for r in (run, whole))
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
