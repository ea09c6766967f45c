"""Benchmark: dense fine-tune vs ``--optim-level 0.5`` on a real image dataset, offline.

Real data available offline: scikit-learn's handwritten digits (1797 8x8 grey images, 10
classes, shipped inside the PyPI package), written as an ImageFolder of 64x64 RGB PNGs with a
fixed split (the last 20% of each class for validation). The network is torchvision's
ResNet-18 from a fixed random initialisation: no pretrained CNN weights can be had offline on
this machine (torchvision's weight URLs are unreachable), so this measures the tool's pipeline
(pruning, QAT, INT8 export) on real data, not transfer from ImageNet.

Both runs go through the real CLI with the same epochs and learning rate; latency ratios come
from each run's metrics.yaml (ONNX Runtime, CPU, the exported model vs the dense FP32 export of
the same starting network, measured in the same process).

    python bench/bench_image_classification.py --out /tmp/bench_ic [--epochs 10]

Needs: pip install -e '.[vision]' scikit-learn
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from PIL import Image


def write_digits(root: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        cut = int(len(idx) * 0.8)
        for split, part in (("train", idx[:cut]), ("val", idx[cut:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = (digits.images[i] / 16.0 * 255).astype(np.uint8)
                Image.fromarray(img).resize((64, 64), Image.BILINEAR).convert("RGB").save(
                    folder / f"{i:04d}.png")


def run(level: str, data: Path, model: Path, out: Path, epochs: int) -> dict:
    work = out / f"level_{level}"
    cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
           "--use-case", "image_classification", "--data", str(data), "--model", str(model),
           "--optim-level", level, "--recipe-args",
           json.dumps({"num_epochs": epochs, "init_lr": 0.05}),
           "--train-kwargs", json.dumps({"image_size": 64, "batch_size": 64}),
           "--working-dir", str(work)]
    subprocess.run(cmd, check=True)
    run_dir = sorted(work.glob("sparse_transfer_*"))[-1]
    return yaml.safe_load((run_dir / "metrics.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    data = args.out / "digits"
    if not data.exists():
        write_digits(data)
    torch.manual_seed(0)
    model_path = args.out / "resnet18_init.pth"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict(),
                "arch_key": "resnet18"}, model_path)
    results = {level: run(level, data, model_path, args.out, args.epochs)
               for level in ("0.0", "0.5")}
    dense, sparse = results["0.0"], results["0.5"]
    lines = [
        "| | dense FP32 (level 0.0) | pruned + INT8 (level 0.5) |",
        "|---|---|---|",
        f"| val top-1 | {dense['task_metrics']['top1']:.4f} | {sparse['task_metrics']['top1']:.4f} |",
        f"| sparsity of prunable weights | {dense['sparsity']['overall']:.3f} | "
        f"{sparse['sparsity']['overall']:.3f} |",
        f"| ONNX gzip size (MB) | {dense['size']['onnx_gzip_bytes'] / 1e6:.2f} | "
        f"{sparse['size']['onnx_gzip_bytes'] / 1e6:.2f} |",
    ]
    for key in ("batch_1", "batch_32"):
        d, s = dense["latency_onnxruntime_cpu"][key], sparse["latency_onnxruntime_cpu"][key]
        lines.append(f"| ONNX Runtime latency {key.replace('_', ' ')} (ms) | {d['model_ms']:.2f} | "
                     f"{s['model_ms']:.2f} |")
        lines.append(f"| speedup vs dense FP32 export, {key.replace('_', ' ')} | "
                     f"{d['speedup']:.2f}x | {s['speedup']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
