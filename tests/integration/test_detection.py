"""The real CLI end to end on generated shapes with YOLOv8n / YOLOv8n-seg built from their
configs (no download), and the data errors a user can make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner

from sparsify.cli.main import cli
from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")
CLASSES = ["circle", "square", "triangle"]
TARGET = 0.78  # optim level 0.5


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("ultralytics")
    root = tmp_path_factory.mktemp("yolo")
    make_synthetic_yolo_dataset(root / "det", "detect", train_images=16, val_images=6, size=64,
                                backgrounds=2, seed=0)
    make_synthetic_yolo_dataset(root / "seg", "segment", train_images=16, val_images=6, size=64,
                                seed=1, layout="flat", names_file="data.yaml")
    return root


def run_cli(workspace, use_case, data, model, level="0.5"):
    work = workspace / f"runs_{use_case}_{level}"
    before = _tree(workspace / data)
    cmd = [CLI, "sparse-transfer", "--use-case", use_case, "--data", str(workspace / data),
           "--model", model, "--optim-level", level, "--recipe-args", '{"num_epochs": 3}',
           "--train-kwargs", '{"image_size": 64, "batch_size": 8, "val_fraction": 0.25}',
           "--working-dir", str(work)]
    # These runs check the INT8 graph itself, whatever this machine's speed check would decide
    # for a 64-pixel model (that fallback is tested in tests/unit/test_export_fallback.py).
    env = {**os.environ, "YOLO_CONFIG_DIR": str(workspace / "ultralytics_config"),
           "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "SPARSIFY_EXPORT_FORMAT": "int8"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    runs = sorted(work.glob(f"sparse_transfer_{use_case}_*"))
    assert len(runs) == 1
    # Nothing (no label cache, no dataset YAML) was written into the user's data folder.
    assert _tree(workspace / data) == before
    return runs[0], out


def check_run(run, outputs):
    from sparsify.export.inspect import (
        integer_kernel_count, onnx_weight_sparsity, optimized_graph_op_counts, run_onnx,
    )

    for name in ("plan.yaml", "recipe.yaml", "metrics.yaml", "run.log", "dataset.yaml",
                 "data_split.json", "training_artifacts/weights/last.pt",
                 "training_artifacts/weights/best.pt", "training_artifacts/results.csv",
                 "training_artifacts/model_final.pt", "training_artifacts/dense_baseline.onnx",
                 "deployment/model.onnx", "deployment/config.json", "deployment/README.md",
                 "deployment/sample_input.npz", "deployment/sample_output.npz"):
        assert (run / name).is_file(), name
    path = run / "deployment/model.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == outputs
    config = json.loads((run / "deployment/config.json").read_text())
    assert config["class_names"] == CLASSES and config["image_size"] == 64
    assert config["quantized"] is True

    # The saved sample reproduces; output0 has 4 box + 3 class rows (+ 32 mask coefficients).
    sample_in = np.load(run / "deployment/sample_input.npz")["images"]
    expected = np.load(run / "deployment/sample_output.npz")
    got = run_onnx(path, {"images": sample_in})
    for name, array in zip(outputs, got):
        np.testing.assert_allclose(array, expected[name], rtol=1e-5, atol=1e-5)
    assert got[0].shape[1] == 4 + len(CLASSES) + (32 if len(outputs) == 2 else 0)

    counts = optimized_graph_op_counts(path)
    assert counts.get("QLinearConv", 0) >= 60, counts  # every conv but the DFL's
    assert integer_kernel_count(counts) >= 150, counts  # + QLinearSigmoid/QLinearMul (SiLU)
    assert onnx_weight_sparsity(path)["overall"] >= TARGET - 0.01

    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["recipe"] == "detection_gmp"
    assert metrics["sparsity"]["target"] == TARGET
    assert metrics["sparsity"]["overall"] >= TARGET - 0.01
    agreement = metrics["export"]["agreement_with_pytorch"]
    assert agreement["max_rel_diff"] <= 0.15 and agreement["mean_rel_diff"] <= 0.01, agreement
    assert metrics["export"]["integer_kernels"] == integer_kernel_count(counts)
    for key in ("batch_1", "batch_32"):
        lat = metrics["latency_onnxruntime_cpu"][key]
        assert lat["model_ms"] > 0 and lat["dense_fp32_baseline_ms"] > 0
    assert metrics["epochs"] == 3
    return metrics


def test_detection_level_05(workspace):
    run, out = run_cli(workspace, "object_detection", "det", "yolov8n.yaml")
    metrics = check_run(run, ["output0"])
    for key in ("map50", "map50_95", "precision", "recall"):
        assert 0.0 <= metrics["task_metrics"][key] <= 1.0
    assert "mask_map50" not in metrics["task_metrics"]
    # The EMA that Ultralytics saves carries the masks too.
    import torch

    from sparsify.trainers.common import prunable_sparsity

    ckpt = torch.load(run / "training_artifacts/weights/last.pt", weights_only=False)
    assert prunable_sparsity(ckpt["ema"].float())["overall"] >= TARGET - 0.01
    split = json.loads((run / "data_split.json").read_text())
    assert len(split["train"]) == 18 and split["split"] == "given"  # backgrounds included
    assert "background images (no label): 2 train" in out.stderr

    # The README's Python example runs as written on a real image.
    readme = (run / "deployment/README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    image = next((workspace / "det/images/val").glob("*.png"))
    code = code.replace('"image.jpg"', repr(str(image)))
    result = subprocess.run([sys.executable, "-c", code], cwd=run / "deployment",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert line.split()[0] in CLASSES


def test_segmentation_level_05_seeded_split(workspace):
    run, _ = run_cli(workspace, "segmentation", "seg", "yolov8n-seg.yaml")
    metrics = check_run(run, ["output0", "output1"])
    for key in ("map50", "map50_95", "mask_map50", "mask_map50_95"):
        assert 0.0 <= metrics["task_metrics"][key] <= 1.0
    split = json.loads((run / "data_split.json").read_text())
    assert split["split"] == "seeded" and len(split["val"]) == 6 and len(split["train"]) == 16


# --- failures: exit code 1, a clean message, no run folder left -------------------------------


@pytest.fixture(autouse=True)
def _ultralytics_config(tmp_path_factory, monkeypatch):
    """Ultralytics writes its settings file where YOLO_CONFIG_DIR says (never into ~)."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "yolo_cfg"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")


