"""Benchmark: which image architectures gain speed from the INT8 export, and what ships.

For each architecture, a fixed random initialisation is fine-tuned briefly on generated shapes
(speed does not depend on the weights' values) through the real CLI at one optim level. The run
times its INT8 model against the dense FP32 export of the same starting network and ships the
trained weights in FP32 instead when INT8 is slower (export/fallback.py); its metrics.yaml says
which (``export.format``). Single runs on a shared 2-core machine vary by tens of percent, so
after all runs the INT8 file, the shipped file (when it is not the INT8 one) and the dense
baseline are timed again interleaved (in turn within each of ``--runs`` repetitions; median and
interquartile range of the repetitions' ratios), and those are the figures to read. Also
recorded: integer kernels in ONNX Runtime's optimised INT8 graph, and the operators that ran in
float on dequantized inputs (where a QDQ graph loses time).

    python bench/bench_architectures.py --out /tmp/bench_arch [--image-size 224]
        [--arch resnet18 --arch mobilenet_v3_small] [--runs 50]
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


def interleaved_speedups(models: dict[str, Path], baseline: Path, size: int, runs: int = 50
                         ) -> dict[str, dict[int, tuple[float, float, float]]]:
    """Baseline / model latency of each model per batch size: ``(p25, median, p75)`` of the
    ratios of the files timed in turn within each repetition."""
    from sparsify.export.inspect import measure_interleaved, paired_speedups, quartiles

    rng = np.random.default_rng(0)

    def inputs(batch: int) -> dict[str, np.ndarray]:
        return {"input": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}

    times = measure_interleaved({**models, "baseline": baseline}, inputs, (1, 32), runs=runs)
    return {name: {b: quartiles(paired_speedups(t[name], t["baseline"]))
                   for b, t in times.items()} for name in models}


def _cell(q: tuple[float, float, float]) -> str:
    return f"{q[1]:.2f}x ({q[0]:.2f}-{q[2]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--arch", action="append", metavar="ARCH_KEY",
                        help="only these architectures (repeatable; e.g. resnet18, "
                             "mobilenet_v3_small, timm:mobilenetv3_small_050); default: all")
    parser.add_argument("--runs", type=int, default=50,
                        help="interleaved repetitions of the final timing (default 50)")
    parser.add_argument("--reuse", action="store_true",
                        help="time the latest complete run of each architecture already in "
                             "--out instead of training again (when there is one)")
    parser.add_argument("--results", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    from sparsify.data.synthetic import make_synthetic_image_folder

    data = args.out / "data"
    if not data.exists():
        make_synthetic_image_folder(data, per_class=24, size=args.image_size, split=True,
                                    seed=0, val_per_class=8)
    rows = []
    for label, arch, level in ARCHITECTURES:
        if args.arch and arch not in args.arch:
            continue
        torch.manual_seed(0)
        name = arch.replace(":", "_")
        init = args.out / f"{name}.pth"
        if not checkpoint(arch, 3, init):
            continue
        work = args.out / name
        if not (args.reuse and _complete_runs(work)):
            train(data, init, level, work, args.image_size)
        rows.append(describe(_complete_runs(work)[-1], label, level))
    for row in rows:  # after every run, on a machine no run is using
        time_row(row, args.image_size, args.runs)
    table = render(rows, args.image_size, args.runs)
    print(table)
    if args.results:
        args.results.write_text(table, encoding="utf-8")


def _complete_runs(work: Path) -> list[Path]:
    return [r for r in sorted(work.glob("sparse_transfer_*")) if (r / "metrics.yaml").is_file()]


def train(data: Path, init: Path, level: str, work: Path, image_size: int) -> None:
    """One run of the real CLI (2 epochs), into a new folder under ``work``."""
    cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
           "--use-case", "image_classification", "--data", str(data), "--model", str(init),
           "--optim-level", level, "--recipe-args", json.dumps({"num_epochs": 2}),
           "--train-kwargs", json.dumps({"image_size": image_size, "batch_size": 16}),
           "--working-dir", str(work)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def describe(run: Path, label: str, level: str) -> dict:
    """What a run shipped, its INT8 file (kept beside the baseline after a fallback), and the
    run's own figures."""
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    export = metrics["export"]
    shipped = run / "deployment" / "model.onnx"
    fmt = export.get("format", "int8")
    int8 = shipped if fmt == "int8" else run / "training_artifacts" / "model_int8.onnx"
    return {"label": label, "level": level, "run": run, "int8": int8, "shipped": shipped,
            "format": fmt, "sparsity": metrics["sparsity"]["overall"],
            "latency": metrics["latency_onnxruntime_cpu"],
            "check": {c["format"]: c["speedup_vs_dense_fp32"]
                      for c in export.get("candidates") or []}}


def time_row(row: dict, image_size: int, runs: int) -> None:
    from sparsify.export.inspect import (
        float_ops_on_dequantized_inputs, integer_kernel_count, optimized_graph_op_counts,
    )

    models = {"int8": row["int8"]}
    if row["shipped"] != row["int8"]:
        models["shipped"] = row["shipped"]
    row["ratios"] = interleaved_speedups(
        models, row["run"] / "training_artifacts" / "dense_baseline.onnx", image_size, runs)
    row["ratios"].setdefault("shipped", row["ratios"]["int8"])
    row["kernels"] = integer_kernel_count(optimized_graph_op_counts(row["int8"]))
    row["float_ops"] = ", ".join(f"{op} x{n}" for op, n in
                                 float_ops_on_dequantized_inputs(row["int8"]).items())


def render(rows: list[dict], image_size: int, runs: int) -> str:
    lines = [f"Image size {image_size}, ONNX Runtime CPU, speedup = dense FP32 export latency / "
             f"model latency, timed interleaved after all runs: median (interquartile range) of "
             f"the ratios in {runs} repetitions, the files timed in turn. In brackets: the run's "
             "own figures (INT8: the export's speed check; shipped: metrics.yaml's latency of "
             "deployment/model.onnx).", "",
             "| architecture | level | sparsity | INT8 integer kernels | INT8 b1 | INT8 b32 "
             "| shipped | shipped b1 | shipped b32 | float ops on dequantized inputs (INT8) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        int8, ship = r["ratios"]["int8"], r["ratios"]["shipped"]
        check = r["check"].get("int8") or {}
        own = {b: f" [{check[f'batch_{b}']['speedup']:.2f}x]" if f"batch_{b}" in check else ""
               for b in (1, 32)}
        run_ship = {b: f" [{r['latency'][f'batch_{b}']['speedup']:.2f}x]" for b in (1, 32)}
        lines.append(f"| {r['label']} | {r['level']} | {r['sparsity']:.2f} | {r['kernels']} | "
                     f"{_cell(int8[1])}{own[1]} | {_cell(int8[32])}{own[32]} | {r['format']} | "
                     f"{_cell(ship[1])}{run_ship[1]} | {_cell(ship[32])}{run_ship[32]} | "
                     f"{r['float_ops'] or 'none'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
