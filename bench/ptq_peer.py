"""The post-training-quantization peer of the accuracy benchmarks (issue 13, item 5).

The peer of ``--optim-level 0.5`` is what a user gets without sparsify: the dense fine-tune's
FP32 export (``<level 0.0 run>/deployment/model.onnx``) quantized by ONNX Runtime's own static
post-training quantization - QDQ format, weights int8 symmetric per output channel, activations
uint8 per tensor, MinMax ranges calibrated on a fixed (seeded) sample of TRAINING examples.
On an AVX2 CPU without VNNI the weights are 7-bit (``reduce_range``), as ONNX Runtime's
documentation recommends there and as sparsify's own QAT does. The calibration and the
evaluation feed the model exactly what the run's validation loop fed it:

* images: the preprocessing that the deployment README shows, read from its ``config.json``
  (shorter side to ``resize``, centre crop ``crop``, [0, 1], ImageNet mean / std). On the
  benchmark's square images it equals the run's own torchvision evaluation transform
  (``tests/unit/test_ptq_peer.py`` checks it);
* text: the deployment's tokenizer (``AutoTokenizer.from_pretrained(deployment dir)``),
  truncation at the run's ``max_seq_length`` from ``config.json``, batches padded on the right
  to their longest row (as the run's collator does; calibration feeds one row at a time, so no
  pad position sets a range). Only ``MatMul`` / ``Gemm`` are quantized: a naive static PTQ
  that also calibrates the attention-mask arithmetic measured accuracy 0.50. The word
  embeddings therefore stay FP32 (the file is larger than level 0.5's, which quantizes them).

Both benchmark scripts import this module (``sys.path`` holds ``bench/`` when a script in it
runs), so the two peers share one implementation.
"""

from __future__ import annotations

import csv
import json
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the column / row label of the peer in the benchmark tables
PTQ_LABEL = ("dense fine-tune + ONNX Runtime post-training static INT8 "
             "(QDQ, per-channel, calibrated on training rows)")
#: training examples the ranges are calibrated on (ONNX Runtime suggests a few hundred)
CALIBRATION_ROWS = 200
CALIBRATION_SEED = 0
#: the issue's criterion: level 0.5 is at least as accurate as PTQ or this much faster
SPEED_FACTOR = 1.3
#: quantizing only these keeps the attention-mask arithmetic of a transformer in float
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm")


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


