"""``metrics.yaml`` and the summary table printed at the end of a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sparsify.modifiers.cost import cost_section, cost_text
from sparsify.rundir import write_text_atomic

if TYPE_CHECKING:
    import numpy as np

    from sparsify.errors import SparsifyError
    from sparsify.plan import Plan
    from sparsify.trainers.base import ExportResult, Task, TrainResult


def measure_latencies(model_onnx: Path, baseline_onnx: Path,
                      make_inputs: Callable[..., Mapping[str, np.ndarray]],
                      lengths: Mapping[str, int] | None = None,
                      batch_sizes: tuple[int, ...] | None = None, runs: int = 20
                      ) -> dict[str, Any]:
    """ONNX Runtime CPU latency of the result and of the dense FP32 baseline, timed in turn
    within each repetition (:func:`~sparsify.export.inspect.measure_interleaved`), per batch size:
    the median and interquartile range of each, and of the speedup of each repetition.

    Args:
        make_inputs: ``batch -> inputs``; with ``lengths``, ``(batch, length=...) -> inputs``.
        lengths: sequence lengths to time, by name, the deployment's first (text:
            ``{"max_seq_length": 128, "data_p95": 41}``). The first length's entries are
            ``batch_N``, another's ``batch_N_<name>``; each entry records its
            ``sequence_length``.

    Returns:
        ``{"batch_N": entry}``, each entry with ``model_ms``, ``dense_fp32_baseline_ms`` and
        ``speedup`` (medians) and each one's ``_p25`` and ``_p75``, and ``runs``.
    """
    if batch_sizes is None:  # the ones the export's speed check used (1 and 32)
        from sparsify.export.fallback import TIMED_BATCH_SIZES

        batch_sizes = TIMED_BATCH_SIZES
    if not lengths:
        return _timed(model_onnx, baseline_onnx, make_inputs, batch_sizes, runs)
    out: dict[str, Any] = {}
    for i, (name, length) in enumerate(lengths.items()):
        out.update(_timed(model_onnx, baseline_onnx, partial(make_inputs, length=length),
                          batch_sizes, runs, suffix=f"_{name}" if i else "", length=length))
    return out


def _timed(model_onnx: Path, baseline_onnx: Path,
           make_inputs: Callable[[int], Mapping[str, np.ndarray]], batch_sizes: tuple[int, ...],
           runs: int, suffix: str = "", length: int | None = None) -> dict[str, Any]:
    from sparsify.export.inspect import measure_interleaved

    times = measure_interleaved({"model": model_onnx, "baseline": baseline_onnx}, make_inputs,
                                batch_sizes, runs=runs)
    extra = {"sequence_length": length} if length is not None else {}
    return {f"batch_{b}{suffix}": {**_latency_entry(t["model"], t["baseline"]), **extra}
            for b, t in times.items()}


def _latency_entry(model_ms: list[float], baseline_ms: list[float]) -> dict[str, Any]:
    from sparsify.export.inspect import paired_speedups, quartiles

    out: dict[str, Any] = {}
    for key, values in (("model_ms", model_ms), ("dense_fp32_baseline_ms", baseline_ms),
                        ("speedup", paired_speedups(model_ms, baseline_ms))):
        p25, median, p75 = quartiles(values)
        out.update({key: round(median, 3), f"{key}_p25": round(p25, 3),
                    f"{key}_p75": round(p75, 3)})
    return {**out, "runs": len(model_ms)}


def _speedup_text(entry: Mapping[str, Any]) -> str:
    """``"1.52x (1.31-1.70)"``: the median speedup and its interquartile range."""
    return f"{entry['speedup']:.2f}x ({entry['speedup_p25']:.2f}-{entry['speedup_p75']:.2f})"


def _where(key: str, entry: Mapping[str, Any]) -> str:
    """``batch 1`` or ``batch 1 data p95 (41 tokens)``."""
    tokens = f" ({entry['sequence_length']} tokens)" if "sequence_length" in entry else ""
    return key.replace("_", " ") + tokens


_SLOW_ADVICE = {
    "image_classification": "Architectures built from conv + ReLU/ReLU6 (ResNet, MobileNet v1/v2, "
                            "EfficientNet-Lite) gain from INT8 here; hard-swish / squeeze-excite "
                            "networks (MobileNetV3) may not.",
    "text": "Transformers gain from INT8 in their linear layers; in very small models the float "
            "parts (embedding lookups, LayerNorm, softmax) dominate, and gains grow with the "
            "hidden size and sequence length.",
}


def slow_int8_warning(latency: dict[str, Any], quantized: bool,
                      float_ops: Callable[[], dict[str, int]], family: str = "") -> str | None:
    """A warning when an INT8 export is slower than the dense FP32 baseline at some batch size
    (a quantized graph that is not faster failed at its purpose), naming the operators that ran
    in float between Quantize/Dequantize pairs (``float_ops`` is called only then).

    Slower is :func:`~sparsify.export.fallback.is_slower`: the whole interquartile range of the
    paired speedups (``speedup_p75``) lies below 1.0, i.e. in at least three of four repetitions
    the INT8 model took longer than the baseline timed beside it; or, where the baseline takes
    at least ``MEDIAN_RULE_MIN_MS``, the median speedup is below 1.0. A short timing whose
    range straddles 1.0 warns of nothing: the machine's noise is larger than the difference,
    and the summary shows the range.
    """
    from sparsify.export.fallback import is_slower

    slow = {k: v for k, v in latency.items() if is_slower(v)}
    if not quantized or not slow:
        return None
    where = ", ".join(f"{_speedup_text(v)} at {_where(k, v)}" for k, v in slow.items())
    text = (f"The INT8 model is slower than the dense FP32 export on this machine ({where}; "
            "median and interquartile range of the speedups, both timed in turn).")
    found = float_ops()
    if found:
        ops = ", ".join(f"{op} x{n}" for op, n in found.items())
        text += (f" ONNX Runtime has no integer kernel for some of its operators, which run in "
                 f"float between Quantize/Dequantize pairs: {ops}.")
    advice = _SLOW_ADVICE.get("image_classification" if family == "image_classification"
                              else "text" if family.endswith(("classification", "answering"))
                              else "")
    if advice:
        text += " " + advice
    text += " The deployment model is still correct (its agreement with PyTorch was checked)."
    return text


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in values.items()}


def _base_report(plan: Plan, task: Task, train: TrainResult, dense: TrainResult | None
                 ) -> dict[str, Any]:
    from sparsify.trainers.common import prunable_sparsity

    everything = prunable_sparsity(task.model)
    pruned = prunable_sparsity(task.model, train.pruned) if train.pruned else None
    out = {
        "use_case": plan.use_case.id,
        "optim_level": plan.optim_level,
        "scheme": plan.scheme,
        "recipe": plan.recipe,
        "task_metrics": _rounded(train.metrics),
        "eval_metric": plan.eval_metric,
        "best_epoch": train.best_epoch,
        "best_epoch_metrics": _rounded(train.best_metrics),
        "epochs": train.epochs,
        "train_seconds": round(train.seconds, 1),
        "sparsity": {
            "target": plan.target_sparsity,
            "start": task.start_sparsity,
            # the target applies to the weights the recipe pruned (its policy: selectors)
            "overall": (pruned or everything)["overall"],
            "policy": train.pruning_policy or None,
            "pruned_layers": pruned["overall"] if pruned else None,
            "pruned_parameters": pruned["prunable_parameters"] if pruned else 0,
            "all_prunable_weights": everything["overall"],
            "per_layer": everything["per_layer"],
        },
        "parameters": sum(p.numel() for p in task.model.parameters()),
        "prunable_parameters": everything["prunable_parameters"],
    }
    if dense is not None:  # the accuracy cost, measured inside the run
        out["dense_teacher"] = {"task_metrics": _rounded(dense.metrics), "epochs": dense.epochs,
                                "train_seconds": round(dense.seconds, 1),
                                "distilled_from": dense.used}
        out["train_seconds_total"] = round(train.seconds + dense.seconds, 1)
    out["training_cost"] = cost_section(train.cost, dense.cost if dense is not None else None)
    return out


def _export_section(export: ExportResult) -> dict[str, Any]:
    # ``format`` / ``shipping``: ShippedExportResult (export/deployment.py) adds them
    shipping = getattr(export, "shipping", None) or {}
    return {
        "format": getattr(export, "format", "int8" if export.quantized else "fp32"),
        "fallback_reason": shipping.get("fallback_reason"),
        "candidates": shipping.get("candidates", []),
        **({"chosen_by": shipping["chosen_by"]} if "chosen_by" in shipping else {}),
        "quantized": export.quantized,
        "integer_kernels": export.integer_kernels,
        "quantize_nodes": export.quantize_nodes,
        "agreement_with_pytorch": export.fidelity.to_dict(),
    }


def build_report(plan: Plan, task: Task, train: TrainResult, export: ExportResult,
                 dense: TrainResult | None = None) -> dict[str, Any]:
    """``metrics.yaml`` of a complete run: the task metrics, sparsity, the export's fidelity,
    sizes and the latency of the result next to the dense FP32 baseline."""
    from sparsify.export.deployment import gzip_size
    from sparsify.export.inspect import float_ops_on_dequantized_inputs

    onnx_path, baseline_path = export.onnx, export.baseline_onnx
    latency = measure_latencies(onnx_path, baseline_path, task.latency_inputs,
                                task.latency_lengths())
    metrics = {"status": "complete", **_base_report(plan, task, train, dense)}
    metrics["sparsity"]["onnx_initializers"] = round(export.onnx_sparsity, 4)
    metrics["size"] = {"onnx_bytes": onnx_path.stat().st_size,
                       "onnx_gzip_bytes": gzip_size(onnx_path),
                       "baseline_bytes": baseline_path.stat().st_size,
                       "baseline_gzip_bytes": gzip_size(baseline_path)}
    metrics["latency_onnxruntime_cpu"] = latency
    metrics["export"] = _export_section(export)
    warning = slow_int8_warning(latency, export.quantized,
                                lambda: float_ops_on_dequantized_inputs(onnx_path),
                                plan.use_case.family)
    if warning:  # shown once, in the summary, and kept in metrics.yaml
        metrics["warnings"] = [warning]
    return metrics


def failed_report(plan: Plan, task: Task, train: TrainResult, export: ExportResult | None,
                  error: SparsifyError, dense: TrainResult | None = None) -> dict[str, Any]:
    """``metrics.yaml`` of a run whose training finished and whose export or report failed:
    what failed and every figure there is (the fidelity figures when the export ran)."""
    metrics = {"status": "failed",
               "failure": {"stage": "export", "error": type(error).__name__,
                           "message": error.message},
               **_base_report(plan, task, train, dense)}
    if export is not None:
        metrics["sparsity"]["onnx_initializers"] = round(export.onnx_sparsity, 4)
        metrics["export"] = _export_section(export)
    return metrics


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(metrics, sort_keys=False))


_FORMAT_NAMES = {"int8": "INT8", "fp32_sparse": "FP32 (the trained sparse weights)",
                 "fp32": "FP32"}


def _shipped_text(export: Mapping[str, Any]) -> str | None:
    """The summary's line on what ``deployment/model.onnx`` is and, after a fallback, why."""
    fmt = export.get("format")
    if fmt is None:
        return None
    text = _FORMAT_NAMES.get(fmt, fmt)
    by_format = {c["format"]: c for c in export.get("candidates") or []}
    int8 = (by_format.get("int8") or {}).get("speedup_vs_dense_fp32")
    if fmt == "int8" and export.get("fallback_reason"):
        text += " although slower than dense FP32 (its FP32 fallback was refused; see " \
                "metrics.yaml export.fallback_reason)"
    elif fmt != "int8" and int8:
        where = ", ".join(f"{_speedup_text(v)} at {k.replace('_', ' ')}" for k, v in int8.items())
        text += f", not INT8: INT8 was slower than dense FP32 here ({where})"
    return text


