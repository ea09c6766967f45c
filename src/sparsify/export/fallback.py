"""Never ship a model slower than its dense FP32 baseline.

After the INT8 model is written, :func:`ship_not_slower` times it against the dense FP32
baseline (the interleaved measurement of :func:`~sparsify.export.inspect.measure_interleaved`,
short) at every batch size the report times. The INT8 model is *slower* when the upper quartile
of its paired speedups lies below 1.0 at some batch size, or its median does where the timing is
long enough to trust (:func:`is_slower`, the rule of the report's warning). A slower INT8
model is replaced by the same trained weights exported in FP32
(fake quantization off: :func:`~sparsify.quantization.fake_quant.fake_quant_bypassed`; the
pruned zeros stay), when that is not slower and passes the fidelity rule; the INT8 file is kept
beside the baseline for inspection. What shipped and why is returned as :class:`Shipping`.

Leaving only ONNX Runtime's float islands (hard-swish, squeeze-excite) in float with their
Quantize/DequantizeLinear removed was measured on MobileNetV3 and gained nothing over the FP32
fallback (docs/INT8_EXPORT.md), so it is not among the candidates.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsify.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from sparsify.trainers.base import Fidelity

logger = logging.getLogger(__name__)

#: The batch sizes the report times (``report.measure_latencies``) and the check here uses.
TIMED_BATCH_SIZES: tuple[int, ...] = (1, 32)
#: The check's repetitions: 10, and 10 more at a time (up to 40) while the spread straddles 1.0
#: (:func:`speed_check`); the report times the shipped model again with 20.
CHECK_WARMUP, CHECK_RUNS, CHECK_MAX_RUNS = 2, 10, 40

#: ``export.format`` values: the QAT model in INT8; the QAT model's weights in FP32 because
#: INT8 was slower; a run without QAT (its own FP32 model, nothing to fall back from).
INT8, FP32_SPARSE, FP32 = "int8", "fp32_sparse", "fp32"

#: ``SPARSIFY_EXPORT_FORMAT=int8`` ships the INT8 model without the speed check: for a
#: deployment CPU unlike the one the run is on (one with VNNI / AVX-512 integer kernels), and
#: for tests of the INT8 graph itself. Unset or ``auto``: the check decides.
FORMAT_ENV = "SPARSIFY_EXPORT_FORMAT"

#: ``(path, format) -> Fidelity``: the fidelity rule's figures of one ONNX file.
Judge = Callable[[Path, str], "Fidelity"]


#: A timed entry whose dense baseline takes at least this long (milliseconds, median) is
#: judged on its median too. Shorter timings are left to the spread alone: a 5 ms batch-1
#: timing of 12 tokens read a MiniLM 0.80x (0.71-1.26) that was 1.40x at 64 tokens, while
#: RegNetX-200MF's INT8 read 0.75-0.85x (medians) at batch 32 on an idle machine with a spread
#: that reached above 1.0 (docs/benchmarks.md).
MEDIAN_RULE_MIN_MS = 10.0


def is_slower(entry: Mapping[str, Any]) -> bool:
    """Slower across the spread: the upper quartile of the paired speedups lies below 1.0 (in
    at least three of four repetitions the model took longer than the baseline beside it); or,
    where the baseline's median time is at least :data:`MEDIAN_RULE_MIN_MS`, slower more often
    than not (the median speedup is below 1.0)."""
    if float(entry["speedup_p75"]) < 1.0:
        return True
    baseline_ms = entry.get("baseline_ms", entry.get("dense_fp32_baseline_ms"))
    return (baseline_ms is not None and float(baseline_ms) >= MEDIAN_RULE_MIN_MS
            and float(entry["speedup"]) < 1.0)


def speed_check(model: Path, baseline: Path,
                make_inputs: Callable[..., Mapping[str, np.ndarray]],
                lengths: Mapping[str, int] | None = None,
                batch_sizes: tuple[int, ...] = TIMED_BATCH_SIZES, runs: int = CHECK_RUNS,
                warmup: int = CHECK_WARMUP, max_runs: int = CHECK_MAX_RUNS
                ) -> dict[str, dict[str, float]]:
    """``{"batch_N": {"speedup", "speedup_p25", "speedup_p75", "runs"}}``: the paired speedups
    of ``model`` over ``baseline``, the two timed in turn in each repetition.

    ``lengths`` (text: ``{"max_seq_length": 128, "data_p95": 41}``, ``make_inputs`` then takes
    ``length=``) are timed as the report times them: the first length's entries are
    ``batch_N``, another's ``batch_N_<name>``. ``runs`` repetitions per entry, then ``runs``
    more while its interquartile range straddles 1.0 (up to ``max_runs``): a clear answer costs
    little, and a load that comes and goes gets more repetitions before the rule judges.
    """
    from functools import partial

    from sparsify.export.inspect import measure_interleaved, paired_speedups, quartiles

    cases = {"": make_inputs} if not lengths else {
        (f"_{name}" if i else ""): partial(make_inputs, length=length)
        for i, (name, length) in enumerate(lengths.items())}
    out = {}
    for suffix, inputs in cases.items():
        ratios: dict[int, list[float]] = {int(b): [] for b in batch_sizes}
        baseline_ms: dict[int, list[float]] = {int(b): [] for b in batch_sizes}
        pending = list(ratios)
        while pending:
            times = measure_interleaved({"model": model, "baseline": baseline}, inputs,
                                        pending, warmup=warmup, runs=runs)
            for batch, by_name in times.items():
                ratios[batch] += paired_speedups(by_name["model"], by_name["baseline"])
                baseline_ms[batch] += list(by_name["baseline"])
            pending = [b for b in pending if len(ratios[b]) + runs <= max_runs
                       and quartiles(ratios[b])[0] < 1.0 <= quartiles(ratios[b])[2]]
        for batch, values in ratios.items():
            p25, median, p75 = quartiles(values)
            out[f"batch_{batch}{suffix}"] = {"speedup": round(median, 3),
                                             "speedup_p25": round(p25, 3),
                                             "speedup_p75": round(p75, 3), "runs": len(values),
                                             "baseline_ms": round(
                                                 quartiles(baseline_ms[batch])[1], 3)}
    return out


def _speed_text(speed: Mapping[str, Mapping[str, float]]) -> str:
    return ", ".join(f"{v['speedup']:.2f}x ({v['speedup_p25']:.2f}-{v['speedup_p75']:.2f}) at "
                     f"{k.replace('_', ' ')}" for k, v in speed.items())


@dataclass
class Candidate:
    """One export that was measured: its file, speed, fidelity and why it was refused."""

    format: str
    path: Path
    quantized: bool
    speed: dict[str, dict[str, float]] | None = None
    fidelity: Fidelity | None = None
    refused: str | None = None

    @property
    def slower(self) -> bool:
        return self.speed is not None and any(is_slower(v) for v in self.speed.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "speedup_vs_dense_fp32": self.speed,
                               "slower": self.slower}
        if self.fidelity is not None:
            out["fidelity_ok"] = bool(self.fidelity.ok)
        if self.refused:
            out["refused"] = self.refused
        return out


@dataclass
class Shipping:
    """What the deployment holds: its format, file, fidelity, and why (``reason`` is set when
    it is not the trained model's own format)."""

    format: str
    quantized: bool
    path: Path
    fidelity: Fidelity
    reason: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    #: chosen by ``SPARSIFY_EXPORT_FORMAT``, not by the speed check
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {"format": self.format, "fallback_reason": self.reason,
               "candidates": [c.to_dict() for c in self.candidates]}
        if self.forced:
            out["chosen_by"] = f"{FORMAT_ENV}={self.format} (speed check skipped)"
        return out


def ship_not_slower(model_path: Path, baseline_path: Path, *, quantized: bool,
                    make_inputs: Callable[..., Mapping[str, np.ndarray]], judge: Judge,
                    export_fp32: Callable[[Path], Path], fp32_tolerance: float,
                    keep_dir: Path | None = None,
                    lengths: Mapping[str, int] | None = None) -> Shipping:
    """Choose what the deployment ships; ``model_path`` holds it afterwards.

    Args:
        model_path: the exported model (INT8 when ``quantized``) in the deployment folder.
        baseline_path: the dense FP32 baseline it is timed against.
        quantized: whether ``model_path`` is the INT8 export of a QAT model. Without QAT the
            model ships as it is (format ``fp32``) and nothing is timed.
        make_inputs: ``batch -> ONNX Runtime inputs`` for the timing (with ``lengths``:
            ``(batch, length=...) -> inputs``).
        judge: the fidelity rule's figures of a file (its format says which PyTorch model to
            compare with: the QAT model, or for ``fp32_sparse`` its float form).
        export_fp32: writes the trained weights as an FP32 ONNX file (fake quantization off)
            to the path given and returns it.
        fp32_tolerance: the largest output difference an FP32 file may have from PyTorch.
        keep_dir: where an INT8 model that is not shipped is kept (``model_int8.onnx``) and the
            FP32 candidate is built; default: the baseline's folder.
        lengths: the sequence lengths the report times (text), as for :func:`speed_check`.

    Returns:
        The :class:`Shipping`. A candidate that fails the fidelity rule is never shipped;
        when no candidate is both faithful and not slower, the INT8 model ships (the report's
        warning then says it is slower) unless the faithful FP32 one was faster than it.
    """
    if not quantized:
        return Shipping(FP32, False, model_path, judge(model_path, FP32))
    choice = os.environ.get(FORMAT_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", INT8):
        raise ExportError(f"{FORMAT_ENV}={os.environ[FORMAT_ENV]!r} is not a valid export "
                          f"format; valid: auto (the default), int8.",
                          hint=f"Unset {FORMAT_ENV} to let the export's speed check decide.")
    if choice == INT8:
        logger.info("%s=int8: the INT8 model ships without the speed check.", FORMAT_ENV)
        return Shipping(INT8, True, model_path, judge(model_path, INT8), None,
                        [Candidate(INT8, model_path, True)], forced=True)
    int8 = Candidate(INT8, model_path, True)
    int8.speed = speed_check(model_path, baseline_path, make_inputs, lengths=lengths)
    if not int8.slower:
        logger.info("Speed check: the INT8 model is not slower than the dense FP32 baseline "
                    "(%s); it ships.", _speed_text(int8.speed))
        int8.fidelity = judge(model_path, INT8)
        return Shipping(INT8, True, model_path, int8.fidelity, None, [int8])

    keep_dir = Path(keep_dir or baseline_path.parent)
    keep_dir.mkdir(parents=True, exist_ok=True)
    logger.info("The INT8 model is slower than the dense FP32 baseline (%s): trying the trained "
                "weights in FP32.", _speed_text(int8.speed))
    fp32 = Candidate(FP32_SPARSE, keep_dir / "model_fp32_sparse.onnx", False)
    export_fp32(fp32.path)
    fp32.fidelity = judge(fp32.path, FP32_SPARSE)
    drift = float(fp32.fidelity.agreement.get("max_rel_diff", 0.0))
    if drift > fp32_tolerance:
        fp32.refused = (f"differs from the PyTorch model by {drift:.2e} of the output range "
                        f"(an FP32 export may differ by {fp32_tolerance})")
    elif not fp32.fidelity.ok:
        fp32.refused = (f"{fp32.fidelity.metric} {fp32.fidelity.onnxruntime:.4f} vs the trained "
                        f"model's {fp32.fidelity.pytorch:.4f}: outside the fidelity rule")
    else:
        fp32.speed = speed_check(fp32.path, baseline_path, make_inputs, lengths=lengths)
    candidates = [int8, fp32]
    ship_fp32 = fp32.refused is None and (not fp32.slower or _better(fp32, int8))
    if not ship_fp32:
        fp32.path.unlink(missing_ok=True)
        int8.fidelity = judge(model_path, INT8)
        why = fp32.refused or f"it was not faster ({_speed_text(fp32.speed or {})})"
        logger.warning("The INT8 model is slower than dense FP32 and still ships: its FP32 "
                       "form was refused: %s.", why)
        return Shipping(INT8, True, model_path, int8.fidelity,
                        f"INT8 is slower than dense FP32 ({_speed_text(int8.speed)}); the FP32 "
                        f"fallback was refused: {why}", candidates)
    kept = keep_dir / "model_int8.onnx"
    os.replace(model_path, kept)
    shutil.move(str(fp32.path), str(model_path))
    int8.path, fp32.path = kept, model_path
    reason = (f"INT8 was slower than the dense FP32 baseline on this machine "
              f"({_speed_text(int8.speed)}; ONNX Runtime, timed in turn); the trained (sparse) "
              f"weights ship in FP32 ({_speed_text(fp32.speed or {})}). The INT8 model is kept "
              f"as {kept.parent.name}/{kept.name}.")
    logger.info("Shipping FP32: %s", reason)
    return Shipping(FP32_SPARSE, False, model_path, fp32.fidelity, reason, candidates)


def _better(a: Candidate, b: Candidate) -> bool:
    """``a``'s slowest median speedup is above ``b``'s."""
    return min(v["speedup"] for v in (a.speed or {}).values()) > \
        min(v["speedup"] for v in (b.speed or {}).values())
