"""The training cost in every run: optimizer steps and seconds per phase of the recipe, kept
across a resume, and the process's peak memory."""

from __future__ import annotations

import torch
from test_resume import RECIPE
from tiny_models import TinyResNet

from sparsify.modifiers.cost import TrainingCost, peak_memory
from sparsify.modifiers.lifecycle import ModifierLifecycle
from sparsify.recipe.parser import parse_recipe


def _train(lifecycle, model, optimizer, epochs, steps, first_epoch=0, pause_after=None,
           pause_at=None):
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
        if pause_after == epoch:
            pause_at()  # evaluation between epochs: not a step's time


def test_steps_go_to_the_phase_they_train_under(monkeypatch):
    from sparsify.modifiers import cost as cost_module

    clock = [0.0]

    def perf_counter():  # every reading 10 ms later: each step takes 10 ms
        clock[0] += 0.01
        return clock[0]

    def evaluation():  # a minute between two epochs
        clock[0] += 60.0

    monkeypatch.setattr(cost_module.time, "perf_counter", perf_counter)
    # 5 epochs of 4 steps: gradual pruning over epochs 0-2, recovery in 2, QAT from 3
    model = TinyResNet(2)
    lifecycle = ModifierLifecycle(parse_recipe(RECIPE), model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    lifecycle.initialize(optimizer, 4)
    _train(lifecycle, model, optimizer, 5, 4, pause_after=1, pause_at=evaluation)
    cost = lifecycle.cost.report()
    assert list(cost) == ["pruning", "recovery", "qat"]
    assert {k: v["steps"] for k, v in cost.items()} == {"pruning": 8, "recovery": 4, "qat": 8}
    # the minute after epoch 1 is counted nowhere
    assert cost["pruning"] == {"steps": 8, "seconds": 0.08, "mean_step_ms": 10.0}
    assert cost["recovery"] == {"steps": 4, "seconds": 0.04, "mean_step_ms": 10.0}


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


def test_the_report_section_names_the_teacher_and_sums_the_phases():
    from sparsify.modifiers.cost import cost_section, cost_text

    main = {"pruning": {"steps": 8, "seconds": 4.0, "mean_step_ms": 500.0},
            "qat": {"steps": 2, "seconds": 3.0, "mean_step_ms": 1500.0}}
    teacher = {"fine-tune": {"steps": 10, "seconds": 2.0, "mean_step_ms": 200.0}}
    section = cost_section(main, teacher)
    assert list(section["phases"]) == ["teacher", "pruning", "qat"]
    assert section["phases"]["teacher"] == {"steps": 10, "seconds": 2.0, "mean_step_ms": 200.0}
    assert section["step_seconds"] == 9.0 and section["peak_rss_mb"] > 0
    text = cost_text(section)
    assert text.startswith("teacher 2 s (200 ms/step), pruning 4 s (500 ms/step), qat 3 s")
    assert "peak RSS" in text
    assert list(cost_section(main)["phases"]) == ["pruning", "qat"]
