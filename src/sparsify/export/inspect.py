"""The checks every domain runs on an exported model: inspect a file the way ONNX Runtime will
run it (which integer kernels its optimiser produces, how fast it is, how closely it matches
PyTorch, how sparse its weights are)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsify.errors import ExportError, MissingExtraError

if TYPE_CHECKING:
    import onnxruntime
    import torch

#: Operators of ONNX Runtime's optimised graphs that compute on integers.
INTEGER_KERNEL_OPS: frozenset[str] = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "ConvInteger",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QAttention",
        "DynamicQuantizeLSTM",
        "QEmbedLayerNormalization",
    }
)

# Weight operand of each op (input index, index of its zero point or None). Covers float/QDQ
# graphs and ONNX Runtime's fused integer graphs, so the optimised file can be inspected too.
_WEIGHT_INPUTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "Conv": ((1, None),),
    "ConvTranspose": ((1, None),),
    "Gemm": ((1, None), (0, None)),
    "MatMul": ((1, None), (0, None)),
    "ConvInteger": ((1, 3),),
    "MatMulInteger": ((1, 3), (0, 2)),
    "MatMulIntegerToFloat": ((1, 5), (0, 4)),
    "QLinearConv": ((3, 5),),
    "QLinearMatMul": ((3, 5), (0, 2)),
    "QGemm": ((3, 5),),
}
# Ops that only move or reshape a weight between its initializer and its consumer.
_LAYOUT_OPS = frozenset({"Transpose", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
def require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(exc.name or "onnx", "train", "ONNX export") from exc
    return onnx, onnxruntime


# --------------------------------------------------------------------------------------------
# Inspecting an exported file
# --------------------------------------------------------------------------------------------


def count_qdq(onnx_path: str | os.PathLike[str]) -> tuple[int, int]:
    """Count QuantizeLinear and DequantizeLinear nodes in a file (as saved, not optimised).

    Returns:
        ``(n_quantize, n_dequantize)``.
    """
    onnx, _ = require_onnx()
    counts = Counter(n.op_type for n in onnx.load(str(onnx_path)).graph.node)
    return counts["QuantizeLinear"], counts["DequantizeLinear"]


def _optimized_graph(onnx_path: str | os.PathLike[str], level: str) -> Any:
    onnx, ort = require_onnx()
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise ValueError(f"Unknown optimisation level '{level}'; valid: {', '.join(levels)}.")
    with tempfile.TemporaryDirectory(prefix="sparsify-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(out)).graph


def optimized_graph_op_counts(
    onnx_path: str | os.PathLike[str], level: str = "extended"
) -> dict[str, int]:
    """Node types of the graph ONNX Runtime actually runs on the CPU.

    ONNX Runtime's QDQ fusions (``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``,
    ``QLinearAdd``...) run at the "extended" level; "all" adds hardware-specific layout
    transforms (NCHWc) that hide nothing more but make the counts machine-dependent.

    Args:
        onnx_path: the exported model.
        level: ``"basic"``, ``"extended"`` or ``"all"``.

    Returns:
        ``{op_type: count}`` of the optimised graph.
    """
    graph = _optimized_graph(onnx_path, level)
    return dict(Counter(node.op_type for node in graph.node))


def float_ops_on_dequantized_inputs(onnx_path: str | os.PathLike[str]) -> dict[str, int]:
    """Operators of the optimised graph that run in float on a ``DequantizeLinear`` output:
    the places where ONNX Runtime found no integer kernel, so the data leaves INT8 and (mostly)
    comes back through a ``QuantizeLinear`` - each such hop costs time.

    Returns:
        ``{op_type: count}``, most frequent first.
    """
    graph = _optimized_graph(onnx_path, "extended")
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear"
                   for out in node.output}
    found = Counter(node.op_type for node in graph.node
                    if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                    and node.op_type not in INTEGER_KERNEL_OPS
                    and any(i in dequantized for i in node.input))
    return dict(found.most_common())


def integer_kernel_count(counts: Mapping[str, int]) -> int:
    """Number of integer-kernel nodes in op counts from :func:`optimized_graph_op_counts`."""
    return sum(n for op, n in counts.items() if op in INTEGER_KERNEL_OPS)


def ort_session(
    path: str | os.PathLike[str], threads: int | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimisations.

    Args:
        path: the ONNX file.
        threads: intra-op threads; ``None`` lets ONNX Runtime use every core.
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file once on ``inputs`` (``{input name: array}``) and return all outputs."""
    return list(ort_session(path).run(None, dict(inputs)))


