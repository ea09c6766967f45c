"""The real CLI end to end for the NLP use cases: a tiny BERT built from a config, a tokenizer
built here, generated data with exact labels, tags and answer spans."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from sparsify.data.synthetic_text import (
    entity_rows, make_tiny_bert, question_rows, sentiment_rows, topic_rows, write_csv,
    write_jsonl,
)
from sparsify.export.inspect import onnx_weight_sparsity, run_onnx

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "sparsify.run")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlp")
    make_tiny_bert(root / "bert", hidden=64, intermediate=128)
    write_csv(root / "reviews.csv", sentiment_rows(240))
    write_csv(root / "topics" / "train.csv", topic_rows(180))
    write_csv(root / "topics" / "dev.csv", topic_rows(60, seed=1))
    write_jsonl(root / "ner" / "train.jsonl", entity_rows(200))
    write_jsonl(root / "ner" / "validation.jsonl", entity_rows(60, seed=1))
    write_jsonl(root / "qa" / "train.jsonl", question_rows(240))
    write_jsonl(root / "qa" / "val.jsonl", question_rows(200, seed=1))
    return root


def run_cli(workspace, use_case, data, *extra, level="0.5", epochs=8):
    work = workspace / f"runs_{use_case}_{level}"
    cmd = [CLI, "sparse-transfer", "--use-case", use_case, "--data", str(workspace / data),
           "--model", str(workspace / "bert"), "--optim-level", level,
           "--recipe-args", json.dumps({"num_epochs": epochs, "init_lr": 0.003}),
           "--working-dir", str(work), *extra]
    # These runs check the INT8 graph itself: a tiny BERT's INT8 model is slower than its dense
    # FP32 export on CPU (its float parts dominate), so the export would ship FP32 without this
    # (that fallback is tested in tests/unit/test_export_fallback.py).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "SPARSIFY_EXPORT_FORMAT": "int8"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    runs = sorted(work.glob("sparse_transfer_*"))
    assert len(runs) == 1
    return runs[0], out


def check_run(run, metric, quantized=True):
    for name in ("plan.yaml", "recipe.yaml", "metrics.yaml", "run.log",
                 "training_artifacts/best/model.safetensors",
                 "training_artifacts/last/recipe.yaml", "training_artifacts/dense_baseline.onnx",
                 "deployment/model.onnx", "deployment/config.json", "deployment/README.md",
                 "deployment/tokenizer.json", "deployment/sample_input.npz",
                 "deployment/sample_output.npz"):
        assert (run / name).is_file(), name
    assert list((run / "logs").glob("events.out.tfevents.*")), "no TensorBoard events"
    model_path = run / "deployment" / "model.onnx"
    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto)
    # dynamic batch and sequence axes on every input
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, inp.name
    sample_in = dict(np.load(run / "deployment/sample_input.npz"))
    sample_out = list(np.load(run / "deployment/sample_output.npz").values())
    for got, want in zip(run_onnx(model_path, sample_in), sample_out):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    assert metric in metrics["task_metrics"]
    export = metrics["export"]
    agreement = export["agreement_with_pytorch"]
    assert agreement["metric"] and agreement["gap_points"] <= 0.5
    if quantized:
        assert export["quantized"] and export["integer_kernels"] > 0
        target = metrics["sparsity"]["target"]
        assert metrics["sparsity"]["overall"] >= target - 0.01
        # the encoder's linear layers are pruned (__COMPUTE_LAYERS__); pooler and head stay dense
        per = onnx_weight_sparsity(model_path)["per_initializer"]
        encoder = [v for k, v in per.items() if ".layer." in k]
        heads = [v for k, v in per.items() if "classifier" in k or "qa_outputs" in k
                 or "pooler" in k]
        assert encoder and min(encoder) >= target - 0.01, per
        assert heads and max(heads) < 0.05, per
        assert metrics["sparsity"]["pruned_layers"] >= target - 0.01
        assert metrics["sparsity"]["all_prunable_weights"] < metrics["sparsity"]["pruned_layers"]
        assert metrics["sparsity"]["policy"] == ["__COMPUTE_LAYERS__"]
    for key in ("batch_1", "batch_32"):
        assert metrics["latency_onnxruntime_cpu"][key]["speedup"] > 0
    return metrics


def run_readme_example(deploy: Path) -> str:
    """Run the Python block of the deployment README in the deployment folder."""
    text = (deploy / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], cwd=deploy, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_sentiment_from_one_csv(workspace):
    run, out = run_cli(workspace, "sentiment_analysis", "reviews.csv")
    metrics = check_run(run, "accuracy")
    assert metrics["task_metrics"]["accuracy"] >= 0.9, metrics["task_metrics"]
    split = json.loads((run / "data_split.json").read_text())
    assert split["num_train"] + split["num_val"] == 240 and len(split["val"]) == 24
    config = json.loads((run / "deployment/config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}  # sorted string labels
    assert run_readme_example(run / "deployment") in ("positive", "negative")
    assert "task metrics" in out.stdout and "speedup" in out.stdout


def test_text_pair_classification_from_folder(workspace):
    run, _ = run_cli(workspace, "text_classification", "topics", "--teacher", "self")
    check_run(run, "accuracy")
    log = (run / "run.log").read_text()
    assert "DistillationModifier disabled" not in log  # the frozen copy taught through the loss
    config = json.loads((run / "deployment/config.json").read_text())
    assert list(config["id2label"].values()) == ["food", "sports", "tech"]
    assert not (run / "data_split.json").exists()  # dev.csv was the validation file


def test_named_entity_recognition(workspace):
    run, _ = run_cli(workspace, "ner", "ner")
    metrics = check_run(run, "f1")
    for key in ("precision", "recall", "f1", "accuracy"):
        assert 0 <= metrics["task_metrics"][key] <= 1
    config = json.loads((run / "deployment/config.json").read_text())
    assert config["id2label"]["0"] == "O"
    printed = run_readme_example(run / "deployment")
    assert "John" in printed


def test_question_answering(workspace):
    run, _ = run_cli(workspace, "question_answering", "qa", "--train-kwargs",
                     '{"max_seq_length": 48, "doc_stride": 16}')
    metrics = check_run(run, "f1")
    assert 0 <= metrics["task_metrics"]["exact_match"] <= 100
    config = json.loads((run / "deployment/config.json").read_text())
    assert config["output_names"] == ["start_logits", "end_logits"]
    run_readme_example(run / "deployment")


def test_dense_level_exports_fp32(workspace):
    run, _ = run_cli(workspace, "sentiment", "reviews.csv", level="0.0", epochs=3)
    metrics = check_run(run, "accuracy", quantized=False)
    assert not metrics["export"]["quantized"]
    assert metrics["export"]["agreement_with_pytorch"]["max_rel_diff"] <= 1e-4