def cpu_lacks_vnni() -> bool:
    """True on an x86 CPU whose flags show no VNNI (AVX2-only): there ONNX Runtime's u8 x s8
    kernels saturate, and its documentation recommends ``reduce_range`` (7-bit weights) for
    static quantization. sparsify's QAT uses 7-bit weights on such CPUs for the same reason
    (docs/INT8_EXPORT.md, pitfall 2), so the peer gets the same treatment."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\bavx2\b", flags, re.MULTILINE):
        return False  # not x86 with AVX2 (ARM, or unknown): no saturation issue
    return not re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags)


class FeedReader:
    """An ONNX Runtime ``CalibrationDataReader`` over feeds ``{input name: array}``, created
    lazily (one batch in memory at a time)."""

    def __init__(self, make_feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]]) -> None:
        self._make = make_feeds
        self._it: Iterator[Mapping[str, np.ndarray]] | None = None
        self.batches = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self._make())
        feed = next(self._it, None)
        if feed is None:
            return None
        self.batches += 1
        return dict(feed)

    def rewind(self) -> None:
        self._it = None


def _as_calibration_reader(reader: FeedReader) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    return Reader()


@dataclass
class PTQResult:
    """One static post-training quantization (and what the tables need of it).

    Attributes:
        model: the quantized ONNX file.
        source: the FP32 ONNX file it was made from.
        calibration_rows: training examples the ranges were calibrated on.
        calibration_batches: feeds given to the calibrator.
        op_types: operator types quantized (``None``: ONNX Runtime's defaults).
        reduce_range: 7-bit weights (see :func:`cpu_lacks_vnni`).
        pre_processed: ``quant_pre_process`` ran (``False`` with the reason in ``notes``).
        integer_ops: ``{op type: count}`` of the integer kernels (``QLinearConv``, ``QGemm``,
            ``QLinearMatMul``...) in ONNX Runtime's optimised graph: what runs in INT8.
        integer_kernels: their total.
        gzip_bytes: gzip size of ``model`` (as metrics.yaml's ``onnx_gzip_bytes``).
        seconds: wall time of pre-processing, calibration and quantization.
        notes: anything that did not go the default way.
    """

    model: Path
    source: Path
    calibration_rows: int
    calibration_batches: int
    op_types: list[str] | None
    reduce_range: bool
    pre_processed: bool
    integer_ops: dict[str, int]
    integer_kernels: int
    gzip_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.integer_ops.items()))
        parts = [(f"{self.calibration_rows} training rows ({self.calibration_batches} "
                  "calibration feeds, MinMax)"),
                 "operator types quantized: " + (", ".join(self.op_types) if self.op_types
                                                 else "ONNX Runtime's defaults"),
                 "7-bit weights (reduce_range: AVX2 CPU without VNNI)" if self.reduce_range
                 else "8-bit weights",
                 "quant_pre_process " + ("applied" if self.pre_processed else "skipped"),
                 f"{self.integer_kernels} integer kernels in ONNX Runtime's graph ({ops})",
                 f"{self.seconds:.0f} s"]
        return "; ".join(parts + self.notes)


def integer_ops(model: Path) -> dict[str, int]:
    """``{op type: count}`` of the integer kernels in ONNX Runtime's optimised graph of
    ``model`` (the QDQ groups it fused; what actually runs in INT8)."""
    from sparsify.export.inspect import INTEGER_KERNEL_OPS, optimized_graph_op_counts

    return {op: n for op, n in sorted(optimized_graph_op_counts(model).items())
            if op in INTEGER_KERNEL_OPS}


def quantize_static_qdq(fp32: Path, out: Path, feeds: Callable[[], Iterable[Mapping[str, Any]]],
                        calibration_rows: int, *, op_types: Sequence[str] | None = None,
                        pre_process: bool = True, skip_symbolic_shape: bool = False,
                        reduce_range: bool | None = None) -> PTQResult:
    """Quantize ``fp32`` into ``out`` with ONNX Runtime's static post-training quantization.

    QDQ format, weights ``QInt8`` per output channel, activations ``QUInt8`` per tensor, MinMax
    calibration over ``feeds()`` (``{input name: array}`` per batch; called again if the
    calibrator rewinds).

    Args:
        fp32: the FP32 ONNX model.
        out: where the INT8 model goes (its folder is created).
        feeds: makes the calibration feeds.
        calibration_rows: how many examples ``feeds`` yields (for the record).
        op_types: operator types to quantize; ``None`` for ONNX Runtime's defaults (Conv,
            Gemm, MatMul, Add, Mul, Relu, Clip, pooling... : what a CNN wants).
        pre_process: run ``quant_pre_process`` (shape inference + graph optimisation) first;
            if it fails, quantize the model as exported and say so in ``notes``.
        skip_symbolic_shape: skip its symbolic shape inference (fails on HF BERT with a
            dynamic sequence axis: docs/INT8_EXPORT.md, pitfall 4).
        reduce_range: 7-bit weights; ``None`` decides by :func:`cpu_lacks_vnni`.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from sparsify.export.deployment import gzip_size

    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    reduce_range = cpu_lacks_vnni() if reduce_range is None else bool(reduce_range)
    notes: list[str] = []
    reader = FeedReader(feeds)
    with tempfile.TemporaryDirectory(prefix="ptq-peer-") as tmp:
        source = fp32
        pre_processed = False
        if pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(fp32), str(prepared),
                                  skip_symbolic_shape=skip_symbolic_shape)
                source, pre_processed = prepared, True
            except Exception as exc:  # noqa: BLE001 - any failure: quantize the export as is
                notes.append(f"quant_pre_process failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''}), "
                             "quantized the export as is")
        quantize_static(
            str(source), str(out), _as_calibration_reader(reader),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None,
            calibrate_method=CalibrationMethod.MinMax,
            # no CalibMaxIntermediateOutputs: ONNX Runtime 1.32's MinMax calibrator drops (does
            # not merge) the outputs it has collected each time that limit is reached, so only
            # the last partial chunk would set the ranges. All feeds' outputs stay in memory
            # until the end (a few hundred rows of MiniLM: about a GB).
        )
    seconds = time.monotonic() - started
    kernels = integer_ops(out)
    return PTQResult(
        model=out, source=fp32, calibration_rows=int(calibration_rows),
        calibration_batches=reader.batches, op_types=list(op_types) if op_types else None,
        reduce_range=reduce_range, pre_processed=pre_processed,
        integer_ops=kernels, integer_kernels=sum(kernels.values()),
        gzip_bytes=gzip_size(out), seconds=seconds, notes=notes)