def _flatten_outputs(out: Any) -> list[np.ndarray]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, Mapping):  # dicts and transformers' ModelOutput
        return [a for v in out.values() if v is not None for a in _flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [a for v in out for a in _flatten_outputs(v)]
    return []


def compare_with_torch(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    as_kwargs: bool = False,
    keep_outputs: bool = False,
) -> dict[str, Any]:
    """Run PyTorch (eval mode, no grad) and ONNX Runtime on the same inputs and compare.

    Args:
        model: the PyTorch model the file was exported from.
        onnx_path: the exported file.
        inputs: ``{onnx input name: array}``; PyTorch gets them positionally in this order,
            or as keyword arguments with ``as_kwargs``.
        as_kwargs: call ``model(**inputs)`` (transformers models).
        keep_outputs: also return ``outputs``: ``(PyTorch's, ONNX Runtime's)`` lists of arrays.

    Returns:
        ``max_abs_diff`` over all outputs; ``max_rel_diff``: the largest per-output
        ``max|torch - onnx| / (max - min of the torch output)``; ``mean_abs_diff`` over all
        output elements and ``mean_rel_diff`` (it divided by the widest output range); ``top1_agreement``: fraction
        of rows whose arg-max over the last axis agrees, for the first output with a last axis
        longer than 1 (``None`` if there is none); ``num_outputs``.

    Raises:
        ExportError: the number or shapes of the outputs differ.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.empty(0)).device
        tensors = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model(**tensors) if as_kwargs else model(*tensors.values())
    finally:
        model.train(was_training)
    expected = _flatten_outputs(out)
    actual = run_onnx(onnx_path, inputs)
    if len(expected) != len(actual):
        raise ExportError(
            f"{onnx_path} has {len(actual)} outputs, the PyTorch model {len(expected)}."
        )
    max_abs, max_rel, top1, widest = 0.0, 0.0, None, 0.0
    abs_sum, count = 0.0, 0
    for ref, got in zip(expected, actual):
        if ref.shape != got.shape:
            raise ExportError(
                f"Output shapes differ between PyTorch {ref.shape} and ONNX {got.shape} "
                f"({onnx_path})."
            )
        if ref.size == 0:
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = float(np.max(np.abs(ref64 - got64)))
        span = float(ref64.max() - ref64.min())
        widest = max(widest, span)
        max_abs = max(max_abs, diff)
        abs_sum += float(np.abs(ref64 - got64).sum())
        count += ref.size
        max_rel = max(max_rel, diff / span if span > 0 else (0.0 if diff == 0 else np.inf))
        if top1 is None and ref.ndim >= 2 and ref.shape[-1] > 1:
            top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    result: dict[str, Any] = {
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "mean_abs_diff": abs_sum / count if count else 0.0,
        "mean_rel_diff": (abs_sum / count / widest) if count and widest > 0 else 0.0,
        "top1_agreement": top1,
        "num_outputs": len(expected),
    }
    if keep_outputs:
        result["outputs"] = (expected, actual)
    return result


def measure_interleaved(
    models: Mapping[str, str | os.PathLike[str]],
    make_inputs: Callable[[int], Mapping[str, np.ndarray]],
    batch_sizes: Iterable[int] = (1, 32),
    warmup: int = 3,
    runs: int = 20,
    threads: int | None = None,
) -> dict[int, dict[str, list[float]]]:
    """Latency in milliseconds of every run of several ONNX files, timed in turn.

    Every session is created before any is timed. Each repetition runs every model once on the
    same inputs, in an order rotated by one each repetition (A B, B A, A B...; with three: A B C,
    B C A, C A B...), so that no model always runs first and, with three or more, none runs
    twice in a row (a model run again at once finds its weights in the cache: reversing the
    order instead, A B C, C B A, would favour the first and last models over the middle one).
    Load from other processes that comes and goes then falls on all models alike, and the ratio
    of two models' times in one repetition (:func:`paired_speedups`) stays trustworthy on a busy
    machine, where timing one model after the other does not.

    Args:
        models: ``{name: ONNX file}``; the files take the same inputs.
        make_inputs: ``batch_size -> {input name: array}``; called once per batch size.
        batch_sizes: batch sizes to time.
        warmup: untimed repetitions per batch size.
        runs: timed repetitions per batch size.
        threads: intra-op threads of every session (``None``: all cores).

    Returns:
        ``{batch_size: {name: [milliseconds of each repetition]}}``: index ``i`` of every list
        comes from repetition ``i``.

    Raises:
        ValueError: ``runs`` is below 1.
    """
    if runs < 1:
        raise ValueError(f"runs={runs} must be at least 1.")
    sessions = {name: ort_session(path, threads=threads) for name, path in models.items()}
    order = list(sessions)
    result: dict[int, dict[str, list[float]]] = {}
    for batch in batch_sizes:
        feed = dict(make_inputs(int(batch)))
        times: dict[str, list[float]] = {name: [] for name in order}
        for rep in range(max(0, warmup) + runs):
            shift = rep % len(order)
            for name in order[shift:] + order[:shift]:
                start = time.perf_counter()
                sessions[name].run(None, feed)
                if rep >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
        result[int(batch)] = times
    return result


def paired_speedups(model_ms: Sequence[float], baseline_ms: Sequence[float]) -> list[float]:
    """``baseline / model`` of each repetition of :func:`measure_interleaved` (index ``i`` of
    both lists timed in the same repetition)."""
    if len(model_ms) != len(baseline_ms):
        raise ValueError(f"{len(model_ms)} model times vs {len(baseline_ms)} baseline times: "
                         "speedups pair the runs of one repetition.")
    return [b / m for m, b in zip(model_ms, baseline_ms)]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(25th percentile, median, 75th percentile)`` of ``values`` (linear interpolation)."""
    p25, median, p75 = np.percentile(np.asarray(values, dtype=np.float64), (25, 50, 75))
    return float(p25), float(median), float(p75)


def measure_latency(
    onnx_path: str | os.PathLike[str],
    make_inputs: Callable[[int], Mapping[str, np.ndarray]],
    batch_sizes: Iterable[int] = (1, 32),
    warmup: int = 3,
    runs: int = 20,
    threads: int | None = None,
) -> dict[int, float]:
    """Median latency in milliseconds per batch size of one model.

    To compare two models (an export and its dense baseline) time them together with
    :func:`measure_interleaved`: two calls of this one in turn see different loads on a busy
    machine.

    Args:
        onnx_path: the model.
        make_inputs, batch_sizes, warmup, runs, threads: as for :func:`measure_interleaved`.

    Returns:
        ``{batch_size: median milliseconds per run}``.
    """
    times = measure_interleaved({"model": onnx_path}, make_inputs, batch_sizes, warmup, runs,
                                threads)
    return {batch: statistics.median(by_name["model"]) for batch, by_name in times.items()}


def _is_zero_point(q: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """Boolean mask of the entries of quantized ``q`` equal to their zero point."""
    if zero_point is None:
        return q == 0
    if zero_point.size == 1 or np.all(zero_point == zero_point.flat[0]):
        return q == zero_point.flat[0]
    shape = [1] * q.ndim
    shape[axis] = zero_point.size
    return q == zero_point.reshape(shape)


def _resolve_weight(
    name: str,
    initializers: Mapping[str, np.ndarray],
    producer: Mapping[str, Any],
) -> tuple[str, np.ndarray] | None:
    """The initializer behind a weight operand and a boolean "is zero" mask of it."""
    from onnx import helper

    while name not in initializers:
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type in _LAYOUT_OPS:
            name = node.input[0]
            continue
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            zp_name = node.input[2] if len(node.input) > 2 else ""
            if source in initializers:
                axis = next((helper.get_attribute_value(a) for a in node.attribute
                             if a.name == "axis"), 1)
                zp = initializers.get(zp_name) if zp_name else None
                return source, _is_zero_point(initializers[source], zp, axis)
            name = source  # DQ(Q(float weight)): a float zero quantizes to the zero point
            continue
        if node.op_type == "QuantizeLinear":
            name = node.input[0]
            continue
        return None
    return name, initializers[name] == 0


def onnx_weight_sparsity(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Fraction of exact zeros in the weights of Conv/Gemm/MatMul (and integer variants).

    Float weights count ``== 0``; int8 weights behind a DequantizeLinear (or inside
    ``QLinearConv``/``QGemm``... of an optimised graph) count ``== zero point``, which is what a
    pruned float weight quantizes to. Activation x activation MatMuls (no initializer) are
    skipped.

    Returns:
        ``overall`` (zeros / weights over all weight initializers), ``num_zeros``,
        ``num_weights`` and ``per_initializer`` (``{name: fraction}``).
    """
    onnx, _ = require_onnx()
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    per: dict[str, float] = {}
    zeros = total = 0
    for node in graph.node:
        for idx, zp_idx in _WEIGHT_INPUTS.get(node.op_type, ()):
            if idx >= len(node.input) or not node.input[idx]:
                continue
            if zp_idx is not None:
                # Fused integer op: the operand is the int8 initializer itself.
                name = node.input[idx]
                if name not in initializers:
                    continue
                zp_name = node.input[zp_idx] if zp_idx < len(node.input) else ""
                zp = initializers.get(zp_name) if zp_name else None
                q = initializers[name]
                # Per-channel zero points of fused ops run along the output channels: the
                # first axis for QLinearConv, the last for (non-transposed) MatMul/Gemm.
                axis = 0 if node.op_type == "QLinearConv" else q.ndim - 1
                found: tuple[str, np.ndarray] | None = (name, _is_zero_point(q, zp, axis))
            else:
                found = _resolve_weight(node.input[idx], initializers, producer)
            if found is None or found[0] in per:
                continue
            name, mask = found
            per[name] = float(mask.mean()) if mask.size else 0.0
            zeros += int(mask.sum())
            total += int(mask.size)
            break  # one weight operand per node
    return {
        "overall": zeros / total if total else 0.0,
        "num_zeros": zeros,
        "num_weights": total,
        "per_initializer": per,
    }
