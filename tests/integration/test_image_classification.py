"""The real CLI end to end on generated images and a ResNet-18 built from its config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
import yaml

from sparsify.data.synthetic import make_synthetic_image_folder
from sparsify.export.inspect import (
    count_qdq, integer_kernel_count, onnx_weight_sparsity, optimized_graph_op_counts, run_onnx,
)

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")
CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ic")
    make_synthetic_image_folder(root / "data", classes=CLASSES, per_class=16, size=64, split=True,
                                seed=0, val_per_class=6)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, root / "init.pth")
    return root


def run_cli(workspace, level, *extra, model="init.pth"):
    work = workspace / f"runs_{level}_{Path(model).stem}"
    cmd = [CLI, "sparse-transfer", "--use-case", "image_classification",
           "--data", str(workspace / "data"), "--model", str(workspace / model),
           "--optim-level", level, "--recipe-args", '{"num_epochs": 2}',
           "--train-kwargs", '{"image_size": 64, "batch_size": 16, "num_workers": 0}',
           "--working-dir", str(work), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    runs = sorted(work.glob("sparse_transfer_image_classification_*"))
    assert len(runs) == 1
    return runs[0], out


def check_run_folder(run, arch_key="resnet18"):
    for name in ("plan.yaml", "recipe.yaml", "metrics.yaml", "data_split.json", "run.log",
                 "training_artifacts/model_best.pth", "training_artifacts/model_last.pth",
                 "training_artifacts/dense_baseline.onnx", "deployment/model.onnx",
                 "deployment/config.json", "deployment/README.md",
                 "deployment/sample_input.npz", "deployment/sample_output.npz"):
        assert (run / name).is_file(), name
    assert list((run / "logs").glob("events.out.tfevents.*")), "no TensorBoard events"
    onnx.checker.check_model(onnx.load(str(run / "deployment/model.onnx")))
    config = json.loads((run / "deployment/config.json").read_text())
    assert config["class_names"] == list(CLASSES)  # lexicographic, as ImageFolder
    sample_in = np.load(run / "deployment/sample_input.npz")["input"]
    sample_out = np.load(run / "deployment/sample_output.npz")["logits"]
    got = run_onnx(run / "deployment/model.onnx", {"input": sample_in})[0]
    np.testing.assert_allclose(got, sample_out, rtol=1e-5, atol=1e-5)
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["export"]["agreement_with_pytorch"]["top1_agreement"] >= 0.99
    for key in ("batch_1", "batch_32"):
        lat = metrics["latency_onnxruntime_cpu"][key]
        assert lat["model_ms"] > 0 and lat["dense_fp32_baseline_ms"] > 0 and lat["speedup"] > 0
    assert 0 <= metrics["task_metrics"]["top1"] <= 1
    assert metrics["size"]["onnx_gzip_bytes"] > 0
    ckpt = torch.load(run / "training_artifacts/model_last.pth", weights_only=True)
    assert ckpt["arch_key"] == arch_key and "EpochRangeModifier" in ckpt["recipe"]
    return metrics


def test_level_0_dense_fp32(workspace):
    run, _ = run_cli(workspace, "0.0")
    metrics = check_run_folder(run)
    path = run / "deployment/model.onnx"
    assert count_qdq(path) == (0, 0)
    assert integer_kernel_count(optimized_graph_op_counts(path)) == 0
    assert metrics["recipe"] == "image_classification_finetune"
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["tier"] == "largest" and plan["scheme"] == "dense FP32"


def test_level_02_int8_no_pruning(workspace):
    run, _ = run_cli(workspace, "0.2")
    metrics = check_run_folder(run)
    path = run / "deployment/model.onnx"
    counts = optimized_graph_op_counts(path)
    assert counts.get("QLinearConv", 0) >= 20, counts  # every conv of ResNet-18 is integer
    assert metrics["recipe"] == "image_classification_quant"
    assert metrics["sparsity"]["overall"] < 0.05


def test_level_05_pruned_int8_and_readme_example(workspace, tmp_path):
    run, out = run_cli(workspace, "0.5")
    metrics = check_run_folder(run)
    path = run / "deployment/model.onnx"
    target = yaml.safe_load((run / "plan.yaml").read_text())["target_sparsity"]
    assert target == 0.78
    assert onnx_weight_sparsity(path)["overall"] >= target - 0.01
    assert onnx_weight_sparsity(path)["overall"] <= target + 0.05  # quantized weights not dead
    assert metrics["sparsity"]["overall"] >= target - 0.01
    assert metrics["sparsity"]["policy"] == ["__COMPUTE_LAYERS__"]
    assert integer_kernel_count(optimized_graph_op_counts(path)) >= 20
    assert metrics["recipe"] == "image_classification_obs"
    from sparsify.recipe.parser import parse_recipe

    recipe = parse_recipe((run / "recipe.yaml").read_text())
    assert recipe.variables["target_sparsity"] == 0.78 and recipe.variables["num_epochs"] == 2
    assert recipe.of_type("OBSPruningModifier")[0].args["final_sparsity"] == 0.78
    assert "speedup" in out.stdout  # the summary table
    # The README's Python example runs as written on a real image.
    readme = (run / "deployment/README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    image = next((workspace / "data/val/square").glob("*.png"))
    code = code.replace('"image.jpg"', repr(str(image)))
    result = subprocess.run([sys.executable, "-c", code], cwd=run / "deployment",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in CLASSES


def test_timm_model_at_level_05(workspace):
    timm = pytest.importorskip("timm")  # the [timm] extra; CI installs it through [all]
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(CLASSES))
    torch.save({"state_dict": model.state_dict(), "arch_key": "timm:resnet10t"},
               workspace / "timm_init.pth")
    run, _ = run_cli(workspace, "0.5", model="timm_init.pth")
    check_run_folder(run, arch_key="timm:resnet10t")
    path = run / "deployment/model.onnx"
    assert onnx_weight_sparsity(path)["overall"] >= 0.78 - 0.01
    assert integer_kernel_count(optimized_graph_op_counts(path)) >= 10


def test_level_08_shrinks_channels_and_export_restores_them(workspace):
    """A user's model at the smallest tier loses channels (keep_channels 0.7 at 0.8) after the
    dense teacher, before pruning and QAT; ``sparsify.run export`` rebuilds the same structure
    on the fresh starting model from the checkpoint's record (the teacher's weights chose it)."""
    pytest.importorskip("torch_pruning")  # the [prune] extra; CI installs it through [all]
    from onnx import numpy_helper

    run, _ = run_cli(workspace, "0.8")
    metrics = check_run_folder(run)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["recipe"]["args"]["keep_channels"] == 0.7
    assert plan["shrink"].startswith("channels: keep 7/10 of the output channels")
    ckpt = torch.load(run / "training_artifacts/model_last.pth", weights_only=True)
    record = next(r["_removed"] for r in ckpt["structure"] if r)
    assert record["parameters"][1] < 0.6 * record["parameters"][0]
    assert ckpt["state_dict"]["layer4.1.conv2.weight"].shape[:2] == (360, 360)  # 512 x 0.7
    path = run / "deployment/model.onnx"
    convs = [numpy_helper.to_array(i).shape for i in onnx.load(str(path)).graph.initializer]
    convs = [s for s in convs if len(s) == 4]
    assert convs and not any(512 in s[:2] for s in convs)
    assert metrics["sparsity"]["overall"] >= plan["target_sparsity"] - 0.01
    sample = dict(np.load(run / "deployment/sample_input.npz"))
    before, shipped = run_onnx(path, sample)[0], metrics["export"]["format"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([CLI, "export", str(run)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = run_onnx(path, sample)[0]
    if yaml.safe_load((run / "metrics.yaml").read_text())["export"]["format"] == shipped:
        np.testing.assert_array_equal(after, before)  # (the speed check may ship another form)
    assert (after.argmax(-1) == before.argmax(-1)).all()


def test_new_run_folder_each_time_never_overwrites(workspace):
    folder = workspace / "runs_0.0_init"
    first, _ = run_cli(workspace, "0.0") if not list(folder.glob("*")) else (
        sorted(folder.glob("sparse_transfer_*"))[0], None)
    before = (first / "metrics.yaml").read_text()
    from sparsify.rundir import create_run_dir

    again = create_run_dir(folder, "image_classification")
    assert again != first and (first / "metrics.yaml").read_text() == before
