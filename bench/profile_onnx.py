"""Where an ONNX model's CPU time goes: ONNX Runtime's own profiler, summed by operator type.

Runs the model ``--runs`` times (after ``--warmup``) with random inputs of the given batch
size (and sequence length for token inputs), with the session profiler on, and prints the
share of node time per operator type (``MatMulInteger``, ``Softmax``, ``LayerNormalization``,
...), so a shrink can aim at what dominates. One thread per session by default, as the
deployment's latency check times at batch 1.

    python bench/profile_onnx.py MODEL.onnx [--batch 1] [--seq 128] [--runs 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from real_runs import cpu_name  # noqa: E402

_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def feeds(session, batch: int, seq: int, image: int) -> dict[str, np.ndarray]:
    """Random inputs: token ids below 1000 and masks of ones for integer inputs, normal noise
    for float ones (images ``image`` pixels square)."""
    rng = np.random.default_rng(0)
    out = {}
    for inp in session.get_inputs():
        dtype = _TYPES.get(inp.type, np.float32)
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        if dtype is np.float32:
            dims = [batch] + [d or image for d in shape[1:]]
            out[inp.name] = rng.standard_normal(dims).astype(np.float32)
        else:
            dims = [batch] + [d or seq for d in shape[1:]]
            ones = "mask" in inp.name or "type" in inp.name
            out[inp.name] = (np.ones(dims, dtype) if "mask" in inp.name
                             else np.zeros(dims, dtype) if ones
                             else rng.integers(1000, 2000, dims).astype(dtype))
    return out


def profile(path: str, batch: int, seq: int, image: int, runs: int, warmup: int,
            threads: int) -> dict[str, float]:
    """Microseconds per run by operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inputs = feeds(session, batch, seq, image)
        for _ in range(warmup + runs):
            session.run(None, inputs)
        trace = session.end_profiling()
        with open(trace) as f:
            events = json.load(f)
    per_run = defaultdict(float)
    kernel_runs = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        per_run[op] += event.get("dur", 0)
        kernel_runs[op] += 1
    total_runs = warmup + runs
    return {op: us / total_runs for op, us in per_run.items()}


def table(by_op: dict[str, float], title: str) -> str:
    total = sum(by_op.values()) or 1.0
    lines = [title, "", "| operator | ms per run | share |", "|---|---|---|"]
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {op} | {us / 1000:.2f} | {100 * us / total:.1f}% |")
    lines.append(f"| all nodes | {total / 1000:.2f} | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    by_op = profile(args.model, args.batch, args.seq, args.image, args.runs, args.warmup,
                    args.threads)
    print(table(by_op, f"{args.model}: batch {args.batch}, {args.seq} tokens / {args.image} px; "
                       f"{args.runs} runs, {args.threads} thread(s); CPU: {cpu_name()}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
