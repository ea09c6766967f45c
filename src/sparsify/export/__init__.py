"""Export to ONNX and the checks run on every exported model (shared by all domains)."""

from __future__ import annotations

from sparsify.export.onnx_export import export_onnx
from sparsify.export.inspect import (
    INTEGER_KERNEL_OPS, compare_with_torch, count_qdq, float_ops_on_dequantized_inputs,
    integer_kernel_count, measure_interleaved, measure_latency, onnx_weight_sparsity,
    optimized_graph_op_counts, ort_session, run_onnx,
)

__all__ = [
    "INTEGER_KERNEL_OPS",
    "compare_with_torch",
    "count_qdq",
    "export_onnx",
    "float_ops_on_dequantized_inputs",
    "integer_kernel_count",
    "measure_interleaved",
    "measure_latency",
    "onnx_weight_sparsity",
    "optimized_graph_op_counts",
    "ort_session",
    "run_onnx",
]
