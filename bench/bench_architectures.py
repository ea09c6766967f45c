"""Benchmark: which image architectures gain speed from the INT8 export, offline.

For each architecture, a fixed random initialisation is fine-tuned briefly on generated shapes
(speed does not depend on the weights' values) through the real CLI at one optim level, and
the ratio of the exported model's ONNX Runtime CPU latency to the dense FP32 export of the same
starting network is read from the run's metrics.yaml (both measured in the same process by the
run). Single runs on a shared 2-core machine vary by tens of percent, so every pair of ONNX
files is then timed again interleaved (the two in turn within each of 50 repetitions; the
median of the repetitions' ratios) and that ratio is the one to read. Also recorded: integer
kernels in ONNX Runtime's optimised graph, and the operators that ran in float on dequantized
inputs (where a QDQ graph loses time).

    python bench/bench_architectures.py --out /tmp/bench_arch [--image-size 224]
        [--results bench/results/architectures.md]

Needs: pip install -e '.[vision,timm]'  (timm rows are skipped without timm)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

#: (label, arch_key, optim level)
ARCHITECTURES = [
    ("ResNet-18 (torchvision)", "resnet18", "0.5"),
    ("MobileNetV2 (torchvision, the smallest tier's model)", "mobilenet_v2", "0.8"),
    ("MobileNetV3-small (torchvision)", "mobilenet_v3_small", "0.5"),
    ("EfficientNet-Lite0", "efficientnet_lite0", "0.5"),
    ("ResNet-10t (timm)", "timm:resnet10t", "0.5"),
    ("RegNetX-200MF (timm, BatchNormAct2d)", "timm:regnetx_002", "0.5"),
    ("MobileNetV3-small-050 (timm)", "timm:mobilenetv3_small_050", "0.5"),
]


def checkpoint(arch: str, classes: int, path: Path) -> bool:
    from sparsify.trainers.vision_models import build_arch

    try:
        model = build_arch(arch, classes)
    except Exception as exc:  # noqa: BLE001 - e.g. timm not installed: skip the row
        print(f"skipping {arch}: {exc}", file=sys.stderr)
        return False
    torch.save({"state_dict": model.state_dict(), "arch_key": arch}, path)
    return True


def interleaved_speedups(model: Path, baseline: Path, size: int, runs: int = 50
                         ) -> dict[int, float]:
    """Baseline / model latency per batch size: the median of the ratios of the two files
    timed in turn within each repetition."""
    import statistics

    from sparsify.export.inspect import measure_interleaved, paired_speedups

    rng = np.random.default_rng(0)

    def inputs(batch: int) -> dict[str, np.ndarray]:
        return {"input": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}

    times = measure_interleaved({"model": model, "baseline": baseline}, inputs, (1, 32),
                                runs=runs)
    return {b: statistics.median(paired_speedups(t["model"], t["baseline"]))
            for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--results", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    from sparsify.data.synthetic import make_synthetic_image_folder
    from sparsify.export.inspect import float_ops_on_dequantized_inputs

    data = args.out / "data"
    if not data.exists():
        make_synthetic_image_folder(data, per_class=24, size=args.image_size, split=True,
                                    seed=0, val_per_class=8)
    rows = []
    for label, arch, level in ARCHITECTURES:
        torch.manual_seed(0)
        name = arch.replace(":", "_")
        init = args.out / f"{name}.pth"
        if not checkpoint(arch, 3, init):
            continue
        work = args.out / name
        cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
               "--use-case", "image_classification", "--data", str(data), "--model", str(init),
               "--optim-level", level, "--recipe-args", json.dumps({"num_epochs": 2}),
               "--train-kwargs", json.dumps({"image_size": args.image_size, "batch_size": 16}),
               "--working-dir", str(work)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        run = sorted(work.glob("sparse_transfer_*"))[-1]
        metrics = yaml.safe_load((run / "metrics.yaml").read_text())
        latency = metrics["latency_onnxruntime_cpu"]
        float_ops = float_ops_on_dequantized_inputs(run / "deployment" / "model.onnx")
        rows.append([label, level, metrics["sparsity"]["overall"],
                     metrics["export"]["integer_kernels"],
                     latency["batch_1"]["speedup"], latency["batch_32"]["speedup"],
                     ", ".join(f"{op} x{n}" for op, n in float_ops.items()) or "none", run])
    for row in rows:  # after every run, on a machine no run is using
        run = row.pop()
        ratios = interleaved_speedups(run / "deployment" / "model.onnx",
                                      run / "training_artifacts" / "dense_baseline.onnx",
                                      args.image_size)
        row[4:6] = [ratios[1], ratios[32], row[4], row[5]]
    lines = [f"Image size {args.image_size}, ONNX Runtime CPU, speedup = dense FP32 export "
             "latency / exported model latency: interleaved (median of the ratios in 50 "
             "repetitions, the two timed in turn) and, "
             "in brackets, the run's own metrics.yaml figure.", "",
             "| architecture | level | sparsity | integer kernels | speedup b1 | speedup b32 "
             "| float ops on dequantized inputs |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {a} | {lv} | {sp:.2f} | {k} | {b1:.2f}x ({r1:.2f}x) | {b32:.2f}x ({r32:.2f}x) "
              f"| {ops} |" for a, lv, sp, k, b1, b32, r1, r32, ops in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.results:
        args.results.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
