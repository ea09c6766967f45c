"""The run's summary: the dense fine-tune compared by the run's own metric, the training cost
row, and the latency at each timed sequence length."""

from __future__ import annotations

from sparsify.modifiers.cost import cost_section
from sparsify.report import summary_table


def _metrics():
    latency = {"model_ms": 2.0, "dense_fp32_baseline_ms": 3.0, "speedup": 1.5,
               "speedup_p25": 1.4, "speedup_p75": 1.6}
    return {
        "task_metrics": {"precision": 0.55, "recall": 0.5, "f1": 0.52, "sparsity": 0.78},
        "eval_metric": "f1",
        "dense_teacher": {"task_metrics": {"precision": 0.6, "recall": 0.58, "f1": 0.59},
                          "epochs": 7},
        "sparsity": {"overall": 0.78, "target": 0.78, "start": 0.0},
        "size": {"onnx_bytes": 2e6, "onnx_gzip_bytes": 1e6, "baseline_gzip_bytes": 8e6},
        "latency_onnxruntime_cpu": {
            "batch_1": {**latency, "sequence_length": 128},
            "batch_1_data_p95": {**latency, "sequence_length": 49}},
        "training_cost": cost_section(
            {"pruning": {"steps": 10, "seconds": 5.0, "mean_step_ms": 500.0}},
            {"fine-tune": {"steps": 7, "seconds": 2.1, "mean_step_ms": 300.0}}),
    }


def test_the_dense_fine_tune_row_compares_the_runs_own_metric():
    table = summary_table(_metrics())
    assert "f1 0.5900 (teacher, 7 epochs) -> 0.5200 final: -7.00 points" in table
    assert "precision 0.6000 (teacher" not in table


def test_training_time_and_both_sequence_lengths_are_shown():
    table = summary_table(_metrics())
    assert "training time" in table
    assert "teacher 2 s (300 ms/step), pruning 5 s (500 ms/step)" in table
    assert "latency batch 1 (128 tokens)" in table
    assert "latency batch 1 data p95 (49 tokens)" in table
