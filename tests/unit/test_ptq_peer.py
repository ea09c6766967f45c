"""bench/ptq_peer.py (the post-training-quantization peer of the accuracy benchmarks) on tiny
models, and the benchmark scripts' tables with the peer's column, from fake metrics.

The tiny models are trained for a few dozen steps on synthetic data with an obvious rule, so
that their predictions have margins and "PTQ agrees with FP32" means something."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import ptq_peer  # bench/ptq_peer.py

CLASSES = ("circle", "horizontal", "vertical")
GOOD = ("good", "great", "nice", "fine", "love")
BAD = ("bad", "awful", "poor", "sad", "hate")
FILLER = ("the", "a", "movie", "was", "it", "and", "this", "day", "so", "very")
MATMUL_KERNELS = {"QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QGemm",
                  "DynamicQuantizeMatMul"}


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _image(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 grey picture like Fashion-MNIST's: a bright disc, horizontal or vertical bar."""
    img = rng.uniform(0, 60, (28, 28))
    c = rng.integers(10, 18, 2)
    yy, xx = np.mgrid[:28, :28]
    if kind == 0:
        img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 25] = 230
    elif kind == 1:
        img[c[0] - 2:c[0] + 2, 4:24] = 230
    else:
        img[4:24, c[1] - 2:c[1] + 2] = 230
    return img.astype(np.uint8)


def _write_images(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_image(label, rng)).save(root / name / f"{i:03d}.png")


class TinyConvNet(nn.Module):
    """conv-bn-relu6, conv-bn-relu6 with a residual add, global pool, linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.relu6(x + self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fake level-0.0 run (deployment/model.onnx + config.json) and its ImageFolder data."""
    from sparsify.data.image_datasets import transform_config

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("image")
    data = tmp / "data"
    _write_images(data / "train", 40, seed=1)
    _write_images(data / "val", 20, seed=2)
    deploy = tmp / "run" / "deployment"
    deploy.mkdir(parents=True)
    cfg = {**transform_config(32), "class_names": list(CLASSES), "input_name": "input",
           "output_name": "logits"}
    (deploy / "config.json").write_text(json.dumps(cfg))

    train = ptq_peer.image_folder(data / "train", CLASSES)
    x = torch.from_numpy(np.stack([ptq_peer.preprocess_image(p, cfg) for p, _ in train]))
    y = torch.tensor([label for _, label in train])
    model = TinyConvNet()
    opt = torch.optim.Adam(model.parameters(), 0.02)
    for step in range(200):
        idx = torch.randperm(len(y))[:32]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.onnx.export(model, (x[:2],), str(deploy / "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                             "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return tmp / "run", data


def test_readme_preprocessing_matches_the_runs_eval_transform(tmp_path: Path) -> None:
    """The peer's images are the run's validation inputs: on a 28x28 grey PNG (the benchmark's
    Fashion-MNIST) the README recipe equals sparsify's torchvision evaluation transform."""
    from sparsify.data.image_datasets import (
        build_eval_transform,
        load_rgb_image,
        transform_config,
    )

    path = tmp_path / "x.png"
    Image.fromarray(_image(1, np.random.default_rng(0))).save(path)
    for size in (32, 64, 224):
        ours = ptq_peer.preprocess_image(path, transform_config(size))
        theirs = build_eval_transform(size)(load_rgb_image(path)).numpy()
        assert ours.shape == theirs.shape == (3, size, size)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_image_peer_quantizes_runs_and_agrees(image_run: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    run, data = image_run
    fp32 = run / "deployment" / "model.onnx"
    result = ptq_peer.image_ptq_peer(run, data, tmp_path / "ptq", calibration_rows=24)
    assert result.calibration_rows == 24 and result.calibration_batches == 1
    graph = onnx.load(str(result.model)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # ONNX Runtime runs integer kernels (not float Q/DQ): both convs and the classifier
    assert result.integer_ops.get("QLinearConv", 0) == 2 and result.integer_ops.get("QGemm") == 1
    assert result.integer_kernels == sum(result.integer_ops.values())
    # weights per output channel: the conv weights' DequantizeLinear has one scale per channel
    inits = {i.name: i for i in graph.initializer}
    conv_scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and len(inits[n.input[0]].dims) == 4]
    assert conv_scales and all(s.dims == [8] for s in conv_scales)

    cfg = ptq_peer.deployment_config(run / "deployment")
    val = ptq_peer.image_folder(data / "val", cfg["class_names"])
    dense = ptq_peer.evaluate_image_classifier(fp32, val, cfg)
    int8 = ptq_peer.evaluate_image_classifier(result.model, val, cfg)
    assert dense["examples"] == int8["examples"] == 60
    assert dense["top1"] >= 0.9  # the tiny model learnt the rule
    assert int8["top1"] >= dense["top1"] - 0.05

    sess_fp32 = ptq_peer._session(fp32)
    sess_int8 = ptq_peer._session(result.model)
    x = np.concatenate([f["input"] for f, _ in ptq_peer.image_feeds(val, cfg, 30)])
    agree = (sess_fp32.run(None, {"input": x})[0].argmax(-1)
             == sess_int8.run(None, {"input": x})[0].argmax(-1)).mean()
    assert agree >= 0.9

    # reuse: same source and settings -> the same file, not a new quantization
    again = ptq_peer.image_ptq_peer(run, data, tmp_path / "ptq", calibration_rows=24, reuse=True)
    assert again.seconds == result.seconds and again.model == result.model
    other = ptq_peer.image_ptq_peer(run, data, tmp_path / "ptq", calibration_rows=12, reuse=True)
    assert other.calibration_rows == 12


def test_calibration_uses_every_feed(tmp_path: Path) -> None:
    """The ranges come from all feeds: the first of 40 holds the only large value, and the
    input's scale still covers it (ONNX Runtime drops collected outputs whenever its
    CalibMaxIntermediateOutputs limit is reached, so the peer must not set it)."""
    torch.manual_seed(0)
    fp32 = tmp_path / "linear.onnx"
    torch.onnx.export(nn.Linear(8, 4).eval(), (torch.zeros(1, 8),), str(fp32),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}},
                      opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(-1, 1, (2, 8)).astype(np.float32)} for _ in range(40)]
    feeds[0]["x"][0, 0] = 100.0
    result = ptq_peer.quantize_static_qdq(fp32, tmp_path / "int8.onnx", lambda: iter(feeds), 80,
                                          pre_process=False)
    assert result.calibration_batches == 40
    graph = onnx.load(str(result.model)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert float(inits[q.input[1]]) * 255 >= 100.0


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def _sentence(positive: bool, rng: random.Random) -> str:
    words = rng.choices(FILLER, k=rng.randint(3, 12))
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if positive else BAD))
    return " ".join(words)


