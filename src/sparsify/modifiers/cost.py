"""What training costs, per phase: optimizer steps, wall seconds and the mean step time, and
the process's peak memory.

The lifecycle keeps one :class:`TrainingCost` (every trainer gets it): each optimizer step's
time, from the end of the step before it (or the start of its epoch, so evaluation between
epochs is not counted) to its own end, goes to the phase the recipe is in when it ends:

* ``qat`` once quantization-aware training has started;
* ``pruning`` while a gradual pruning modifier moves its masks;
* ``recovery`` after pruning ended, before QAT;
* ``fine-tune`` otherwise (a dense fine-tune, constant masks; the dense teacher's phase is
  reported as ``teacher`` by the pipeline).

It survives a resume (its state is part of the lifecycle's). Light: no torch.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

#: the phases, in the order a shipped recipe goes through them
PHASES = ("teacher", "fine-tune", "pruning", "recovery", "qat")


class TrainingCost:
    """Per-phase optimizer steps and seconds of one training."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._mark: float | None = None

    def start(self) -> None:
        """An epoch starts: the next step is timed from here."""
        self._mark = time.perf_counter()

    def step(self, phase: str) -> None:
        """An optimizer step ended in ``phase``."""
        now = time.perf_counter()
        if self._mark is not None:
            self.steps[phase] = self.steps.get(phase, 0) + 1
            self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._mark
        self._mark = now

    def state(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "seconds": dict(self.seconds)}

    def load_state(self, saved: dict[str, Any]) -> None:
        self.steps = {k: int(v) for k, v in saved.get("steps", {}).items()}
        self.seconds = {k: float(v) for k, v in saved.get("seconds", {}).items()}

    def report(self, rename: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
        """``{phase: {steps, seconds, mean_step_ms}}`` in phase order (``rename`` maps a
        phase to the name reported, e.g. the teacher's fine-tune to ``teacher``)."""
        rename = rename or {}
        out: dict[str, dict[str, float]] = {}
        for phase, steps in self.steps.items():
            name = rename.get(phase, phase)
            entry = out.setdefault(name, {"steps": 0, "seconds": 0.0})
            entry["steps"] += steps
            entry["seconds"] += self.seconds.get(phase, 0.0)
        for entry in out.values():
            entry["seconds"] = round(entry["seconds"], 2)
            entry["mean_step_ms"] = round(1000 * entry["seconds"] / max(entry["steps"], 1), 1)
        order = {p: i for i, p in enumerate(PHASES)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def peak_memory() -> dict[str, float]:
    """The process's peak resident memory (MB), and CUDA's peak allocated memory when a CUDA
    device was used."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def cost_section(main: dict[str, dict[str, float]],
                 teacher: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """``metrics.yaml``'s ``training_cost``: the phases of the dense teacher's fine-tune
    (reported as ``teacher``) and of the training, and the process's peak memory."""
    phases: dict[str, dict[str, float]] = {}
    for name, entry in (teacher or {}).items():
        merged = phases.setdefault("teacher", {"steps": 0, "seconds": 0.0})
        merged["steps"] += entry["steps"]
        merged["seconds"] = round(merged["seconds"] + entry["seconds"], 2)
    if "teacher" in phases:
        phases["teacher"]["mean_step_ms"] = round(
            1000 * phases["teacher"]["seconds"] / max(phases["teacher"]["steps"], 1), 1)
    phases.update(main)
    total = sum(e["seconds"] for e in phases.values())
    return {"phases": phases, "step_seconds": round(total, 2), **peak_memory()}


def cost_text(section: dict[str, Any]) -> str:
    """One summary row: ``teacher 41 s (12 ms/step), pruning 80 s (15 ms/step), ...; peak
    RSS 1.9 GB``."""
    parts = [f"{name} {entry['seconds']:.0f} s ({entry['mean_step_ms']:.0f} ms/step)"
             for name, entry in section.get("phases", {}).items()]
    memory = f"peak RSS {section['peak_rss_mb'] / 1024:.1f} GB" if "peak_rss_mb" in section \
        else ""
    if "cuda_peak_allocated_mb" in section:
        memory += f", CUDA {section['cuda_peak_allocated_mb'] / 1024:.1f} GB"
    return "; ".join(p for p in (", ".join(parts), memory) if p)
