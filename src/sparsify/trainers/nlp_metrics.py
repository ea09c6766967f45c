"""NLP task metrics, pure Python: accuracy/F1, entity-level P/R/F1, SQuAD EM/F1, and the
post-processing that turns start/end logits into answer texts."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any


def classification_metrics(predictions: Sequence[int], labels: Sequence[int],
                           num_labels: int) -> dict[str, float]:
    """``accuracy`` and ``f1`` (of class 1 for two classes, macro over classes otherwise)."""
    n = len(labels)
    correct = sum(int(p == y) for p, y in zip(predictions, labels))

    def f1_of(c: int) -> float:
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels) if p != c and y == c)
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    f1 = f1_of(1) if num_labels == 2 else sum(f1_of(c) for c in range(num_labels)) / num_labels
    return {"accuracy": correct / n if n else 0.0, "f1": f1}


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities ``(type, start, end)`` (end exclusive) in one tag sequence.

    IOB2 / IOB1 tags (``B-PER``, ``I-PER``, ``O``; ``E-``/``S-``/``L-``/``U-`` of BIOES too) as
    seqeval reads them in its default mode: an ``I-`` after ``O`` or after another type starts a
    new entity. Tags without a prefix (``PER``) form one entity per run of equal tags.
    """
    spans: set[tuple[str, int, int]] = set()
    kind: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        match = re.match(r"^([BIESLU])-(.+)$", tag)
        if tag in ("O", ""):
            prefix, label = "O", None
        elif match:
            prefix, label = match.group(1), match.group(2)
        else:
            prefix, label = "", tag
        if kind is not None and (prefix in ("O", "B", "S", "U") or label != kind):
            spans.add((kind, start, i))
            kind = None
        if prefix != "O" and kind is None:
            kind, start = label, i
        if prefix in ("E", "L", "S", "U") and kind is not None:
            spans.add((kind, start, i + 1))
            kind = None
    return spans


def entity_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
                   ) -> dict[str, float]:
    """Entity-level micro ``precision``, ``recall``, ``f1``, and token ``accuracy``."""
    tp = n_pred = n_true = 0
    tokens = correct = 0
    for pred, ref in zip(predictions, references):
        p, r = entity_spans(pred), entity_spans(ref)
        tp += len(p & r)
        n_pred += len(p)
        n_true += len(r)
        tokens += len(ref)
        correct += sum(1 for a, b in zip(pred, ref) if a == b)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": correct / tokens if tokens else 0.0}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if not pred or not gold:
        return float(pred == gold)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent, each the max over the gold answers of a question,
    averaged over questions (SQuAD v1.1's evaluation)."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        golds = golds or [""]
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    n = max(len(answers), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


def best_answers(examples: Sequence[dict[str, Any]], features: Sequence[dict[str, Any]],
                 start_logits: Any, end_logits: Any, n_best: int = 20,
                 max_answer_length: int = 30) -> dict[str, str]:
    """The best-scoring span of each example over all its features (windows).

    Each feature has ``example_index`` and ``offset_mapping`` (``None`` for tokens outside the
    context); ``start_logits[i]``/``end_logits[i]`` are the feature's logits.
    """
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for i, feature in enumerate(features):
        by_example[feature["example_index"]].append(i)
    out: dict[str, str] = {}
    for e, example in enumerate(examples):
        best_score, best_text = None, ""
        for i in by_example.get(e, []):
            offsets = features[i]["offset_mapping"]
            starts = sorted(range(len(offsets)), key=lambda k: -float(start_logits[i][k]))[:n_best]
            ends = sorted(range(len(offsets)), key=lambda k: -float(end_logits[i][k]))[:n_best]
            for s in starts:
                for t in ends:
                    if offsets[s] is None or offsets[t] is None or t < s \
                            or t - s + 1 > max_answer_length:
                        continue
                    score = float(start_logits[i][s]) + float(end_logits[i][t])
                    if best_score is None or score > best_score:
                        best_score = score
                        best_text = example["context"][offsets[s][0]:offsets[t][1]]
        out[example["id"]] = best_text
    return out
