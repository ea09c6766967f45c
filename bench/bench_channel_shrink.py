"""Benchmark: what removing conv channels (ChannelPruningModifier) gains in ONNX Runtime latency.

For each architecture, a fixed random initialisation (speed does not depend on the weights'
values) is exported dense in FP32 (the baseline) and in INT8, then shrunk by
``ChannelPruningModifier``'s code at each ``keep_fraction`` and exported in FP32 and INT8
(QAT structure, a few calibration batches, BatchNorm folded: the same path a run's export
takes). All files of an architecture are timed interleaved (in turn within each repetition,
``export/inspect.py::measure_interleaved``); the table gives the median latency and the
median (interquartile range) of the per-repetition ratios dense FP32 / model.

    nice -n 10 python bench/bench_channel_shrink.py --out /tmp/bench_shrink
        [--arch resnet18 --arch mobilenet_v2] [--keep 0.75 --keep 0.5] [--runs 30]
        [--image-size 224] [--results bench/results/channel_shrink.md]

Needs: pip install -e '.[vision,prune]'
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

ARCHITECTURES = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2"}
ONNX_ARGS = {"input_names": ["input"], "output_names": ["logits"],
             "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}


def int8_copy(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """The model with QAT structure, observers calibrated on a few random batches, BN folded."""
    from sparsify.quantization import disable_observers_, fold_qat_batchnorm_, prepare_qat_

    model = copy.deepcopy(model)
    prepare_qat_(model)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    disable_observers_(model)
    model.eval()
    fold_qat_batchnorm_(model)
    return model


def macs(model: torch.nn.Module, size: int) -> float:
    """Multiply-accumulates of one image (torch-pruning's counter), in G."""
    import torch_pruning as tp

    ops, _ = tp.utils.count_ops_and_params(model.eval(), torch.zeros(1, 3, size, size))
    return ops / 1e9


def export_variants(arch: str, keeps: list[float], out: Path, size: int) -> dict[str, dict]:
    from sparsify.export.onnx_export import export_onnx
    from sparsify.modifiers.channel_shrink import shrink_channels_
    from sparsify.trainers.vision_models import build_arch

    torch.manual_seed(0)
    dense = build_arch(arch, 10).eval()
    x = torch.zeros(1, 3, size, size)
    variants: dict[str, torch.nn.Module] = {"dense": dense}
    for keep in keeps:
        shrunk = copy.deepcopy(dense)
        shrink_channels_(shrunk, keep)
        variants[f"keep {keep:g}"] = shrunk.eval()
    files: dict[str, dict] = {}
    for label, model in variants.items():
        stem = f"{arch}_{label.replace(' ', '')}"
        info = {"params": sum(p.numel() for p in model.parameters()) / 1e6,
                "macs": macs(model, size)}
        files[f"{label} FP32"] = {**info, "path": export_onnx(
            model, (x,), out / f"{stem}_fp32.onnx", **ONNX_ARGS)}
        files[f"{label} INT8"] = {**info, "path": export_onnx(
            int8_copy(model, size), (x,), out / f"{stem}_int8.onnx", **ONNX_ARGS)}
    return files


def cpu_name() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    get = lambda key: fields.get(key, "?").strip()  # noqa: E731
    return (f"{get('Model name')}, family {get('CPU family')}, model {get('Model')}, "
            f"{get('CPU(s)')} CPUs")


def main() -> None:
    from sparsify.export.inspect import measure_interleaved, paired_speedups, quartiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", action="append", choices=sorted(ARCHITECTURES))
    parser.add_argument("--keep", action="append", type=float)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--results", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    keeps = args.keep or [0.75, 0.5]
    size = args.image_size
    rng = np.random.default_rng(0)

    def inputs(batch: int) -> dict[str, np.ndarray]:
        return {"input": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}

    lines = [f"CPU: {cpu_name()}. ONNX Runtime CPU, image {size}x{size}, {args.runs} "
             "interleaved repetitions after 3 warm-ups; speedup = dense FP32 latency / model "
             "latency per repetition: median (interquartile range).", "",
             "| model | variant | params (M) | GMACs | b1 ms | b1 speedup | b32 ms "
             "| b32 speedup |", "|---|---|---|---|---|---|---|---|"]
    for arch in args.arch or list(ARCHITECTURES):
        files = export_variants(arch, keeps, args.out, size)
        times = measure_interleaved({k: v["path"] for k, v in files.items()}, inputs, (1, 32),
                                    runs=args.runs)
        for label, info in files.items():
            cells = []
            for batch in (1, 32):
                ms = float(np.median(times[batch][label]))
                q = quartiles(paired_speedups(times[batch][label], times[batch]["dense FP32"]))
                cells += [f"{ms:.1f}", f"{q[1]:.2f}x ({q[0]:.2f}-{q[2]:.2f})"]
            lines.append(f"| {ARCHITECTURES[arch]} | {label} | {info['params']:.2f} | "
                         f"{info['macs']:.3f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        args.results.write_text(text)


if __name__ == "__main__":
    main()
