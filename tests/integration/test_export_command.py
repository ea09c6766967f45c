"""A check that fails after training keeps the run; ``sparsify.run export RUN_DIR`` rebuilds
the deployment from the checkpoint without training, with the same ONNX outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from sparsify.data.synthetic import make_synthetic_image_folder
from sparsify.export.inspect import run_onnx

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A level-0.5 run whose export fails the fidelity rule (a gap of 50 points is forced)."""
    import sparsify.export.deployment as deployment
    from sparsify.errors import SparsifyError
    from sparsify.pipeline import sparse_transfer
    from sparsify.plan import build_plan
    from sparsify.usecases import resolve_use_case

    root = tmp_path_factory.mktemp("export")
    make_synthetic_image_folder(root / "data", classes=("a", "b", "c"), per_class=8, size=48,
                                split=True, seed=0, val_per_class=4)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, root / "init.pth")
    plan = build_plan(resolve_use_case("image_classification"), 0.5, model=str(root / "init.pth"),
                      recipe_args={"num_epochs": 2}, device="cpu", teacher="disable",
                      train_kwargs={"image_size": 48, "batch_size": 8, "num_workers": 0})
    real = deployment.fidelity

    def five_points_off(metric, pytorch, onnxruntime, examples, agreement=None, fraction=True,
                        right=None):
        return real(metric, pytorch, onnxruntime - 0.5, examples, agreement, fraction)

    patch = pytest.MonkeyPatch()
    patch.setattr(deployment, "fidelity", five_points_off)
    try:
        with pytest.raises(SparsifyError) as caught:
            sparse_transfer(plan, str(root / "data"), root / "work")
    finally:
        patch.undo()
    runs = sorted((root / "work").glob("sparse_transfer_image_classification_*"))
    assert len(runs) == 1
    return runs[0], caught.value


def test_a_failed_check_keeps_the_trained_run(failed_run):
    run, error = failed_run
    assert "disagrees with PyTorch" in error.message and error.exit_code == 1
    assert f"sparsify.run export {run}" in error.hint  # the next step, with the folder
    for name in ("plan.yaml", "recipe.yaml", "run.log", "training_artifacts/model_last.pth",
                 "training_artifacts/model_best.pth", "training_artifacts/train_result.json",
                 "deployment_rejected/model.onnx", "metrics.yaml"):
        assert (run / name).is_file(), name
    assert not (run / "deployment").exists()  # nothing that looks deployable
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["status"] == "failed" and metrics["failure"]["stage"] == "export"
    fid = metrics["export"]["agreement_with_pytorch"]
    assert fid["metric"] == "top1" and fid["within_tolerance"] is False
    assert fid["gap_points"] == pytest.approx(50.0, abs=1e-3)
    assert 0 <= metrics["task_metrics"]["top1"] <= 1 and metrics["sparsity"]["overall"] > 0.7


def test_export_command_rebuilds_the_deployment_from_the_checkpoint(failed_run):
    run, _ = failed_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([CLI, "export", str(run)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Deployment:" in out.stdout
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["status"] == "complete"
    fid = metrics["export"]["agreement_with_pytorch"]
    assert fid["within_tolerance"] is True and fid["gap_points"] <= fid["tolerance_points"]
    assert metrics["export"]["quantized"] and metrics["export"]["integer_kernels"] >= 20
    # the same model as the export made at the end of training
    sample = dict(np.load(run / "deployment" / "sample_input.npz"))
    again = run_onnx(run / "deployment" / "model.onnx", sample)[0]
    first = run_onnx(run / "deployment_rejected" / "model.onnx", sample)[0]
    np.testing.assert_array_equal(again, first)
    # a second export keeps the first deployment
    out = subprocess.run([CLI, "export", str(run)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "deployment.previous_1" / "model.onnx").is_file()


def test_export_command_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = subprocess.run([CLI, "export", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "is not a sparse-transfer run folder" in out.stderr and "Traceback" not in out.stderr
