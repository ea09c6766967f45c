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


def _workers(parent: int) -> list[int]:
    """The worker processes torchrun started (its children)."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


@pytest.mark.parametrize("use_case", ["sentiment", "ic"])
def test_a_terminated_torchrun_run_resumes_under_torchrun(tmp_path, use_case):
    """SIGTERM to both workers (what a scheduler sends): every rank stops at the same step, the
    main process writes the checkpoint and INCOMPLETE; `torchrun ... --resume RUN_DIR` with two
    processes finishes the run, the replicas identical."""
    import signal
    import time

    if use_case == "sentiment":
        from sparsify.data.synthetic_text import make_tiny_bert, sentiment_rows, write_csv

        make_tiny_bert(tmp_path / "bert", hidden=32, intermediate=64)
        write_csv(tmp_path / "reviews.csv", sentiment_rows(160))
        args = ["--use-case", "sentiment", "--data", str(tmp_path / "reviews.csv"),
                "--model", str(tmp_path / "bert"), "--optim-level", "0.5",
                "--recipe-args", '{"num_epochs": 4, "init_lr": 0.003}',
                "--train-kwargs", '{"batch_size": 8, "checkpoint_steps": 1}']
    else:
        make_synthetic_image_folder(tmp_path / "data", classes=("a", "b"), per_class=16,
                                    size=32, split=True, seed=0, val_per_class=4)
        torch.manual_seed(0)
        torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                    "arch_key": "resnet18"}, tmp_path / "m.pth")
        args = ["--use-case", "ic", "--data", str(tmp_path / "data"),
                "--model", str(tmp_path / "m.pth"), "--optim-level", "0.5",
                "--recipe-args", '{"num_epochs": 4}',
                "--train-kwargs", '{"image_size": 32, "batch_size": 4, "num_workers": 0, '
                                  '"checkpoint_steps": 1}']
    work = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
                             str(BIN / "sparsify.run"), "sparse-transfer", *args,
                             "--working-dir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and not list(
            work.glob("*/training_artifacts/**/resume.pth")):
        time.sleep(0.2)
    workers = _workers(proc.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    (run,) = work.iterdir()
    command = f"sparsify.run sparse-transfer --resume {run}"
    assert f"Terminated (SIGTERM): training stopped at a checkpoint. Resume with: {command}" \
        in err, err[-4000:]
    assert "training stopped with the main process" in err  # the other rank
    # no traceback from our processes (torchrun's agent prints its own about the exit codes)
    assert '/sparsify/' not in "".join(line for line in err.splitlines(True)
                                       if line.lstrip().startswith('File "'))
    assert (run / "INCOMPLETE").is_file()
    assert yaml.safe_load((run / "metrics.yaml").read_text())["status"] == "interrupted"

    resumed = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
                              str(BIN / "sparsify.run"), "sparse-transfer", "--resume",
                              str(run)], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert resumed.stdout.count("Done: ") == 1
    assert list(work.iterdir()) == [run]
    log = (run / "run.log").read_text()
    assert "Data-parallel check: parameters identical on all 2 ranks." in log
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["status"] == "complete" and not (run / "INCOMPLETE").exists()
    assert metrics["sparsity"]["overall"] >= 0.78 - 0.01
