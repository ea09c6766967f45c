"""NLP data: read CSV/JSON/JSONL files or a Hub dataset, check them for one task, split.

``--data`` may be

* a file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``): the training data; the validation rows
  are a seeded split of it;
* a folder: its data files are picked by name, ``*train*`` for training, ``*val*`` /
  ``*validation*`` / ``*dev*`` for validation (``*test*`` is ignored); without a validation
  file the split is taken from the training file;
* a Hugging Face Hub dataset id (``rotten_tomatoes``, ``conll2003``, ``squad``,
  ``org/name``) or a GLUE task name (``sst2`` means ``glue/sst2``), loaded through ``datasets``.

Each task checks its own columns (:func:`check_text_classification`,
:func:`check_token_classification`, :func:`check_question_answering`) and every problem is a
:class:`~sparsify.errors.DataError` naming the file, the row (line for CSV and JSONL) and the
fix. The split actually used is recorded in the run folder (``data_split.json``).

Pure Python apart from ``datasets`` for Hub data: no torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify.errors import DataError
from sparsify.rundir import write_text_atomic

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
TRAIN_PATTERN = re.compile(r"train", re.I)
VAL_PATTERN = re.compile(r"val|valid|validation|dev", re.I)
TEST_PATTERN = re.compile(r"test", re.I)

#: GLUE task -> (text column, pair column or None, validation split name).
GLUE_TASKS: dict[str, tuple[str, str | None, str]] = {
    "cola": ("sentence", None, "validation"),
    "sst2": ("sentence", None, "validation"),
    "mrpc": ("sentence1", "sentence2", "validation"),
    "qqp": ("question1", "question2", "validation"),
    "stsb": ("sentence1", "sentence2", "validation"),
    "mnli": ("premise", "hypothesis", "validation_matched"),
    "qnli": ("question", "sentence", "validation"),
    "rte": ("sentence1", "sentence2", "validation"),
    "wnli": ("sentence1", "sentence2", "validation"),
}


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


# --- reading files ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text: byte {exc.start} (line {line}) cannot be decoded.",
            hint="Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`).",
        ) from None
    if not text.strip():
        raise DataError(f"{path} is empty.", hint="Give a file with a header row and data rows.")
    return text


def read_rows(path: Path) -> list[Row]:
    """Every record of a ``.csv``/``.tsv``/``.json``/``.jsonl`` file.

    JSON may be a list of objects, an object holding such a list under ``data`` (also SQuAD's
    nested ``data/paragraphs/qas`` form, flattened here), or one object per line.

    Raises:
        DataError: unreadable, not UTF-8, empty, malformed (with the line), or no records.
    """
    text = _read_text(path)
    suffix = path.suffix.lower()
    rows: list[Row] = []
    if suffix in (".csv", ".tsv"):
        # newline="": only \n / \r\n end a record (str.splitlines would also split at
        # U+2028 and other separators inside a text); TSV has no quoting (as GLUE's files)
        tsv = suffix == ".tsv"
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        if not reader.fieldnames or not any(f and f.strip() for f in reader.fieldnames):
            raise DataError(f"{path} has no header row.",
                            hint="The first line must name the columns, e.g. text,label.")
        try:
            for record in reader:
                if None in record:
                    raise DataError(
                        f"{path}, line {reader.line_num}: {len(record) - 1 + len(record[None])} "
                        f"fields, the header has {len(reader.fieldnames)}.",
                        hint="Quote fields that contain the delimiter (\"like, this\").")
                if all(v in (None, "") for v in record.values()):
                    continue
                rows.append(Row(dict(record), f"{path}, line {reader.line_num}"))
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).") from None
    elif suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith(("[", "{"))):
        rows = _jsonl_rows(path, text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # one object per line in a .json file
                rows = _jsonl_rows(path, text)
                value = None
            else:
                raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}).") from None
        if value is not None:
            rows = _json_rows(path, value)
    if not rows:
        raise DataError(f"{path} holds no records.", hint="Add data rows below the header.")
    return rows


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg}).",
                            hint="JSON Lines holds one JSON object per line.") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got "
                            f"{type(value).__name__}.")
        rows.append(Row(value, f"{path}, line {number}"))
    return rows


def _json_rows(path: Path, value: Any) -> list[Row]:
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        items = value["data"]
        if items and isinstance(items[0], dict) and "paragraphs" in items[0]:
            return _squad_nested_rows(path, items)
        value = items
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of records (or {{\"data\": [...]}}), got "
                        f"{type(value).__name__}.")
    rows = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}, record {index}: expected a JSON object, got "
                            f"{type(item).__name__}.")
        rows.append(Row(item, f"{path}, record {index}"))
    return rows


def _squad_nested_rows(path: Path, articles: list[Any]) -> list[Row]:
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                answers = qa.get("answers", [])
                rows.append(Row({
                    "id": qa.get("id", f"{a}-{p}-{q}"), "question": qa.get("question"),
                    "context": context,
                    "answers": {"text": [x.get("text") for x in answers],
                                "answer_start": [x.get("answer_start") for x in answers]},
                }, f"{path}, data[{a}].paragraphs[{p}].qas[{q}]"))
    return rows


def pick_split_files(folder: Path) -> tuple[Path, Path | None]:
    """The training and (optional) validation file of a folder, picked by name.

    Raises:
        DataError: no data file, no training file, or two candidates for one role.
    """
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no data file ({', '.join(DATA_SUFFIXES)}).",
                        hint="Put train.csv (and val.csv) there, or pass a file with --data.")
    train = [p for p in files if TRAIN_PATTERN.search(p.stem)]
    val = [p for p in files if VAL_PATTERN.search(p.stem) and p not in train]
    if not train:
        rest = [p for p in files if p not in val and not TEST_PATTERN.search(p.stem)]
        if len(rest) == 1:
            train = rest
    for role, found in (("training", train), ("validation", val)):
        if len(found) > 1:
            raise DataError(f"{folder} has {len(found)} {role} files: "
                            f"{', '.join(p.name for p in found)}.",
                            hint="Keep one file per split (train.*, val.*), or pass the file.")
    if not train:
        raise DataError(f"{folder} has no training file: {', '.join(p.name for p in files)}.",
                        hint="Name it with 'train' (train.csv, train.jsonl).")
    return train[0], (val[0] if val else None)


# --- Hub datasets ----------------------------------------------------------------------------


def looks_like_hub_dataset(spec: str) -> bool:
    """``name`` or ``org/name`` (letters, digits, ``-_.``), not an existing path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", spec)) \
        and not spec.lower().endswith(DATA_SUFFIXES)


