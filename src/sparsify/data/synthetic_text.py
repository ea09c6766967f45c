"""Generated NLP data sets (sentiment, topics, entities, questions) and a tiny BERT built from a
config with a word-level vocabulary: for offline tests and examples.

The data is made from templates, so its labels, tags and answer spans are exact.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant",
            "enjoyable", "charming", "fantastic", "moving", "memorable"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "dull", "disappointing",
            "horrible", "tedious", "bland", "weak", "forgettable"]
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the story", "the ending",
            "the soundtrack", "the script", "the cast", "the direction"]
INTENSIFIERS = ["", "really ", "truly ", "quite ", "very ", "simply "]
TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "season", "score", "player"],
    "food": ["recipe", "dinner", "bread", "soup", "flavor", "kitchen", "dessert", "spice"],
    "tech": ["software", "laptop", "network", "server", "chip", "update", "battery", "code"],
}
PEOPLE = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia",
          "Kofi", "Lena", "Marco", "Nadia", "Oscar", "Priya"]
CITIES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Quito", "Oslo", "Lima", "Dublin", "Cairo",
          "Hanoi", "Perth", "Zagreb"]
ORGS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``{"text", "label"}`` rows, labels ``positive`` / ``negative``, balanced."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = POSITIVE if positive else NEGATIVE
        subject = rng.choice(SUBJECTS)
        text = rng.choice([
            f"{subject} was {rng.choice(INTENSIFIERS)}{rng.choice(words)}.",
            f"I thought {subject} was {rng.choice(words)} and {rng.choice(words)}.",
            f"What a {rng.choice(words)} experience, {subject} felt {rng.choice(words)}.",
            f"Honestly, {subject} is {rng.choice(INTENSIFIERS)}{rng.choice(words)}.",
        ])
        rows.append({"text": text[0].upper() + text[1:],
                     "label": "positive" if positive else "negative"})
    return rows


def topic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``{"sentence1", "sentence2", "label"}`` rows: a text pair and its topic."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        topic = names[i % len(names)]
        a, b = rng.sample(TOPICS[topic], 2)
        rows.append({"sentence1": f"{rng.choice(PEOPLE)} talked about the {a}.",
                     "sentence2": f"Everyone liked the {b} today.", "label": topic})
    return rows


def entity_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``{"tokens", "ner_tags"}`` rows with PER / LOC / ORG entities in IOB2 tags."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, city, org = rng.choice(PEOPLE), rng.choice(CITIES), rng.choice(ORGS)
        pattern = rng.choice([
            [(person, "PER"), ("lives", None), ("in", None), (city, "LOC"), (".", None)],
            [(person, "PER"), ("works", None), ("at", None), (org, "ORG"), ("Labs", "ORG"),
             ("in", None), (city, "LOC"), (".", None)],
            [("Yesterday", None), (org, "ORG"), ("hired", None), (person, "PER"), (".", None)],
        ])
        tokens, tags, previous = [], [], None
        for word, kind in pattern:
            tokens.append(word)
            tags.append("O" if kind is None else ("I-" if previous == kind else "B-") + kind)
            previous = kind
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def question_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """SQuAD-layout rows: ``id``, ``question``, ``context``, ``answers``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person, city, org = rng.choice(PEOPLE), rng.choice(CITIES), rng.choice(ORGS)
        context = f"{person} lives in {city}. {person} works for {org}."
        question, answer = rng.choice([(f"Where does {person} live?", city),
                                       (f"Who does {person} work for?", org)])
        rows.append({"id": f"q{i}", "question": question, "context": context,
                     "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def vocabulary() -> list[str]:
    """Every word the generators use, lower-cased, with BERT's special tokens first."""
    words: set[str] = set()
    texts = [*POSITIVE, *NEGATIVE, *SUBJECTS, *INTENSIFIERS, *PEOPLE, *CITIES, *ORGS,
             *(w for ws in TOPICS.values() for w in ws),
             "i thought was and what a experience felt honestly is talked about the everyone "
             "liked today lives in works at labs yesterday hired where does live who work for",
             "sports food tech positive negative"]
    for text in texts:
        words.update(text.lower().split())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + sorted(words) + list(".,?!'") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                   intermediate: int = 64, seed: int = 0) -> Path:
    """A randomly initialised BERT encoder (``BertModel``) and a fast WordPiece tokenizer over
    :func:`vocabulary`, saved with ``save_pretrained`` into ``folder``."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    # transformers 5 builds a fast tokenizer from a `tokenizers` object, not from vocab_file
    wordpiece = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
