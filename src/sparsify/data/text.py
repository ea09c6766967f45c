"""NLP data: read CSV/JSON/JSONL files or a Hub dataset, check them for one task, split.

``--data`` may be

* a file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``): the training data; the validation rows
  are a seeded split of it;
* a folder: its data files are picked by name, ``*train*`` for training, ``*val*`` /
  ``*validation*`` / ``*dev*`` for validation (``*test*`` is ignored); without a validation
  file the split is taken from the training file;
* a Hugging Face Hub dataset id (``rotten_tomatoes``, ``conll2003``, ``squad``,
  ``org/name``) or a GLUE task name (``sst2`` means ``glue/sst2``), loaded through ``datasets``.

Each task checks its own columns (:mod:`sparsify.data.text_tasks`) and every problem is a
:class:`~sparsify.errors.DataError` naming the file, the row (line for CSV and JSONL) and the
fix. Data without a validation part is split by :func:`sparsify.data.split.split_items`
(stratified by label for text classification) and the split is recorded in the run folder
(``data_split.json``, kind ``text``).

Pure Python apart from ``datasets`` for Hub data: no torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsify.data.split import split_items, write_split_record
from sparsify.data.text_tasks import (  # Row, RawSplits: the records every task checks
    RawSplits,
    Row,
    check_question_answering,
    check_text_classification,
    check_token_classification,
)
from sparsify.errors import DataError
from sparsify.families import TextSettings

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


#: the Hub's Parquet conversion of a dataset repository (every public dataset has one)
PARQUET_REVISION = "refs/convert/parquet"


def _load_dataset(datasets: Any, name: str, config: str | None) -> Any:
    """``datasets.load_dataset``; a dataset that ships only a loading script (``conll2003``,
    ``squad`` in some mirrors), which current ``datasets`` no longer runs, is read from the
    Hub's Parquet conversion instead."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - the message is the only sign of a script dataset
        if "scripts are no longer supported" not in str(exc):
            raise
        logger.info("Dataset %s ships a loading script: reading the Hub's Parquet conversion "
                    "(%s)", name, PARQUET_REVISION)
        return datasets.load_dataset(name, config, revision=PARQUET_REVISION)


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
        dsd = _load_dataset(datasets, name, config)
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
    """The rows split by :func:`sparsify.data.split.split_items` (stratified by ``stratify``,
    one key per row, when given). Returns train, val (each in file order), the val row indices.

    Raises:
        DataError: ``val_fraction`` outside (0, 1), or fewer than 2 rows.
    """
    if len(rows) < 2:
        raise DataError(f"{rows[0].where if rows else 'The data'}: {len(rows)} row(s) cannot be "
                        "split into training and validation data.",
                        hint="Add rows or give a separate validation file.")
    _, val_idx = split_items(list(range(len(rows))), val_fraction, seed, stratify)
    chosen = set(val_idx)
    return [r for i, r in enumerate(rows) if i not in chosen], [rows[i] for i in val_idx], val_idx


def load_task_data(data: str, family: str, settings: TextSettings, seed: int,
                   split_record: Path | None = None) -> Any:
    """Read, split when needed, and check the data of one NLP task family.

    Returns a :class:`~sparsify.data.text_tasks.TextClassificationData`,
    :class:`~sparsify.data.text_tasks.TokenClassificationData` or
    :class:`~sparsify.data.text_tasks.QuestionAnsweringData`, limited to
    ``max_train_samples`` / ``max_eval_samples``. ``settings`` is the family's settings object
    (:func:`sparsify.families.settings_for`), where the defaults live. Data without a
    validation part is split (:func:`split_rows`); the split is then recorded at
    ``split_record`` (kind ``text``, see :mod:`sparsify.data.split`).
    """
    raw = load_raw_splits(data)
    if not raw.val:
        fraction = float(settings.val_fraction)
        stratify, label_col = None, None
        if family == "text_classification":
            label_col = settings.label_column
            stratify = [str(r.values.get(label_col)) for r in raw.train]
        n = len(raw.train)
        raw.train, raw.val, val_idx = split_rows(raw.train, fraction, seed, stratify)
        raw.auto_split = True
        if split_record is not None:
            chosen = set(val_idx)
            write_split_record(
                split_record, kind="text", source=raw.source, split="seeded", seed=seed,
                val_fraction=fraction, item="the 0-based index of a record in source",
                task=family, stratified_by=label_col,
                train=[i for i in range(n) if i not in chosen], val=val_idx)
        logger.info("No validation data: %d of %d rows of %s held out (seed %d)", len(val_idx),
                    n, raw.source, seed)
    checker = {"text_classification": check_text_classification,
               "token_classification": check_token_classification,
               "question_answering": check_question_answering}[family]
    checked = checker(raw, settings)
    if settings.max_train_samples:
        checked.train = _subsample(checked.train, settings.max_train_samples, seed)
    if settings.max_eval_samples:
        checked.val = _subsample(checked.val, settings.max_eval_samples, seed + 1)
    if not checked.val:
        raise DataError(f"{raw.val_source or raw.source}: the validation data is empty.")
    return checked


def _subsample(items: list[Any], n: int, seed: int) -> list[Any]:
    if n >= len(items):
        return items
    picked = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in picked]
