"""Benchmark: a run's INT8-vs-dense latency timed sequentially (as runs did before) and
interleaved (as they do now) while CPU-bound processes share the cores.

Per trial and load pattern, the run folder's ``deployment/model.onnx`` and
``training_artifacts/dense_baseline.onnx`` are timed at batch 1 on the first sequence of
``deployment/sample_input.npz`` repeated to ``--tokens`` tokens (image runs: the first image):

* sequential: ``measure_latency`` of the export, then of the baseline;
* interleaved: ``report.measure_latencies`` (the two in turn within each repetition).

Load patterns (two busy-looping processes): ``burst`` runs them only while the sequential
scheme times the export, and as long at the start of the interleaved timing; ``onoff`` runs
them 0.3 s on / 0.3 s off throughout.

    python bench/latency_under_load.py RUN_DIR [--tokens 64] [--trials 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsify.export.inspect import measure_latency
from sparsify.report import measure_latencies, slow_int8_warning

BUSY = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < {on}: pass\n" \
       "    time.sleep({off})"


def start_load(on: float, off: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(on=on, off=off)])
            for _ in range(2)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def batch_one(sample: Path, tokens: int) -> Callable[[int], dict[str, np.ndarray]]:
    data = dict(np.load(sample))
    if "input" in data:  # an image run
        return lambda batch: {"input": np.repeat(data["input"][:1], batch, axis=0)}
    return lambda batch: {k: np.repeat(np.resize(v[:1], (1, tokens)), batch, axis=0)
                          for k, v in data.items()}


def trial(model: Path, baseline: Path, inputs: Callable, pattern: str) -> str:
    load = start_load(1.0, 0.0) if pattern == "burst" else start_load(0.3, 0.3)
    start = time.perf_counter()
    export_ms = measure_latency(model, inputs, batch_sizes=(1,))[1]
    burst_s = time.perf_counter() - start
    if pattern == "burst":
        stop_load(load)
    baseline_ms = measure_latency(baseline, inputs, batch_sizes=(1,))[1]
    if pattern == "burst":
        load = start_load(1.0, 0.0)
        threading.Timer(burst_s, stop_load, [load]).start()
    entry = measure_latencies(model, baseline, inputs, batch_sizes=(1,))
    stop_load(load)
    sequential = baseline_ms / export_ms
    lat = entry["batch_1"]
    return (f"[{pattern}] sequential {sequential:.2f}x (warns: {sequential < 1.0}) | "
            f"interleaved {lat['speedup']:.2f}x ({lat['speedup_p25']:.2f}-"
            f"{lat['speedup_p75']:.2f}) (warns: {slow_int8_warning(entry, True, dict) is not None})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (sparse_transfer_*)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    inputs = batch_one(args.run / "deployment" / "sample_input.npz", args.tokens)
    for pattern in ("burst", "onoff"):
        for i in range(args.trials):
            print(f"trial {i} " + trial(args.run / "deployment" / "model.onnx",
                                        args.run / "training_artifacts" / "dense_baseline.onnx",
                                        inputs, pattern), flush=True)


if __name__ == "__main__":
    main()