def _invoke(tmp_path, data, use_case="object_detection"):
    return CliRunner().invoke(cli, ["sparse-transfer", "--use-case", use_case, "--data",
                                    str(data), "--model", "yolov8n.yaml",
                                    "--working-dir", str(tmp_path / "w")])


def _assert_failed(result, tmp_path, *expected):
    assert result.exit_code == 1, result.output
    # (Ultralytics may print a line about its settings file when first imported.)
    assert "\nError: " in "\n" + result.output
    for text in expected:
        assert text in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


@pytest.mark.parametrize("case,task,line,expected", [
    ("four numbers", "detect", "0 0.5 0.5 0.2", "expected 5 numbers"),
    ("text", "detect", "zero 0.5 0.5 0.2 0.2", "not a list of numbers"),
    ("class out of range", "detect", "7 0.5 0.5 0.2 0.2", "class id 7 is out of range"),
    ("coordinate above 1", "detect", "1 0.5 1.25 0.2 0.2", "normalised to [0, 1]"),
    ("odd polygon", "segment", "0 0.1 0.1 0.5 0.1 0.3", "odd number of polygon coordinates"),
    ("negative polygon point", "segment", "0 0.1 0.1 0.5 -0.1 0.3 0.5",
     "normalised to [0, 1]"),
])
def test_malformed_label_exit_1(tmp_path, case, task, line, expected):
    data = make_synthetic_yolo_dataset(tmp_path / "d", task, train_images=3, val_images=2,
                                       size=32)
    label = sorted((data / "labels/train").glob("*.txt"))[1]
    label.write_text(label.read_text() + line + "\n")
    n = len(label.read_text().splitlines())
    result = _invoke(tmp_path, data, "segmentation" if task == "segment" else "object_detection")
    _assert_failed(result, tmp_path, f"{label}:{n}:", expected)


def test_label_without_image_exit_1(tmp_path):
    data = make_synthetic_yolo_dataset(tmp_path / "d", train_images=3, val_images=2, size=32)
    orphan = data / "labels/train/lost.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    _assert_failed(_invoke(tmp_path, data), tmp_path, str(orphan), "label file without an image")


def test_no_val_images_exit_1(tmp_path):
    import shutil

    data = make_synthetic_yolo_dataset(tmp_path / "d", train_images=3, val_images=2, size=32)
    shutil.rmtree(data / "images/val")
    shutil.rmtree(data / "labels/val")
    _assert_failed(_invoke(tmp_path, data), tmp_path, "No validation images")


def test_missing_dataset_exit_1(tmp_path):
    _assert_failed(_invoke(tmp_path, tmp_path / "nothing"), tmp_path, "does not exist")


def test_without_ultralytics_names_the_extra(tmp_path, monkeypatch):
    # Hide the package: importing it raises ImportError, as when it is not installed.
    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    data = make_synthetic_yolo_dataset(tmp_path / "d", train_images=2, val_images=1, size=32)
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "yolo", "--data",
                                      str(data), "--model", "yolov8n.yaml",
                                      "--working-dir", str(tmp_path / "w")])
    _assert_failed(result, tmp_path, "'ultralytics'",
                   "pip install 'sparsify-transfer[detection]'")