def load_hub_dataset(spec: str) -> RawSplits:
    """A dataset from the Hub (or the ``datasets`` cache), train + validation.

    Raises:
        DataError: ``datasets`` cannot load it (offline and not cached, unknown name), or it
            has no training split.
    """
    import datasets

    name, config = spec, None
    if spec.lower() in GLUE_TASKS:
        name, config = "nyu-mll/glue", spec.lower()
    elif spec.lower().startswith("glue/") and spec.split("/", 1)[1].lower() in GLUE_TASKS:
        name, config = "nyu-mll/glue", spec.split("/", 1)[1].lower()
    try:
        dsd = datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds: connection, not found, config
        raise DataError(
            f"Could not load the dataset '{spec}' from the Hugging Face Hub or its cache: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="Check the name and your connection (offline, only datasets already in the "
                 "cache load), or pass local files: --data ./train.csv or a folder with "
                 "train/val files.",
        ) from None
    if "train" not in dsd:
        raise DataError(f"Dataset '{spec}' has no train split (it has {', '.join(dsd)}).")
    val_name = GLUE_TASKS[config][2] if config else next(
        (s for s in ("validation", "valid", "dev", "val", "test") if s in dsd), None)
    if val_name == "test" and "label" in dsd["test"].column_names \
            and set(dsd["test"]["label"][:50]) == {-1}:
        val_name = None  # GLUE-style test splits carry no labels
    names = {}
    for column, feature in dsd["train"].features.items():
        inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) for NER tags
        if hasattr(inner, "names"):
            names[column] = list(inner.names)

    def rows(split: str) -> list[Row]:
        return [Row(r, f"{spec}[{split}] row {i}") for i, r in enumerate(dsd[split])]

    return RawSplits(rows("train"), rows(val_name) if val_name else [], f"hub:{spec}",
                     f"hub:{spec}[{val_name}]" if val_name else "", names,
                     GLUE_TASKS[config][:2] if config else None)


def load_raw_splits(data: str) -> RawSplits:
    """Read ``--data`` (file, folder, or Hub id) into train and validation rows.

    Raises:
        DataError: missing path, unreadable or malformed file, unknown dataset.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        train_file, val_file = pick_split_files(path)
        return RawSplits(read_rows(train_file), read_rows(val_file) if val_file else [],
                         str(train_file), str(val_file) if val_file else "")
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise DataError(f"{path}: unsupported file type '{path.suffix}'. Valid: "
                            f"{', '.join(DATA_SUFFIXES)}.")
        return RawSplits(read_rows(path), [], str(path), "")
    if looks_like_hub_dataset(data) and not data.startswith("."):
        return load_hub_dataset(data)
    raise DataError(f"Data path '{data}' does not exist.",
                    hint="Give a .csv/.json/.jsonl file, a folder with train/val files, or a "
                         "Hub dataset id (sst2, rotten_tomatoes, conll2003, squad).")


def split_rows(rows: list[Row], val_fraction: float, seed: int,
               stratify: Sequence[Any] | None = None) -> tuple[list[Row], list[Row], list[int]]:
    """A seeded train/val split; stratified by ``stratify`` (one key per row) when given, with
    at least one validation row per key. Returns train, val, the val row indices."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if len(rows) < 2:
        raise DataError(f"{rows[0].where if rows else 'The data'}: {len(rows)} row(s) cannot be "
                        "split into training and validation data.",
                        hint="Add rows or give a separate validation file.")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(stratify[i] if stratify is not None else 0, []).append(i)
    val_idx: list[int] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        # at least one validation row per key, and always one left for training
        take = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val_idx.extend(members[:take])
    if not val_idx:
        val_idx = [rng.randrange(len(rows))]
    chosen = set(val_idx)
    return ([r for i, r in enumerate(rows) if i not in chosen],
            [rows[i] for i in sorted(chosen)], sorted(chosen))


