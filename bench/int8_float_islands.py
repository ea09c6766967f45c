"""Measurement: does leaving ONNX Runtime's float islands in float pay on MobileNetV3?

ONNX Runtime has no integer kernel for hard-swish / hard-sigmoid / the squeeze-excite Mul, so
in an INT8 MobileNetV3 they run in float between DequantizeLinear and QuantizeLinear. This
script builds the *partial* INT8 variant that the export could ship instead: those float ops
(found in the QDQ graph: an op reading a DequantizeLinear output that ONNX Runtime cannot fuse
into an integer kernel) and ``--rings`` rings of their neighbours across a Q/DQ hop form a float
region; the Quantize/DequantizeLinear pairs inside it are removed and its convolutions get
their dequantized (same trained) weights in float. Then, interleaved in one process, it times
the dense FP32 baseline, the INT8 export, each partial variant and the same weights in FP32
(fake quantization off, what the export ships when INT8 is slower).

    python bench/int8_float_islands.py --out /tmp/islands [--arch mobilenet_v3_small ...]

A fixed random initialisation, QAT-calibrated on random inputs (speed does not depend on the
weights' values). Results: docs/INT8_EXPORT.md ("When INT8 is slower").
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from bench_channel_shrink import ONNX_ARGS, int8_copy  # bench/: the same INT8 preparation

#: ops ONNX Runtime runs on integers when Q/DQ surround them (its QDQ selectors)
INTEGER_CAPABLE = {"Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool",
                   "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Relu",
                   "Clip", "Concat", "Sigmoid", "LeakyRelu", "Softmax", "Gather", "Resize",
                   "Split", "Identity"}
QDQ = ("QuantizeLinear", "DequantizeLinear")


def float_region_variant(src: Path, dst: Path, rings: int) -> dict[str, int]:
    """Write the partial variant of the INT8 file ``src`` to ``dst``; returns its op counts."""
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def activation_dq(node: onnx.NodeProto) -> bool:
        return node.op_type == "DequantizeLinear" and node.input[0] not in inits

    def neighbours(node: onnx.NodeProto):
        for name in node.input:  # upstream, across DQ <- Q
            dq = producer.get(name)
            if dq is not None and activation_dq(dq):
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in producer:
                    yield producer[q.input[0]]
            elif dq is not None and dq.op_type not in QDQ:
                yield dq
        for name in node.output:  # downstream, across Q -> DQ
            for user in users.get(name, []):
                if user.op_type == "QuantizeLinear":
                    for dq in users.get(user.output[0], []):
                        yield from users.get(dq.output[0], [])
                elif user.op_type not in QDQ:
                    yield user

    region = {id(n) for n in graph.node if n.op_type not in QDQ
              and n.op_type not in INTEGER_CAPABLE
              and any(i in producer and activation_dq(producer[i]) for i in n.input)}
    for _ in range(rings):
        region |= {id(x) for n in graph.node if id(n) in region for x in neighbours(n)}
    outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producer]:
        if id(producer[q.input[0]]) not in region:
            continue
        for dq in users.get(q.output[0], []):
            consumers = users.get(dq.output[0], [])
            if dq.op_type == "DequantizeLinear" and dq.output[0] not in outputs \
                    and all(id(c) in region for c in consumers):
                for c in consumers:
                    c.input[:] = [q.input[0] if t == dq.output[0] else t for t in c.input]
                removed.add(id(dq))
        if all(id(dq) in removed for dq in users.get(q.output[0], [])):
            removed.add(id(q))
    for node in graph.node:  # the region's convolutions get their weights in float
        if id(node) not in region or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for idx, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            zp = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
                  if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            weight = (q - zp.reshape(shape)) * scale.reshape(shape)
            graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32),
                                                             f"{name}_float"))
            node.input[idx] = f"{name}_float"
    kept = [n for n in graph.node if id(n) not in removed]
    while True:  # drop what nothing reads any more
        used = {i for n in kept for i in n.input} | outputs
        still = [n for n in kept if any(o in used for o in n.output)]
        if len(still) == len(kept):
            break
        kept = still
    del graph.node[:]
    graph.node.extend(kept)
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dict(Counter(n.op_type for n in graph.node))


def export_variants(arch: str, out: Path, size: int) -> dict[str, Path]:
    from sparsify.export.onnx_export import export_onnx
    from sparsify.quantization.fake_quant import fake_quant_bypassed
    from sparsify.trainers.vision_models import build_arch

    torch.manual_seed(0)
    base = build_arch(arch, 3).eval()
    model = int8_copy(base, size)  # QAT structure, calibrated observers, BatchNorm folded
    x = torch.randn(1, 3, size, size)
    args = ONNX_ARGS
    name = arch.replace(":", "_")
    paths = {"dense FP32": out / f"{name}_dense.onnx", "INT8": out / f"{name}_int8.onnx",
             "FP32 sparse (fake-quant off)": out / f"{name}_fp32.onnx"}
    export_onnx(base, (x,), paths["dense FP32"], **args)
    export_onnx(model, (x,), paths["INT8"], **args)
    with fake_quant_bypassed():
        export_onnx(model, (x,), paths["FP32 sparse (fake-quant off)"], **args)
    return paths


def main() -> None:
    from sparsify.export.inspect import (
        float_ops_on_dequantized_inputs, integer_kernel_count, measure_interleaved,
        optimized_graph_op_counts, paired_speedups, quartiles,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", action="append",
                        help="arch keys (default: mobilenet_v3_small, "
                             "timm:mobilenetv3_small_050)")
    parser.add_argument("--rings", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def inputs(batch: int) -> dict[str, np.ndarray]:
        return {"input": rng.standard_normal((batch, 3, args.image_size, args.image_size))
                .astype(np.float32)}

    for arch in args.arch or ["mobilenet_v3_small", "timm:mobilenetv3_small_050"]:
        paths = export_variants(arch, args.out, args.image_size)
        for rings in args.rings:
            label = f"INT8, float islands + {rings} ring(s) in float"
            paths[label] = args.out / f"{arch.replace(':', '_')}_islands{rings}.onnx"
            float_region_variant(paths["INT8"], paths[label], rings)
        times = measure_interleaved(paths, inputs, (1, 32), runs=args.runs)
        print(f"\n{arch} at {args.image_size}px: speedup over dense FP32, median "
              f"(interquartile range) of {args.runs} interleaved repetitions")
        print("| variant | integer kernels | float ops on dequantized inputs | batch 1 "
              "| batch 32 |")
        print("|---|---|---|---|---|")
        for label, path in paths.items():
            if label == "dense FP32":
                continue
            cells = []
            for batch in (1, 32):
                p25, median, p75 = quartiles(paired_speedups(times[batch][label],
                                                             times[batch]["dense FP32"]))
                cells.append(f"{median:.2f}x ({p25:.2f}-{p75:.2f})")
            ops = float_ops_on_dequantized_inputs(path)
            print(f"| {label} | {integer_kernel_count(optimized_graph_op_counts(path))} | "
                  f"{', '.join(f'{k} x{n}' for k, n in ops.items()) or 'none'} | "
                  f"{cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
