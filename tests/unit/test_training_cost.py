"""The training cost in every run: optimizer steps and seconds per phase of the recipe, kept
across a resume, and the process's peak memory."""

from __future__ import annotations

import time

import pytest
import torch
from test_resume import RECIPE
from tiny_models import TinyResNet

from sparsify.modifiers.cost import TrainingCost, peak_memory
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import parse_recipe


def _train(lifecycle, model, optimizer, epochs, steps, first_epoch=0, pause_at=None):
    for epoch in range(first_epoch, epochs):
        lifecycle.epoch_start()
        for _ in range(steps):
            lifecycle.batch_start()
            loss = lifecycle.loss_calculated(model(torch.randn(2, 3, 16, 16)).sum())
            loss.backward()
            lifecycle.optim_pre_step()
            optimizer.step()
            optimizer.zero_grad()
            lifecycle.optim_post_step()
            lifecycle.batch_end()
        lifecycle.epoch_end()
        if pause_at == epoch:
            time.sleep(0.3)  # evaluation between epochs: not a step's time


def test_steps_go_to_the_phase_they_train_under():
    # 5 epochs of 4 steps: gradual pruning over epochs 0-2, recovery in 2, QAT from 3
    model = TinyResNet(2)
    lifecycle = ModifierLifecycle(parse_recipe(RECIPE), model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    lifecycle.initialize(optimizer, 4)
    _train(lifecycle, model, optimizer, 5, 4, pause_at=1)
    cost = lifecycle.cost.report()
    assert list(cost) == ["pruning", "recovery", "qat"]
    assert {k: v["steps"] for k, v in cost.items()} == {"pruning": 8, "recovery": 4, "qat": 8}
    assert all(v["seconds"] > 0 for v in cost.values())
    assert cost["recovery"]["seconds"] < 0.3  # the pause after epoch 1 is counted nowhere
    assert cost["qat"]["mean_step_ms"] == pytest.approx(
        1000 * cost["qat"]["seconds"] / 8, abs=0.1)


def test_a_dense_fine_tune_is_one_phase_and_a_resume_keeps_the_count():
    recipe = parse_recipe("""
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 3.0
""")
    model = TinyResNet(2)
    first = ModifierLifecycle(recipe, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first.initialize(optimizer, 3)
    _train(first, model, optimizer, 1, 3)
    saved = first.resume_state()
    again = ModifierLifecycle(recipe, model)
    again.initialize(optimizer, 3, start_step=saved["step"])
    again.load_resume_state(saved)
    _train(again, model, optimizer, 3, 3, first_epoch=1)
    assert again.cost.report()["fine-tune"]["steps"] == 9
    assert again.cost.report(rename={"fine-tune": "teacher"}).keys() == {"teacher"}


def test_peak_memory_is_the_process_peak():
    before = peak_memory()["peak_rss_mb"]
    block = bytearray(200 * 2**20)  # touched: resident
    block[::4096] = b"x" * len(block[::4096])
    assert peak_memory()["peak_rss_mb"] >= before
    assert peak_memory()["peak_rss_mb"] >= 200
    del block


def test_the_cost_state_is_plain_data():
    cost = TrainingCost()
    cost.start()
    cost.step("qat")
    other = TrainingCost()
    other.load_state(cost.state())
    assert other.report() == cost.report()
