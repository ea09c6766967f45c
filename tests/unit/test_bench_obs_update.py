"""bench/bench_obs_update.py on a tiny CNN: it times real gradients into a Fisher and a real
global OBS update that reaches the asked sparsity, and reports them per block size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_obs_update")


def test_measure_prunes_to_the_target_and_reports_each_block(tmp_path):
    spec = sys.modules["bench_training_cost"].tiny_spec()
    result = bench.measure(spec, [8, 4], grads=2, steps=2, sparsity_from=0.5, sparsity_to=0.7)
    assert result["weights"] == 8 * 16 * 9 + 16 * 16 * 9  # conv1 + conv2: not the stem or fc
    assert set(result["blocks"]) == {8, 4}
    for block in result["blocks"].values():
        assert block["sparsity"] == pytest.approx(0.7, abs=0.01)
        assert block["add_s"] > 0 and block["update_s"] > 0
    text = bench.table([result], 2, 0.5, 0.7)
    assert text.count("| tiny CNN") == 2 and "from 0.50 to 0.70" in text
    out = tmp_path / "t.md"
    assert bench.main(["--models", "tiny", "--blocks", "4", "--grads", "1", "--steps", "1",
                       "--results", str(out)]) == 0
    assert "| tiny CNN" in out.read_text()
