"""NLP task checks: the columns, labels, tags and answers of one task family.

Each check (:func:`check_text_classification`, :func:`check_token_classification`,
:func:`check_question_answering`) takes the rows read by :mod:`sparsify.data.text` and returns
the checked examples; every problem is a :class:`~sparsify.errors.DataError` naming the file,
the row (line for CSV and JSONL) and the fix. Pure Python: no torch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparsify.errors import DataError
from sparsify.families import (
    LabelledTextSettings, QuestionAnsweringSettings, TextClassificationSettings,
    TokenClassificationSettings,
)

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One record and where it came from (for error messages)."""

    values: dict[str, Any]
    where: str


@dataclass
class RawSplits:
    """Rows of the training and validation data before any task check."""

    train: list[Row]
    val: list[Row]
    source: str
    val_source: str
    label_names: dict[str, list[str]] = field(default_factory=dict)  # Hub ClassLabel names
    text_columns: tuple[str, str | None] | None = None  # known text (+ pair) columns (GLUE)
    auto_split: bool = False  # the validation rows were split off the training data here


@dataclass
class TextClassificationData:
    """Checked text-classification examples: ``text``, optional ``text_pair``, ``label`` (int)."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    label_names: list[str]
    text_column: str
    pair_column: str | None


def _columns(rows: Sequence[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows[:50]:
        for key in row.values:
            seen.setdefault(key)
    return list(seen)


def _missing_column(rows: Sequence[Row], what: str, valid: Iterable[str], option: str) -> DataError:
    where = rows[0].where.rsplit(",", 1)[0] if rows else "the data"
    return DataError(f"{where}: no {what} column. Columns: {', '.join(_columns(rows))}; "
                     f"expected one of: {', '.join(valid)}.",
                     hint=f"Rename the column, or name it with --train-kwargs "
                          f"'{{\"{option}\": \"COLUMN\"}}'.")


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _unseen_hint(raw: RawSplits) -> str:
    if raw.auto_split:
        return ("The validation rows were split off the training file (--seed, val_fraction) "
                "and every row with it went to validation: add more rows with it, or give a "
                "separate validation file.")
    return "Fix it, or add training rows with it."


def _unknown_class(where: str, what: str, value: str, names: list[str], listed: bool,
                   raw: RawSplits) -> DataError:
    """The error for a label/tag outside the known classes: the given list of names (the Hub
    dataset's or --train-kwargs label_names) when there is one, else the training data's."""
    if listed:
        return DataError(f"{where}: {what} {value!r} is not one of the class names "
                         f"({', '.join(names)}).",
                         hint="Class names come from the Hub dataset or from --train-kwargs "
                              "label_names (every name, in class-id order): fix the row or "
                              "the list.")
    return DataError(f"{where}: {what} {value!r} does not occur in the training data "
                     f"({', '.join(names)}).", hint=_unseen_hint(raw))


def _class_names(raw: RawSplits, column: str, settings: LabelledTextSettings) -> list[str] | None:
    """Names of integer classes in ``column``: the Hub dataset's ClassLabel names, else
    ``--train-kwargs label_names``, else None (integers stay their own names)."""
    names = raw.label_names.get(column)
    return list(names) if names is not None else settings.label_names


def _named(value: Any, names: list[str], where: str, what: str) -> str | None:
    """The name of an integer class id (an int, a whole float, or such digits in a CSV); None
    for anything else (a name)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.0*)?", value.strip()):
        value = int(float(value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value < 0:
        raise DataError(f"{where}: {what} {value} (unlabeled: the Hub marks unlabeled test "
                        "rows with -1).")
    if value >= len(names):
        raise DataError(f"{where}: {what} {value} has no name: {len(names)} names are known "
                        f"({', '.join(names)}).",
                        hint="--train-kwargs label_names lists every class name in id order.")
    return names[value]


def check_text_classification(raw: RawSplits, settings: TextClassificationSettings
                              ) -> TextClassificationData:
    """Find the text / pair / label columns and map labels to ids (sorted names).

    Raises:
        DataError: a column missing, an empty text or label, a validation label the training
            data lacks.
    """
    rows = raw.train
    cols = _columns(rows)
    label_col = settings.label_column
    if label_col not in cols:
        raise _missing_column(rows, "label", [label_col], "label_column")
    text_col, pair_col = settings.text_column, settings.text_pair_column
    if text_col is None and raw.text_columns is not None:
        text_col, pair_col = raw.text_columns[0], pair_col or raw.text_columns[1]
    if text_col is None:
        # pairs first: a file with question + sentence is a pair task, not "sentence" alone
        for a, b in (("sentence1", "sentence2"), ("premise", "hypothesis"),
                     ("question1", "question2"), ("question", "sentence"), ("text", None),
                     ("sentence", None)):
            if a in cols and (b is None or b in cols):
                text_col, pair_col = a, pair_col or b
                break
    if text_col is None:
        strings = [c for c in cols if c != label_col and c not in ("idx", "id")
                   and all(_is_text(r.values.get(c)) for r in rows[:20])]
        if not strings:
            raise _missing_column(rows, "text", ["text", "sentence", "sentence1+sentence2"],
                                  "text_column")
        text_col = strings[0]
        pair_col = pair_col or (strings[1] if len(strings) > 1 else None)
    for col, option in ((text_col, "text_column"), (pair_col, "text_pair_column")):
        if col is not None and col not in cols:
            raise _missing_column(rows, f"'{col}'", cols, option)

    hub_names = _class_names(raw, label_col, settings)

    def label_of(row: Row) -> str:
        value = row.values.get(label_col)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{row.where}: the label ('{label_col}') is empty.",
                            hint="Every row needs a label; remove unlabeled rows.")
        if hub_names is not None:
            named = _named(value, hub_names, row.where, "label")
            if named is not None:
                return named
        if isinstance(value, float):
            if not value.is_integer():
                raise DataError(f"{row.where}: label {value} is not a class: regression "
                                "(e.g. GLUE stsb) is not supported.",
                                hint="Use class labels (strings or integers).")
            value = int(value)
        text = str(value).strip()
        if re.fullmatch(r"-?\d+\.0*", text):  # "2.0" in a CSV is the class 2
            text = text.split(".")[0]
        elif re.fullmatch(r"-?\d*\.\d+", text):
            raise DataError(f"{row.where}: label {text} is not a class: regression "
                            "(e.g. GLUE stsb) is not supported.",
                            hint="Use class labels (strings or integers).")
        return text

    def text_of(row: Row, col: str) -> str:
        value = row.values.get(col)
        if not _is_text(value) or not value.strip():
            raise DataError(f"{row.where}: the text ('{col}') is empty or not a string.",
                            hint="Every row needs a non-empty text; remove or fix the row.")
        return value

    train_labels = [label_of(r) for r in rows]
    if hub_names is not None:
        names = list(hub_names)
    elif all(re.fullmatch(r"-?\d+", x) for x in train_labels):
        names = [str(v) for v in sorted({int(x) for x in train_labels})]
    else:
        names = sorted(set(train_labels))
    if len(set(train_labels)) < 2:
        raise DataError(f"{raw.source}: the training data has only one label "
                        f"({train_labels[0]!r}); a classifier needs at least 2.")
    index = {name: i for i, name in enumerate(names)}

    def examples(split: list[Row], labels: list[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(split):
            label = labels[i] if labels is not None else label_of(row)
            if label not in index:
                raise _unknown_class(row.where, "label", label, names, hub_names is not None,
                                     raw)
            ex = {"text": text_of(row, text_col), "label": index[label]}
            if pair_col:
                ex["text_pair"] = text_of(row, pair_col)
            out.append(ex)
        return out

    return TextClassificationData(examples(rows, train_labels), examples(raw.val), names,
                                  text_col, pair_col)


@dataclass
class TokenClassificationData:
    """Checked token-classification examples: ``tokens`` (words) and ``tags`` (ids)."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    label_names: list[str]


def check_token_classification(raw: RawSplits, settings: TokenClassificationSettings
                               ) -> TokenClassificationData:
    """Words and tags per row; string tags are mapped in sorted order (``O`` first).

    Raises:
        DataError: missing columns, tokens not a list of strings, tags of another length, a
            validation tag the training data lacks.
    """
    rows = raw.train
    cols = _columns(rows)
    tokens_col = settings.tokens_column
    tags_col = settings.tags_column
    if tokens_col not in cols:
        raise _missing_column(rows, "tokens", [tokens_col], "tokens_column")
    if tags_col is None:
        tags_col = next((c for c in ("ner_tags", "tags", "labels", "pos_tags", "chunk_tags")
                         if c in cols), None)
        if tags_col is None:
            raise _missing_column(rows, "tags", ["ner_tags", "tags", "labels"], "tags_column")
    elif tags_col not in cols:
        raise _missing_column(rows, f"'{tags_col}'", cols, "tags_column")
    hub_names = _class_names(raw, tags_col, settings)

    def pair(row: Row) -> tuple[list[str], list[str]]:
        tokens, tags = row.values.get(tokens_col), row.values.get(tags_col)
        if isinstance(tokens, str) or not isinstance(tokens, list) or not tokens \
                or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{row.where}: '{tokens_col}' must be a non-empty list of words.",
                            hint='Use JSON/JSONL: {"tokens": ["EU", "rejects"], '
                                 '"ner_tags": ["B-ORG", "O"]}.')
        if not isinstance(tags, list) or len(tags) != len(tokens):
            n = len(tags) if isinstance(tags, list) else "no list of"
            raise DataError(f"{row.where}: {len(tokens)} tokens but {n} tags in '{tags_col}'.",
                            hint="Give exactly one tag per word.")
        if not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags):
            raise DataError(f"{row.where}: tags must be strings or integers.")
        if hub_names is None:
            return tokens, [str(t) for t in tags]
        return tokens, [_named(t, hub_names, row.where, "tag") or str(t) for t in tags]

    train_pairs = [pair(r) for r in rows]
    if hub_names is not None:
        names = list(hub_names)
    else:
        found = {t for _, tags in train_pairs for t in tags}
        if all(re.fullmatch(r"\d+", t) for t in found):
            names = [str(v) for v in range(max(int(t) for t in found) + 1)]
            logger.warning(
                "%s: the tags are bare integers without names, so entity precision/recall/F1 "
                "cannot tell 'O' from entities and score every integer (0 included) as an "
                "entity type. Give the names in id order: --train-kwargs "
                "'{\"label_names\": [\"O\", \"B-PER\", \"I-PER\", ...]}'.", raw.source)
        else:
            names = sorted(found, key=lambda t: (t != "O", t))
    index = {n: i for i, n in enumerate(names)}

    def examples(split: list[Row], pairs: list[tuple[list[str], list[str]]] | None = None
                 ) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(split):
            tokens, tags = pairs[i] if pairs is not None else pair(row)
            unknown = [t for t in tags if t not in index]
            if unknown:
                raise _unknown_class(row.where, "tag", unknown[0], names, hub_names is not None,
                                     raw)
            out.append({"tokens": tokens, "tags": [index[t] for t in tags]})
        return out

    return TokenClassificationData(examples(rows, train_pairs), examples(raw.val), names)


@dataclass
class QuestionAnsweringData:
    """Checked SQuAD-style examples: ``id``, ``question``, ``context``, ``answers``."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]


def check_question_answering(raw: RawSplits, settings: QuestionAnsweringSettings
                             ) -> QuestionAnsweringData:
    """``question``, ``context`` and ``answers`` (``text`` + ``answer_start`` lists, or a list
    of ``{"text", "answer_start"}``); each answer must be the context's text at its start.

    Raises:
        DataError: a column missing, an empty question/context, no answer in a training row,
            an answer span outside its context or not matching it, a validation id used twice.
    """
    rows = raw.train
    cols = _columns(rows)
    for col in ("question", "context", "answers"):
        if col not in cols:
            raise DataError(
                f"{rows[0].where.rsplit(',', 1)[0]}: no '{col}' column. Columns: "
                f"{', '.join(cols)}; SQuAD layout needs question, context and answers "
                '({"text": [...], "answer_start": [...]}).',
                hint="Convert the file to SQuAD's layout (JSON/JSONL).")

    def example(row: Row, index: int, need_answer: bool) -> dict[str, Any]:
        v = row.values
        question, context = v.get("question"), v.get("context")
        for name, value in (("question", question), ("context", context)):
            if not _is_text(value) or not value.strip():
                raise DataError(f"{row.where}: '{name}' is empty or not a string.")
        answers = v.get("answers")
        if isinstance(answers, list):  # [{"text": ..., "answer_start": ...}]
            if not all(isinstance(a, dict) for a in answers):
                raise DataError(f"{row.where}: 'answers' must hold objects with text and "
                                "answer_start.")
            answers = {"text": [a.get("text") for a in answers],
                       "answer_start": [a.get("answer_start") for a in answers]}
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
                or not isinstance(answers.get("answer_start"), list) \
                or len(answers["text"]) != len(answers["answer_start"]):
            raise DataError(f"{row.where}: 'answers' must be {{\"text\": [...], "
                            "\"answer_start\": [...]}} with lists of equal length.")
        if need_answer and not answers["text"]:
            raise DataError(f"{row.where}: no answer; training rows need one (SQuAD v1).",
                            hint="Remove unanswerable questions from the training data.")
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not _is_text(text) or not text or isinstance(start, bool) \
                    or not isinstance(start, int):
                raise DataError(f"{row.where}: each answer needs a non-empty text and an "
                                "integer answer_start.")
            if start < 0 or start + len(text) > len(context):
                raise DataError(
                    f"{row.where}: answer {text!r} at {start} lies outside its context "
                    f"({len(context)} characters).",
                    hint="answer_start is the character offset of the answer in the context.")
            if context[start:start + len(text)] != text:
                raise DataError(
                    f"{row.where}: answer {text!r} does not match the context at {start} "
                    f"(found {context[start:start + len(text)]!r}).",
                    hint="answer_start is the character offset of the answer in the context.")
        given = v.get("id")
        return {"id": f"#{index}" if given is None else str(given),
                "question": question.strip(), "context": context,
                "answers": {"text": list(answers["text"]),
                            "answer_start": list(answers["answer_start"])}}

    val = [example(r, i, False) for i, r in enumerate(raw.val)]
    seen: dict[str, str] = {}
    for row, ex in zip(raw.val, val):  # answers are scored per id: two questions cannot share one
        if ex["id"] in seen:
            raise DataError(f"{row.where}: id {ex['id']!r} is used again (first at "
                            f"{seen[ex['id']]}); validation questions need unique ids.",
                            hint="Give each question its own 'id', or leave 'id' out.")
        seen[ex["id"]] = row.where
    return QuestionAnsweringData([example(r, i, True) for i, r in enumerate(rows)], val)
