"""Shared by the real-data benchmarks (``bench_yolo_trees.py``, ``bench_nlp_ner.py``).

Runs ``sparsify.run sparse-transfer`` once per optim level in a subprocess, reads each run's
``metrics.yaml`` and formats one table row per level: the task metrics (PyTorch, from the run),
the dense teacher's metric when the run had one, sparsity, the export's agreement with PyTorch
(``export.agreement_with_pytorch``), the gzip size, the run's own interleaved latency speedup
over the dense FP32 export at batch 1 and 32 with its interquartile range, and the wall time.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: metrics.yaml statuses of a run that ended (an interrupted one stops the benchmark)
FINISHED = ("complete", "failed")

#: the table's fixed columns after the task metrics (the slow test checks them)
COMMON_COLUMNS = ("sparsity (pruned layers)", "shipped ONNX", "ONNX vs PyTorch", "gzip MB",
                  "speedup b1 (IQR)", "speedup b32 (IQR)", "wall s")


def cpu_name() -> str:
    """``lscpu``'s model name, family and model (the CPU the figures were measured on)."""
    fields: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    return (f"{fields.get('Model name', '?')}, family {fields.get('CPU family', '?')}, "
            f"model {fields.get('Model', '?')}, {os.cpu_count()} logical CPUs")


def parse_levels(text: str) -> list[str]:
    levels = [t.strip() for t in text.split(",") if t.strip()]
    for level in levels:
        float(level)  # a clear error for a typo
    return levels


def run_level(work: Path, level: str, args: Sequence[str], env: dict[str, str] | None = None,
              reuse: bool = False) -> tuple[dict[str, Any], float, Path]:
    """One ``sparse-transfer`` run in ``work/level_<level>``; its metrics.yaml, the command's
    wall seconds (nan when a finished run was reused) and the run folder."""
    out = work / f"level_{level}"
    done = sorted(out.glob("sparse_transfer_*/metrics.yaml"))
    done = [p for p in done if yaml.safe_load(p.read_text()).get("status") in FINISHED]
    if reuse and done:
        print(f"reusing {done[-1]}", flush=True)
        return yaml.safe_load(done[-1].read_text()), float("nan"), done[-1].parent
    cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
           "--optim-level", level, "--working-dir", str(out), *args]
    print("$", " ".join(cmd), flush=True)
    started = time.monotonic()
    # a SIGTERM to this script stops the run too (it checkpoints and exits), never orphans it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    try:
        proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    seconds = time.monotonic() - started
    runs = sorted(out.glob("sparse_transfer_*"))
    if not runs or not (runs[-1] / "metrics.yaml").is_file():
        sys.exit(f"level {level}: the run wrote no metrics.yaml (exit {proc.returncode})")
    metrics = yaml.safe_load((runs[-1] / "metrics.yaml").read_text())
    if metrics.get("status") not in FINISHED:  # e.g. interrupted by a signal
        sys.exit(f"level {level}: exit {proc.returncode}, status {metrics.get('status')} "
                 f"({runs[-1]}); the benchmark stops here")
    if proc.returncode != 0:  # e.g. the export failed its fidelity rule: still report it
        print(f"level {level}: exit {proc.returncode}, status {metrics.get('status')}",
              flush=True)
    metrics["exit_code"] = proc.returncode
    return metrics, seconds, runs[-1]


def _get(m: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(m, dict) or key not in m:
            return None
        m = m[key]
    return m


def _speedup(m: dict, batch: str) -> str:
    entry = _get(m, "latency_onnxruntime_cpu", batch)
    if not entry:
        return "-"
    return f"{entry['speedup']:.2f}x ({entry['speedup_p25']:.2f}-{entry['speedup_p75']:.2f})"


def agreement_text(m: dict) -> str:
    """``0.4123 vs 0.4131 (0.08 pt, ok)``: the ONNX model's metric vs PyTorch's."""
    a = _get(m, "export", "agreement_with_pytorch")
    if not a:
        return "-"
    verdict = "ok" if a.get("within_tolerance") else "FAILED"
    return (f"{a['onnxruntime']:.4f} vs {a['pytorch']:.4f} ({a['gap_points']:.2f} pt; "
            f"rule {a['tolerance_points']:.2f} pt: {verdict})")


def table(results: dict[str, tuple[dict, float, Path]], metric_cols: Sequence[tuple[str, str]],
          teacher_metric: str) -> str:
    """One row per level. ``metric_cols``: (header, task_metrics key); ``teacher_metric``: the
    task_metrics key shown for the dense teacher."""
    head = ["level", "scheme", *(h for h, _ in metric_cols),
            f"dense teacher {teacher_metric}", *COMMON_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for level, (m, seconds, _run) in results.items():
        tm = m.get("task_metrics") or {}
        teacher = _get(m, "dense_teacher", "task_metrics", teacher_metric)
        pruned = _get(m, "sparsity", "pruned_layers")
        overall = _get(m, "sparsity", "overall")
        fmt = _get(m, "export", "format") or _get(m, "export", "shipping", "format")
        quantized = _get(m, "export", "quantized")
        shipped = fmt or ("INT8" if quantized else "FP32")
        gz = _get(m, "size", "onnx_gzip_bytes")
        wall = "reused" if seconds != seconds else f"{seconds:.0f}"
        if m.get("status") != "complete":
            wall += f" (status {m.get('status')})"
        row = [level, str(m.get("scheme", "-")),
               *(f"{tm[k]:.4f}" if k in tm else "-" for _, k in metric_cols),
               f"{teacher:.4f}" if teacher is not None else "-",
               (f"{pruned:.3f}" if pruned is not None
                else f"{overall:.3f}" if overall is not None else "-"),
               shipped, agreement_text(m), f"{gz / 1e6:.2f}" if gz else "-",
               _speedup(m, "batch_1"), _speedup(m, "batch_32"), wall]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def comparison(results: dict[str, tuple[dict, float, Path]], key: str, label: str,
               bound_points: float = 2.0) -> str:
    """Level 0.5 (or every non-dense level) against the dense run, in points of ``key``."""
    dense = next((m for lv, (m, _, _) in results.items() if float(lv) == 0.0), None)
    if dense is None or key not in (dense.get("task_metrics") or {}):
        return ""
    lines = []
    for level, (m, _, _) in results.items():
        if float(level) == 0.0 or key not in (m.get("task_metrics") or {}):
            continue
        delta = 100 * (m["task_metrics"][key] - dense["task_metrics"][key])
        met = "met" if delta >= -bound_points else "NOT met"
        lines.append(f"Level {level} vs dense: {label} {delta:+.2f} points (bound: within "
                     f"{bound_points:g} points of dense: {met}).")
    return "\n".join(lines) + ("\n" if lines else "")


def write_report(name: str, header: Sequence[str], body: str, out: Path | None) -> Path:
    text = "\n".join(header) + "\n\n" + body
    path = out or RESULTS / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(text, flush=True)
    print(f"written: {path}", flush=True)
    return path


def recipe_args(epochs: int, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({"num_epochs": epochs, **(extra or {})})
