"""The end every domain's export shares: the integer-graph check, the fidelity rule and the
deployment folder (model, samples, ``config.json``, README) -> :class:`ExportResult`."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsify.errors import ExportError
from sparsify.rundir import write_text_atomic
from sparsify.trainers.base import ExportResult, Fidelity

if TYPE_CHECKING:
    from sparsify.export.fallback import Shipping

logger = logging.getLogger(__name__)

#: The fidelity rule: the exported model's task metric within this many points (0-100 scale) of
#: PyTorch's on the validation set (or one validation example, when a set is that small).
METRIC_TOLERANCE_POINTS = 0.5
#: An FP32 export computes what PyTorch computes: its largest output difference, as a fraction
#: of the output range, stays below this (a larger one is a conversion bug, not rounding).
FP32_MAX_TOLERANCE = 1e-4


def gzip_size(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(gzip.compress(fh.read(), compresslevel=6))


def fidelity(metric: str, pytorch: float, onnxruntime: float, examples: int,
             agreement: Mapping[str, Any] | None = None, fraction: bool = True,
             right: tuple[np.ndarray, np.ndarray] | None = None) -> Fidelity:
    """The fidelity of an export: the task metric of both models and the gap in points.

    Args:
        metric: the task metric's name (``top1``, ``f1``, ``map50_95``...).
        pytorch, onnxruntime: its value for the PyTorch model and for the ONNX file.
        examples: validation examples it was computed on (one of them is the smallest
            difference a metric can show, so the tolerance is never below it).
        agreement: output statistics to report beside it (not judged).
        fraction: the metric is a fraction in [0, 1] (points = 100 x); else already points.
        right: for a metric that counts right answers, which examples PyTorch and the export
            answer right (two boolean arrays), for the paired test of :class:`Fidelity`.
    """
    scale = 100.0 if fraction else 1.0
    gap = abs(pytorch - onnxruntime) * scale
    one_example = 100.0 / examples if examples else 0.0
    counts: tuple[int | None, int | None] = (None, None)
    if right is not None:
        torch_right, export_right = (np.asarray(r, dtype=bool) for r in right)
        counts = (int((torch_right & ~export_right).sum()), int((export_right & ~torch_right).sum()))
    return Fidelity(metric, float(pytorch), float(onnxruntime), gap,
                    max(METRIC_TOLERANCE_POINTS, one_example), int(examples), dict(agreement or {}),
                    *counts)


def check_integer_graph(model_path: Path, quantized: bool) -> tuple[dict[str, int], int, int, int]:
    """What ONNX Runtime will run: ``(op counts, integer kernels, Q nodes, DQ nodes)``.

    Raises:
        ExportError: a quantized graph without integer kernels (it would run slower than FP32),
            or Quantize/Dequantize nodes in an FP32 graph.
    """
    from sparsify.export.inspect import count_qdq, integer_kernel_count, optimized_graph_op_counts

    counts = optimized_graph_op_counts(model_path)
    kernels = integer_kernel_count(counts)
    n_q, n_dq = count_qdq(model_path)
    if quantized and kernels == 0:
        raise ExportError("The quantized export has no integer kernels in ONNX Runtime's "
                          f"optimised graph (ops: {dict(counts)}): it would be slower than FP32.")
    if not quantized and (n_q or n_dq):
        raise ExportError("An FP32 export holds QuantizeLinear/DequantizeLinear nodes.")
    return counts, kernels, n_q, n_dq


@dataclass
class ShippedExportResult(ExportResult):
    """An :class:`ExportResult` that also says what the deployment ships and why.

    Attributes:
        format: ``int8``, ``fp32_sparse`` (the trained weights in FP32 because INT8 was slower
            than dense FP32) or ``fp32`` (a run without QAT).
        shipping: ``fallback_reason`` (``None`` unless the format is a fallback) and the
            ``candidates`` measured (format, speedups, fidelity).
    """

    format: str = "fp32"
    shipping: dict[str, Any] = field(default_factory=dict)


def _shipping_readme(shipping: Shipping) -> str:
    if shipping.reason is None:
        return ""
    return f"\n## Why this format\n\n`model.onnx` is `{shipping.format}`: {shipping.reason}\n"


class FidelityError(ExportError):
    """The exported model's task metric is too far from PyTorch's. Carries the full result, so
    the run can record the figures (the export itself is kept for inspection)."""

    def __init__(self, result: ExportResult) -> None:
        f = result.fidelity
        paired = ("" if f.p_value is None else
                  f"; {f.only_pytorch_right} examples only PyTorch answers right and "
                  f"{f.only_export_right} only the export does (McNemar p = {f.p_value:.3g}, "
                  "below 0.05: not rounding noise)")
        super().__init__(
            f"The ONNX model disagrees with PyTorch on the validation set: {f.metric} "
            f"{f.onnxruntime:.4f} vs PyTorch's {f.pytorch:.4f}, {f.gap_points:.2f} points apart "
            f"(allowed {f.tolerance_points:.2f}) over {f.examples} validation examples{paired}.",
            hint="The trained model and its checkpoints are kept in the run folder. Rerun the "
                 "export alone with `sparsify.run export RUN_DIR` (after upgrading, or with "
                 "--debug to see the comparison); no retraining is needed.")
        self.result = result


def write_deployment(deploy_dir: Path, model_path: Path, baseline_path: Path, *,
                     quantized: bool, fidelity_result: Fidelity, sample_inputs: dict[str, Any],
                     output_names: Sequence[str], config: dict[str, Any], readme: str,
                     fp32_tolerance: float = FP32_MAX_TOLERANCE,
                     shipping: Shipping | None = None) -> ShippedExportResult:
    """Check the exported graph, write the deployment folder, return the export's facts.

    ``sample_inputs`` are run through the exported file and saved with its outputs
    (``sample_input.npz`` / ``sample_output.npz``) so a user can check an installation.
    ``shipping`` (from :func:`~sparsify.export.fallback.ship_not_slower`) says which format
    ``model_path`` is and why: ``config.json`` gets ``export_format`` (and
    ``fallback_reason``), the README a paragraph, the result ``format`` and ``shipping``.

    Raises:
        ExportError: an FP32 export that does not compute what PyTorch computes, or a graph
            that fails :func:`check_integer_graph`.
        FidelityError: the fidelity rule failed (the folder is written all the same).
    """
    from sparsify.export.inspect import onnx_weight_sparsity, run_onnx

    agreement = fidelity_result.agreement
    if not quantized and agreement.get("max_rel_diff", 0.0) > fp32_tolerance:
        raise ExportError(f"The FP32 ONNX model differs from PyTorch by "
                          f"{agreement['max_rel_diff']:.2e} of the output range (need <= "
                          f"{fp32_tolerance}): the conversion changed what it computes.",
                          hint="Run with --debug and report it: an FP32 export must match.")
    counts, kernels, n_q, n_dq = check_integer_graph(model_path, quantized)
    sample_out = run_onnx(model_path, sample_inputs)
    np.savez(deploy_dir / "sample_input.npz", **sample_inputs)
    np.savez(deploy_dir / "sample_output.npz", **dict(zip(output_names, sample_out)))
    fmt = shipping.format if shipping is not None else ("int8" if quantized else "fp32")
    config = {**config, "export_format": fmt}
    if shipping is not None and shipping.reason:
        config["fallback_reason"] = shipping.reason
        readme += _shipping_readme(shipping)
    write_text_atomic(deploy_dir / "config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(deploy_dir / "README.md", readme)
    result = ShippedExportResult(
        onnx=Path(model_path), baseline_onnx=Path(baseline_path), quantized=quantized,
        fidelity=fidelity_result, optimized_graph_ops=dict(counts), integer_kernels=kernels,
        quantize_nodes=n_q, dequantize_nodes=n_dq,
        onnx_sparsity=onnx_weight_sparsity(model_path)["overall"], format=fmt,
        shipping=shipping.to_dict() if shipping is not None else {"format": fmt,
                                                                   "fallback_reason": None})
    logger.info("Export fidelity: %s %.4f (ONNX Runtime) vs %.4f (PyTorch), %.2f points apart "
                "(allowed %.2f).", fidelity_result.metric, fidelity_result.onnxruntime,
                fidelity_result.pytorch, fidelity_result.gap_points,
                fidelity_result.tolerance_points)
    if not fidelity_result.ok:
        raise FidelityError(result)
    return result
