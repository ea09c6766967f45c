"""The contract between the pipeline and a domain's task, and the values they exchange.

A *task* is one run's data and model for one domain (image classification, NLP, YOLO). The
pipeline builds it (data checks), asks it to load the model, then calls ``train``, ``export``
and ``latency_inputs`` in that order; ``restore`` puts a checkpoint's weights (with the training
structure the recipe gave them: QAT modules) back, so a finished or failed run can be exported
again without training (``sparsify.run export RUN_DIR``). Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    from torch import nn

    from sparsify.plan import ModelChoice, Plan
    from sparsify.recipe.parser import Recipe


@dataclass
class TrainResult:
    """What training produced: the final model's metrics on the validation set, the best
    epoch's, the per-epoch history and the wall time of the training stage."""

    metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_epoch: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    #: the weights the recipe's pruning modifiers held masks for, and their selectors
    pruned: list[str] = field(default_factory=list)
    pruning_policy: list[str] = field(default_factory=list)
    #: for a dense teacher's fine-tune: whether the student distilled from it
    used: bool = True
    #: optimizer steps, seconds and mean step time per training phase
    #: (:meth:`sparsify.modifiers.cost.TrainingCost.report`)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Written beside the checkpoints, so ``sparsify.run export`` can report it again."""
        from sparsify.rundir import write_text_atomic

        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainResult:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass
class Fidelity:
    """How the exported model compares with the PyTorch model on the validation set.

    The rule (the same for every domain): the exported model's task metric lies within
    ``tolerance_points`` of PyTorch's. The tolerance is 0.5 point, or one validation example
    where the set is so small that a single example weighs more. Where the metric is a count of
    right answers (top-1, accuracy), a larger gap is still accepted when the examples the two
    models answer differently split as chance would (McNemar's exact test, ``p_value`` >= 0.05):
    INT8 rounding flips near-tied predictions both ways, and on a few hundred examples a net
    two or three of them is noise, not a worse model. The output statistics (``agreement``) are
    reported, not judged.
    """

    metric: str
    pytorch: float
    onnxruntime: float
    gap_points: float
    tolerance_points: float
    examples: int
    agreement: dict[str, Any] = field(default_factory=dict)
    #: examples only PyTorch answers right / only the export answers right (counted metrics)
    only_pytorch_right: int | None = None
    only_export_right: int | None = None

    @property
    def p_value(self) -> float | None:
        """Two-sided exact McNemar test of the disagreements (``None``: not a counted metric)."""
        if self.only_pytorch_right is None or self.only_export_right is None:
            return None
        return mcnemar_p(self.only_pytorch_right, self.only_export_right)

    @property
    def ok(self) -> bool:
        if self.gap_points <= self.tolerance_points + 1e-9:
            return True
        p = self.p_value
        return p is not None and p >= 0.05

    def to_dict(self) -> dict[str, Any]:
        out = {"metric": self.metric, "pytorch": round(self.pytorch, 5),
               "onnxruntime": round(self.onnxruntime, 5), "gap_points": round(self.gap_points, 4),
               "tolerance_points": round(self.tolerance_points, 4), "examples": self.examples}
        if self.p_value is not None:
            out.update(only_pytorch_right=self.only_pytorch_right,
                       only_export_right=self.only_export_right,
                       mcnemar_p=round(self.p_value, 4))
        return {**out, "within_tolerance": self.ok, **_rounded(self.agreement)}


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    from math import comb

    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _rounded(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in values.items()}


@dataclass
class ExportResult:
    """What the export stage produced and measured (``report`` reads it by attribute)."""

    onnx: Path
    baseline_onnx: Path
    quantized: bool
    fidelity: Fidelity
    optimized_graph_ops: dict[str, int]
    integer_kernels: int
    quantize_nodes: int
    dequantize_nodes: int
    onnx_sparsity: float


@runtime_checkable
class Task(Protocol):
    """What the pipeline may call on a domain's task (see the module docstring)."""

    plan: Plan
    run_dir: Path
    #: the model being trained (``None`` until :meth:`load_model`)
    model: nn.Module
    #: a frozen copy of the starting model: the dense FP32 latency baseline
    baseline: nn.Module
    #: exact-zero fraction of the starting model's prunable weights
    start_sparsity: float
    #: whether the starting model's head was replaced for these labels (untrained)
    head_replaced: bool
    #: whether the trained model carries QAT structure (exported as INT8)
    qat: bool

    def load_model(self) -> None:
        """Load ``plan.model`` for this data (head replaced when the labels differ)."""

    def load_teacher(self, choice: ModelChoice) -> nn.Module:
        """A distillation teacher, loaded like ``--model`` for this run's labels."""

    def train(self, recipe: Recipe, teacher: nn.Module | None, phase: str = "main",
              resume: Path | None = None) -> TrainResult:
        """Fine-tune ``model`` under the recipe's lifecycle; checkpoints in the run folder
        (``phase`` ``teacher``: in ``training_artifacts/teacher/``); ``resume``: continue
        from a resumable checkpoint (:mod:`sparsify.trainers.resume`) of this phase."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """The task metrics of ``model`` on the whole validation set."""

    def restore(self, recipe: Recipe, artifacts: Path, checkpoint: Path | None = None
                ) -> dict[str, Any]:
        """Load the last checkpoint in ``artifacts`` (a run's ``training_artifacts``), or
        ``checkpoint``, into ``model`` with the structure the recipe gave it in training;
        returns the checkpoint's metadata."""

    def export(self, deploy_dir: Path, baseline_path: Path) -> ExportResult:
        """Export ``model`` (INT8 when ``qat``) and ``baseline``; measure the fidelity."""

    def latency_inputs(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """ONNX Runtime inputs of ``batch`` examples for the latency measurement (text:
        ``length`` tokens, the deployment's ``max_seq_length`` when not given)."""

    def latency_lengths(self) -> dict[str, int] | None:
        """The sequence lengths to time, by name, the deployment's first (text:
        ``{"max_seq_length": 128, "data_p95": 41}``); ``None`` where inputs have one size."""