def summary_table(metrics: dict[str, Any]) -> str:
    """A short table for the terminal (with the run's warnings after it)."""
    rows = [("task metrics", ", ".join(f"{k} {v:.4f}" for k, v in metrics["task_metrics"].items()
                                      if k != "sparsity"))]
    teacher = metrics.get("dense_teacher")
    if teacher:
        shared = [k for k in metrics["task_metrics"] if k in teacher["task_metrics"]
                  and k not in ("sparsity", "loss")]
        if shared:  # the metric that picks the best checkpoint (F1 for NER, not precision)
            key = metrics.get("eval_metric") if metrics.get("eval_metric") in shared \
                else shared[0]
            before, after = teacher["task_metrics"][key], metrics["task_metrics"][key]
            scale = 1.0 if key in ("exact_match",) or before > 1.0 else 100.0
            rows.append(("dense fine-tune", f"{key} {before:.4f} (teacher, {teacher['epochs']} "
                                            f"epochs) -> {after:.4f} final: "
                                            f"{(after - before) * scale:+.2f} points"))
    shipped = _shipped_text(metrics.get("export", {}))
    if shipped:
        rows.append(("shipped", shipped))
    fid = metrics.get("export", {}).get("agreement_with_pytorch")
    if fid:
        rows.append(("export fidelity", f"{fid['metric']} {fid['onnxruntime']:.4f} (ONNX Runtime) "
                                        f"vs {fid['pytorch']:.4f} (PyTorch) on {fid['examples']} "
                                        "validation examples"))
    sp = metrics["sparsity"]
    if sp.get("pruned_layers") is not None:
        policy = ", ".join(sp.get("policy") or [])
        rows.append(("sparsity", f"{sp['pruned_layers']:.1%} of the pruned layers ({policy}; "
                                 f"target {sp['target']:.0%}), {sp['all_prunable_weights']:.1%} "
                                 f"of all prunable weights (start {sp['start']:.1%})"))
    else:
        rows.append(("sparsity", f"{sp['overall']:.1%} of prunable weights (target "
                                 f"{sp['target']:.0%}, start {sp['start']:.1%})"))
    size = metrics["size"]
    rows.append(("ONNX size", f"{size['onnx_bytes'] / 1e6:.2f} MB, gzip "
                              f"{size['onnx_gzip_bytes'] / 1e6:.2f} MB (dense FP32 gzip "
                              f"{size['baseline_gzip_bytes'] / 1e6:.2f} MB)"))
    for key, lat in metrics["latency_onnxruntime_cpu"].items():
        rows.append((f"latency {_where(key, lat)}",
                     f"{lat['model_ms']:.2f} ms vs dense FP32 {lat['dense_fp32_baseline_ms']:.2f} "
                     f"ms: {_speedup_text(lat)} speedup"))
    if metrics.get("training_cost", {}).get("phases"):
        rows.append(("training time", cost_text(metrics["training_cost"])))
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
    for warning in metrics.get("warnings", []):
        table += f"\n  Warning: {warning}"
    return table