def _write_csv(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            positive = i % 2 == 0
            writer.writerow([_sentence(positive, rng), "positive" if positive else "negative"])


class TinyTextModel(nn.Module):
    """Embedding, one masked self-attention (HF's additive mask: (1 - mask) * finfo.min),
    a residual LayerNorm, masked mean pooling, an MLP head."""

    def __init__(self, vocab: int, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        mask = attention_mask.to(h.dtype)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores + (1.0 - mask[:, None, :]) * torch.finfo(h.dtype).min
        h = self.ln(h + scores.softmax(-1) @ self.v(h))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(torch.relu(self.fc(pooled)))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fake level-0.0 NLP run (deployment: model.onnx, tokenizer, config.json) and its
    train.csv / val.csv."""
    from transformers import BertTokenizer

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("text")
    data = tmp / "data"
    data.mkdir()
    _write_csv(data / "train.csv", 160, seed=1)
    _write_csv(data / "val.csv", 60, seed=2)
    deploy = tmp / "run" / "deployment"
    deploy.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *GOOD, *BAD, *FILLER]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(deploy)
    cfg = {"task": "text_classification", "input_names": ["input_ids", "attention_mask"],
           "output_names": ["logits"], "max_seq_length": 12,
           "id2label": {"0": "negative", "1": "positive"},
           "label2id": {"negative": 0, "positive": 1}}
    (deploy / "config.json").write_text(json.dumps(cfg))

    encoder = ptq_peer.TextEncoder(deploy)
    rows = ptq_peer.read_text_rows(data / "train.csv")
    model = TinyTextModel(len(words))
    opt = torch.optim.Adam(model.parameters(), 0.01)
    labels = torch.from_numpy(encoder.label_ids([y for _, y in rows]))
    for step in range(80):
        idx = sorted(random.Random(step).sample(range(len(rows)), 32))
        feed = encoder([rows[i][0] for i in idx])
        logits = model(*(torch.from_numpy(feed[k]) for k in encoder.input_names))
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sample = encoder([rows[0][0], rows[1][0]])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch",
                                                                         1: "sequence"},
            "logits": {0: "batch"}}
    torch.onnx.export(model, tuple(torch.from_numpy(sample[k]) for k in encoder.input_names),
                      str(deploy / "model.onnx"), input_names=encoder.input_names,
                      output_names=["logits"], dynamic_axes=axes, opset_version=17,
                      dynamo=False)
    return tmp / "run", data


def _mask_derived(graph: onnx.GraphProto, name: str = "attention_mask") -> set[str]:
    """Tensors computed from the attention mask alone (constants aside): the mask arithmetic
    up to where it joins the activations."""
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    derived = {name}
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in derived for i in inputs):
            derived.update(node.output)
    return derived


def _qdq_not_at_matmul(model_path: Path) -> list[str]:
    """QuantizeLinear nodes whose tensor is neither made by a MatMul/Gemm nor (through its
    DequantizeLinear) read by one."""
    graph = onnx.load(str(model_path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    dq_of = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    bad = []
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        made = producer.get(q.input[0])
        read = readers.get(dq_of.get(q.output[0], ""), [])
        if not ((made is not None and made.op_type in ("MatMul", "Gemm"))
                or {"MatMul", "Gemm"} & set(read)):
            bad.append(q.name)
    return bad


def _qdq_on_mask_path(model_path: Path) -> list[str]:
    graph = onnx.load(str(model_path)).graph
    derived = _mask_derived(graph)
    return [n.name for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in derived]


def test_text_peer_quantizes_matmul_gemm_only(text_run: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    run, data = text_run
    deploy = run / "deployment"
    result = ptq_peer.text_ptq_peer(run, data / "train.csv", tmp_path / "ptq",
                                    calibration_rows=40)
    assert result.calibration_rows == 40 and result.calibration_batches == 40  # one row a feed
    assert result.op_types == ["MatMul", "Gemm"]
    graph = onnx.load(str(result.model)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    # every Q/DQ pair sits on a MatMul/Gemm input or output; what runs in INT8 is matmuls only
    assert _qdq_not_at_matmul(result.model) == []
    assert set(result.integer_ops) <= MATMUL_KERNELS
    assert sum(result.integer_ops.get(op, 0) for op in MATMUL_KERNELS - {"QGemm"}) >= 3
    assert result.integer_ops.get("QGemm") == 2
    # no QDQ on the attention-mask arithmetic, and none reads the mask input itself
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear"
                and "attention_mask" in n.input]
    assert _qdq_on_mask_path(result.model) == []

    encoder = ptq_peer.TextEncoder(deploy)
    val = ptq_peer.read_text_rows(data / "val.csv")
    dense = ptq_peer.evaluate_text_classifier(deploy / "model.onnx", encoder, val)
    int8 = ptq_peer.evaluate_text_classifier(result.model, encoder, val)
    assert dense["examples"] == int8["examples"] == 60
    assert dense["accuracy"] >= 0.9
    assert int8["accuracy"] >= dense["accuracy"] - 0.05
    agree = np.mean(dense["right"] == int8["right"])
    assert agree >= 0.9


def test_mask_path_check_is_not_vacuous(text_run: tuple[Path, Path], tmp_path: Path) -> None:
    """ONNX Runtime's default operator set does put a QuantizeLinear on the mask arithmetic
    (the Add of scores and mask): the check above would catch it."""
    run, data = text_run
    deploy = run / "deployment"
    encoder = ptq_peer.TextEncoder(deploy)
    texts = [t for t, _ in ptq_peer.read_text_rows(data / "train.csv")[:8]]
    naive = ptq_peer.quantize_static_qdq(deploy / "model.onnx", tmp_path / "naive.onnx",
                                         lambda: (encoder([t]) for t in texts), len(texts),
                                         op_types=None, skip_symbolic_shape=True)
    assert _qdq_on_mask_path(naive.model)
    assert _qdq_not_at_matmul(naive.model)
    assert not set(naive.integer_ops) <= MATMUL_KERNELS


def test_text_encoder_matches_the_runs_collation(text_run: tuple[Path, Path]) -> None:
    """Truncation at max_seq_length, right padding to the batch's longest row."""
    run, _ = text_run
    encoder = ptq_peer.TextEncoder(run / "deployment")
    feed = encoder(["good", "the movie was very very very good and it was so nice today"])
    assert set(feed) == {"input_ids", "attention_mask"}
    assert feed["input_ids"].shape == (2, 12) and feed["input_ids"].dtype == np.int64
    assert feed["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 9
    assert feed["input_ids"][0, 3:].tolist() == [0] * 9


# --------------------------------------------------------------------------------------------
# The criterion and the benchmark tables
# --------------------------------------------------------------------------------------------


def test_criterion() -> None:
    met, text = ptq_peer.criterion(0.80, 0.81, {1: 1.0, 32: 10.0}, {1: 1.4, 32: 13.5})
    assert met and "MET" in text and "1.40x" in text
    met, text = ptq_peer.criterion(0.80, 0.81, {1: 1.0, 32: 10.0}, {1: 1.4, 32: 12.0})
    assert not met and "NOT MET" in text
    met, _ = ptq_peer.criterion(0.81, 0.81, {1: 1.0}, {1: 0.5})
    assert met


def _metrics(top1: float, sparsity: float, gz: int, quantized: bool) -> dict:
    lat = {b: {"model_ms": ms, "dense_fp32_baseline_ms": 2 * ms, "speedup": 2.0}
           for b, ms in (("batch_1", 1.0), ("batch_32", 20.0))}
    return {"task_metrics": {"top1": top1, "accuracy": top1, "f1": top1 - 0.01},
            "sparsity": {"overall": sparsity}, "size": {"onnx_gzip_bytes": gz},
            "latency_onnxruntime_cpu": lat, "train_seconds": 100.0,
            "export": {"quantized": quantized, "integer_kernels": 60 if quantized else 0,
                       "agreement_with_pytorch": {"onnxruntime": top1}}}


def _peer(tmp_path: Path) -> ptq_peer.PTQResult:
    return ptq_peer.PTQResult(
        model=tmp_path / "ptq.onnx", source=tmp_path / "model.onnx", calibration_rows=200,
        calibration_batches=7, op_types=None, reduce_range=True, pre_processed=True,
        integer_ops={"QLinearConv": 49, "QLinearAdd": 20, "QGemm": 1}, integer_kernels=70,
        gzip_bytes=3_000_000,
        seconds=12.0)


def test_image_table_has_the_ptq_column(tmp_path: Path) -> None:
    bench = _bench_module("bench_image_pretrained")
    results = {"dense": (_metrics(0.85, 0.002, 12_500_000, False), 856.0, tmp_path / "d"),
               "sparse": (_metrics(0.77, 0.78, 1_420_000, True), float("nan"), tmp_path / "s")}
    inter = {"dense": {1: 1.7, 32: 40.0}, "sparse": {1: 1.1, 32: 20.0},
             "ptq": {1: 1.3, 32: 28.0}}
    onnx_eval = {"dense": {"top1": 0.851}, "sparse": {"top1": 0.768}, "ptq": {"top1": 0.84}}
    text = bench.table(results, inter, onnx_eval, _peer(tmp_path))
    lines = text.splitlines()
    assert ptq_peer.PTQ_LABEL in lines[0] and len(lines[1].split("|")) == 6
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
           for line in lines[2:]}
    assert row["val top-1, ONNX Runtime on the deployed file (this script)"] == \
        ["0.8510", "0.7680", "0.8400"]
    assert row["sparsity of prunable weights"][2] == "0.000"
    assert row["ONNX gzip size (MB)"] == ["12.50", "1.42", "3.00"]
    assert row["interleaved speedup vs dense FP32 export, batch 32"] == \
        ["1.00x", "2.00x", "1.43x"]
    assert row["interleaved latency, batch 1 (ms)"][2] == "1.30"
    assert row["integer kernels in ONNX Runtime's graph"] == ["0", "60", "70"]
    assert "reused" in row["wall time (s)"][1]
    verdict = bench.verdict(onnx_eval, inter)
    assert "NOT MET" in verdict  # 0.768 < 0.84, and 28/20 = 1.40x but 1.3/1.1 = 1.18x


def test_nlp_table_has_the_ptq_column(tmp_path: Path) -> None:
    bench = _bench_module("bench_nlp_sentiment")
    dense = _metrics(0.935, 0.0, 83_600_000, False)
    sparse = _metrics(0.8925, 0.78, 7_300_000, True)
    inter = {"dense": {1: 22.6, 32: 436.6}, "sparse": {1: 14.0, 32: 265.5},
             "ptq": {1: 16.0, 32: 300.0}}
    onnx_eval = {k: {"accuracy": a, "f1": a - 0.01}
                 for k, a in (("dense", 0.935), ("sparse", 0.8925), ("ptq", 0.93))}
    args = argparse.Namespace(train_per_class=800, val_per_class=200, epochs=3, lr=1e-4)
    text = bench.table(dense, sparse, (614.0, 223.0), args, inter, onnx_eval, _peer(tmp_path))
    header = next(line for line in text.splitlines() if line.startswith("| |"))
    assert ptq_peer.PTQ_LABEL in header and len(header.split("|")) == 6
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
           for line in text.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    assert row["accuracy (val), ONNX Runtime on the deployed file (this script)"] == \
        ["0.9350", "0.8925", "0.9300"]
    assert row["sparsity of prunable weights"] == ["0.000", "0.780", "0.000"]
    assert row["ONNX gzip size (MB)"] == ["83.6", "7.3", "3.0"]
    assert row["interleaved speedup vs dense FP32 export, batch 1"] == ["1.00x", "1.61x", "1.41x"]
    assert row["ONNX"][2] == "INT8 (70 integer kernels)"
    verdict = bench.verdict(onnx_eval, inter)
    assert "NOT MET" in verdict
