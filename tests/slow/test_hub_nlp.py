"""Question answering and NER on their Hub datasets (``squad``, ``conll2003``) with a real
pretrained encoder, dense and at level 0.5, through the real command: the only evidence for QA
(no QA set or QA checkpoint can be installed from a package registry). Needs the Hugging Face
Hub: skipped offline. Run with ``pytest -m slow tests/slow/test_hub_nlp.py``; about an hour
on CPU (subsets below)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "sparsify.run")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _online():
    if not _hub_reachable():
        pytest.skip("the Hugging Face Hub cannot be reached (these tests download squad / "
                    "conll2003 and the model)")


@pytest.mark.parametrize("use_case, data, metric, floor, kwargs", [
    ("qa", "squad", "f1", 30.0, {"max_train_samples": 8000, "max_eval_samples": 1000,
                                 "max_seq_length": 256}),
    ("ner", "conll2003", "f1", 0.6, {"max_train_samples": 6000, "max_eval_samples": 1000}),
])
@pytest.mark.parametrize("level", ["0", "0.5"])
def test_hub_dataset_through_the_real_command(tmp_path, use_case, data, metric, floor, kwargs,
                                              level):
    work = tmp_path / "runs"
    out = subprocess.run(
        [CLI, "sparse-transfer", "--use-case", use_case, "--data", data, "--model", MODEL,
         "--optim-level", level, "--recipe-args", json.dumps({"num_epochs": 3}),
         "--train-kwargs", json.dumps(kwargs), "--working-dir", str(work)],
        capture_output=True, text=True, timeout=3 * 3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    (run,) = work.iterdir()
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metrics["task_metrics"][metric] >= floor
    fidelity = metrics["export"]["agreement_with_pytorch"]
    assert fidelity["gap_points"] <= fidelity["tolerance_points"]
    if level == "0.5":
        assert metrics["sparsity"]["pruned_layers"] >= 0.77
        assert metrics["export"]["quantized"]
