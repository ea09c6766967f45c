"""What the resume tests of every trainer share: a pruning + QAT schedule, a stand-in for the
flag a signal sets, and the comparison of a resumed training with the uninterrupted one."""

from __future__ import annotations

import torch

from sparsify.trainers import resume as resume_module


def schedule(epochs: int, prune_end: float, qat_start: float, init_lr: float,
             final_sparsity: float = 0.7, update_frequency: float = 0.5) -> str:
    """Gradual pruning from epoch 0 to ``prune_end``, QAT from ``qat_start`` (observers and
    BatchNorm frozen one epoch later), a linear LR from ``init_lr`` to a tenth of it."""
    return f"""
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: {epochs:.1f}
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: {epochs:.1f}
    lr_func: linear
    init_lr: {init_lr}
    final_lr: {init_lr / 10:g}
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.2
    final_sparsity: {final_sparsity}
    start_epoch: 0.0
    end_epoch: {prune_end:.1f}
    update_frequency: {update_frequency}
  - !QuantizationModifier
    start_epoch: {qat_start:.1f}
    disable_quantization_observer_epoch: {qat_start + 1:.1f}
    freeze_bn_stats_epoch: {qat_start + 1:.1f}
"""


def stop_after(monkeypatch, asks: int) -> None:
    """Stand in for a signal: the trainer's ``asks``-th check of the stop flag finds it set."""
    calls = []

    def asked() -> bool:
        calls.append(1)
        return len(calls) >= asks

    monkeypatch.setattr(resume_module, "stop_requested", asked)


def assert_same_training(result, state, expected, expected_state, where: str) -> None:
    """A resumed training ended as the uninterrupted one: every tensor equal, the same metrics,
    history, best epoch, pruned weights, and each phase's step count."""
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(state[key], value), f"{where}: {key} differs after resuming"
    assert result.metrics == expected.metrics
    assert result.history == expected.history
    assert (result.best_epoch, result.pruned) == (expected.best_epoch, expected.pruned)
    # the training cost counts every step once, across the interruption
    assert {k: v["steps"] for k, v in result.cost.items()} == {
        k: v["steps"] for k, v in expected.cost.items()}