def fixed_sample(n_items: int, n: int, seed: int = CALIBRATION_SEED) -> list[int]:
    """``n`` indices of ``range(n_items)`` (all if fewer), seeded, in increasing order."""
    if n >= n_items:
        return list(range(n_items))
    return sorted(random.Random(seed).sample(range(n_items), n))


def _batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _session(path: Path) -> Any:
    from sparsify.export.inspect import ort_session

    return ort_session(path)


def _cache_key(fp32: Path, **settings: Any) -> dict[str, Any]:
    stat = fp32.stat()
    return {"source": str(fp32.resolve()), "source_bytes": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns, **settings}


def _reused(out_dir: Path, key: dict[str, Any]) -> PTQResult | None:
    record = out_dir / "ptq.json"
    if not record.is_file() or not (out_dir / "model.onnx").is_file():
        return None
    saved = json.loads(record.read_text())
    if saved.get("key") != key:
        return None
    result = saved["result"]
    try:
        return PTQResult(**{**result, "model": Path(result["model"]),
                            "source": Path(result["source"])})
    except TypeError:  # written by another version of this module: quantize again
        return None


def _remember(out_dir: Path, key: dict[str, Any], result: PTQResult) -> None:
    data = {**asdict(result), "model": str(result.model), "source": str(result.source)}
    (out_dir / "ptq.json").write_text(json.dumps({"key": key, "result": data}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def deployment_config(deploy_dir: Path) -> dict[str, Any]:
    return json.loads((Path(deploy_dir) / "config.json").read_text())


def preprocess_image(path: Path, cfg: Mapping[str, Any]) -> np.ndarray:
    """One image as the deployment README preprocesses it: ``(3, crop, crop)`` float32."""
    from PIL import Image

    with Image.open(path) as opened:
        img = opened.convert("RGB")
    scale = cfg["resize"] / min(img.size)                 # shorter side -> resize
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    left, top = (img.width - cfg["crop"]) // 2, (img.height - cfg["crop"]) // 2
    img = img.crop((left, top, left + cfg["crop"], top + cfg["crop"]))
    x = (np.asarray(img, np.float32) / 255 - cfg["mean"]) / cfg["std"]
    return x.transpose(2, 0, 1).astype(np.float32)


def image_folder(root: Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` of ``root/<class>/<image>`` with the run's label order
    (``config.json``'s ``class_names``), files sorted; hidden files and non-images skipped."""
    from sparsify.data.image_folder import IMG_EXTENSIONS

    samples = []
    for label, name in enumerate(class_names):
        folder = Path(root) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no folder for class '{name}'")
        samples += [(p, label) for p in sorted(folder.iterdir())
                    if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMG_EXTENSIONS]
    return samples


def image_feeds(samples: Sequence[tuple[Path, int]], cfg: Mapping[str, Any], batch: int = 32,
                input_name: str = "input") -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Batches ``({input: (B, 3, crop, crop)}, labels)``."""
    for chunk in _batched(samples, batch):
        x = np.stack([preprocess_image(p, cfg) for p, _ in chunk])
        yield {input_name: x}, np.asarray([y for _, y in chunk])


def evaluate_image_classifier(onnx_path: Path, samples: Sequence[tuple[Path, int]],
                              cfg: Mapping[str, Any], batch: int = 64) -> dict[str, Any]:
    """Top-1 of an ONNX classifier over ``samples`` in ONNX Runtime (CPU, all optimisations,
    as sparsify measures its exports). Returns ``top1``, ``examples`` and ``right`` (which
    samples it got right, for paired comparisons)."""
    session = _session(onnx_path)
    name = cfg.get("input_name", session.get_inputs()[0].name)
    right = []
    for feed, labels in image_feeds(samples, cfg, batch, name):
        logits = session.run(None, feed)[0]
        right.append(logits.argmax(-1) == labels)
    hits = np.concatenate(right) if right else np.zeros(0, bool)
    return {"top1": float(hits.mean()) if hits.size else 0.0, "examples": int(hits.size),
            "right": hits}


def image_ptq_peer(dense_run: Path, data: Path, out_dir: Path,
                   calibration_rows: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED,
                   reuse: bool = False) -> PTQResult:
    """Static INT8 of the dense run's export, calibrated on ``calibration_rows`` images of
    ``data/train`` (a seeded sample), with ONNX Runtime's default operator set (a CNN's convs,
    adds, activations and the classifier Gemm). Reuses ``out_dir/model.onnx`` when ``reuse``
    and it was made from the same file with the same settings."""
    deploy = Path(dense_run) / "deployment"
    fp32 = deploy / "model.onnx"
    cfg = deployment_config(deploy)
    key = _cache_key(fp32, kind="image", data=str(Path(data).resolve()),
                     calibration_rows=calibration_rows, seed=seed, reduce_range=cpu_lacks_vnni())
    if reuse and (found := _reused(out_dir, key)) is not None:
        return found
    train = image_folder(Path(data) / "train", cfg["class_names"])
    chosen = [train[i] for i in fixed_sample(len(train), calibration_rows, seed)]
    name = cfg.get("input_name", "input")
    result = quantize_static_qdq(
        fp32, out_dir / "model.onnx", lambda: (f for f, _ in image_feeds(chosen, cfg, 32, name)),
        len(chosen), op_types=None, pre_process=True)
    _remember(out_dir, key, result)
    return result


# --------------------------------------------------------------------------------------------
# Text classification
# --------------------------------------------------------------------------------------------


def read_text_rows(path: Path, text_column: str = "text", label_column: str = "label"
                   ) -> list[tuple[str, str]]:
    """``(text, label)`` rows of a CSV with a header, as the benchmark writes them."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [(row[text_column], row[label_column]) for row in csv.DictReader(fh)]


class TextEncoder:
    """The run's validation preprocessing: its tokenizer (saved in the deployment folder),
    truncation at ``max_seq_length``, a batch padded on the right to its longest row."""

    def __init__(self, deploy_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.config = deployment_config(deploy_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(deploy_dir))
        self.max_len = int(self.config["max_seq_length"])
        self.input_names = list(self.config["input_names"])
        label2id = self.config.get("label2id")
        self.label2id = {str(k): int(v) for k, v in (label2id or {}).items()}

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_len)
        padded = self.tokenizer.pad({k: enc[k] for k in self.input_names}, padding=True,
                                    padding_side="right", return_tensors="np")
        return {k: np.asarray(padded[k]).astype(np.int64) for k in self.input_names}

    def label_ids(self, labels: Sequence[str]) -> np.ndarray:
        return np.asarray([self.label2id[str(label)] for label in labels])


def evaluate_text_classifier(onnx_path: Path, encoder: TextEncoder,
                             rows: Sequence[tuple[str, str]], batch: int = 16) -> dict[str, Any]:
    """Accuracy and F1 (sparsify's ``classification_metrics``: of class 1 for two labels) of
    an ONNX text classifier over ``rows`` in ONNX Runtime; ``right`` as for images."""
    from sparsify.trainers.nlp_metrics import classification_metrics

    session = _session(onnx_path)
    preds: list[int] = []
    for chunk in _batched(rows, batch):
        logits = session.run(None, encoder([t for t, _ in chunk]))[0]
        preds += logits.argmax(-1).tolist()
    labels = encoder.label_ids([y for _, y in rows])
    metrics = classification_metrics(preds, labels.tolist(), len(encoder.label2id))
    return {**metrics, "examples": len(rows), "right": np.asarray(preds) == labels}


def text_ptq_peer(dense_run: Path, train_csv: Path, out_dir: Path,
                  calibration_rows: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED,
                  reuse: bool = False) -> PTQResult:
    """Static INT8 of the dense run's export, ``MatMul`` / ``Gemm`` only, calibrated on
    ``calibration_rows`` rows of ``train_csv`` (a seeded sample) fed one row at a time (the
    run's tokenization; one row needs no padding, so pad positions never set a range).
    ``quant_pre_process`` without symbolic shape inference. Reuse as :func:`image_ptq_peer`."""
    deploy = Path(dense_run) / "deployment"
    fp32 = deploy / "model.onnx"
    key = _cache_key(fp32, kind="text", data=str(Path(train_csv).resolve()),
                     calibration_rows=calibration_rows, seed=seed, reduce_range=cpu_lacks_vnni(),
                     op_types=list(TRANSFORMER_OP_TYPES))
    if reuse and (found := _reused(out_dir, key)) is not None:
        return found
    encoder = TextEncoder(deploy)
    rows = read_text_rows(train_csv)
    chosen = [rows[i][0] for i in fixed_sample(len(rows), calibration_rows, seed)]
    result = quantize_static_qdq(
        fp32, out_dir / "model.onnx", lambda: (encoder([t]) for t in chosen), len(chosen),
        op_types=TRANSFORMER_OP_TYPES, pre_process=True, skip_symbolic_shape=True)
    _remember(out_dir, key, result)
    return result


# --------------------------------------------------------------------------------------------
# The criterion
# --------------------------------------------------------------------------------------------


def paired_counts(level: np.ndarray, ptq: np.ndarray) -> tuple[int, int]:
    """``(only level 0.5 right, only PTQ right)`` over the same examples."""
    level, ptq = np.asarray(level, bool), np.asarray(ptq, bool)
    return int((level & ~ptq).sum()), int((ptq & ~level).sum())


def criterion(level_accuracy: float, ptq_accuracy: float, level_ms: Mapping[int, float],
              ptq_ms: Mapping[int, float], factor: float = SPEED_FACTOR,
              metric: str = "accuracy") -> tuple[bool, str]:
    """Issue 13's test of level 0.5 against the PTQ peer: at least as accurate, or faster by
    ``factor`` or more. "Faster" must hold at every batch size timed (the conservative
    reading); the per-batch speedups are in the sentence either way.

    Args:
        level_accuracy, ptq_accuracy: the same metric on the same examples, both measured by
            ONNX Runtime on the deployed files.
        level_ms, ptq_ms: interleaved median latency per batch size.

    Returns:
        ``(met, one sentence with the figures)``.
    """
    accurate = level_accuracy >= ptq_accuracy
    speedups = {b: ptq_ms[b] / level_ms[b] for b in sorted(level_ms)}
    faster = bool(speedups) and all(s >= factor for s in speedups.values())
    met = accurate or faster
    speed_text = ", ".join(f"{s:.2f}x (batch {b})" for b, s in speedups.items())
    return met, (
        f"Level 0.5 vs the PTQ peer: {metric} {level_accuracy:.4f} vs {ptq_accuracy:.4f} "
        f"({100 * (level_accuracy - ptq_accuracy):+.2f} points: "
        f"{'at least as accurate' if accurate else 'less accurate'}); level 0.5 runs "
        f"{speed_text} as fast as PTQ ({'>=' if faster else 'not >='} {factor}x at every "
        f"batch size). Criterion \"at least as accurate as PTQ or faster by >= {factor}x\": "
        f"{'MET' if met else 'NOT MET'}.")