def write_split_record(path: Path, source: str, val_indices: list[int], seed: int,
                       val_fraction: float, n_rows: int) -> None:
    """Record which rows of ``source`` became validation rows (for reproducing the run)."""
    write_text_atomic(path, json.dumps({
        "source": source, "seed": seed, "val_fraction": val_fraction, "rows": n_rows,
        "val_row_indices": val_indices}, indent=1) + "\n")


# --- task checks -----------------------------------------------------------------------------


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


def _class_names(raw: RawSplits, column: str, kw: dict[str, Any]) -> list[str] | None:
    """Names of integer classes in ``column``: the Hub dataset's ClassLabel names, else
    ``--train-kwargs label_names``, else None (integers stay their own names)."""
    names = raw.label_names.get(column)
    return list(names) if names is not None else kw.get("label_names")


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


def check_text_classification(raw: RawSplits, kw: dict[str, Any]) -> TextClassificationData:
    """Find the text / pair / label columns and map labels to ids (sorted names).

    Raises:
        DataError: a column missing, an empty text or label, a validation label the training
            data lacks.
    """
    rows = raw.train
    cols = _columns(rows)
    label_col = kw.get("label_column", "label")
    if label_col not in cols:
        raise _missing_column(rows, "label", [label_col], "label_column")
    text_col, pair_col = kw.get("text_column"), kw.get("text_pair_column")
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

    hub_names = _class_names(raw, label_col, kw)

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


def check_token_classification(raw: RawSplits, kw: dict[str, Any]) -> TokenClassificationData:
    """Words and tags per row; string tags are mapped in sorted order (``O`` first).

    Raises:
        DataError: missing columns, tokens not a list of strings, tags of another length, a
            validation tag the training data lacks.
    """
    rows = raw.train
    cols = _columns(rows)
    tokens_col = kw.get("tokens_column", "tokens")
    tags_col = kw.get("tags_column")
    if tokens_col not in cols:
        raise _missing_column(rows, "tokens", [tokens_col], "tokens_column")
    if tags_col is None:
        tags_col = next((c for c in ("ner_tags", "tags", "labels", "pos_tags", "chunk_tags")
                         if c in cols), None)
        if tags_col is None:
            raise _missing_column(rows, "tags", ["ner_tags", "tags", "labels"], "tags_column")
    elif tags_col not in cols:
        raise _missing_column(rows, f"'{tags_col}'", cols, "tags_column")
    hub_names = _class_names(raw, tags_col, kw)

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


def check_question_answering(raw: RawSplits, kw: dict[str, Any]) -> QuestionAnsweringData:
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


def load_task_data(data: str, family: str, kw: dict[str, Any], seed: int,
                   split_record: Path | None = None) -> Any:
    """Read, split when needed, and check the data of one NLP task family.

    Returns a :class:`TextClassificationData`, :class:`TokenClassificationData` or
    :class:`QuestionAnsweringData`, limited to ``max_train_samples`` / ``max_eval_samples``.
    """
    raw = load_raw_splits(data)
    if not raw.val:
        fraction = float(kw.get("val_fraction", 0.1))
        stratify = None
        if family == "text_classification":
            label_col = kw.get("label_column", "label")
            stratify = [str(r.values.get(label_col)) for r in raw.train]
        n = len(raw.train)
        raw.train, raw.val, val_idx = split_rows(raw.train, fraction, seed, stratify)
        raw.auto_split = True
        if split_record is not None:
            write_split_record(split_record, raw.source, val_idx, seed, fraction, n)
        logger.info("No validation data: %d of %d rows of %s held out (seed %d)", len(val_idx),
                    n, raw.source, seed)
    checker = {"text_classification": check_text_classification,
               "token_classification": check_token_classification,
               "question_answering": check_question_answering}[family]
    checked = checker(raw, kw)
    if kw.get("max_train_samples"):
        checked.train = _subsample(checked.train, int(kw["max_train_samples"]), seed)
    if kw.get("max_eval_samples"):
        checked.val = _subsample(checked.val, int(kw["max_eval_samples"]), seed + 1)
    if not checked.val:
        raise DataError(f"{raw.val_source or raw.source}: the validation data is empty.")
    return checked


def _subsample(items: list[Any], n: int, seed: int) -> list[Any]:
    if n >= len(items):
        return items
    picked = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in picked]
