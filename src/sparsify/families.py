"""Trainer families: one record per family naming its trainer, the packages it needs, the
metric its export is judged by, and its typed ``--train-kwargs`` settings.

Light: no torch. The CLI validates ``--train-kwargs`` against a family's settings before any
heavy import; the trainers read the same dataclass (:func:`settings_for`), so a key is either
used by the family's trainer or refused for it with the valid list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from sparsify.errors import TrainKwargsError, did_you_mean


def _setting(default: Any, help: str, check: str = "", choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "check": check, "choices": choices})


def _checkpoint_steps() -> Any:
    return _setting(None, "also write a resumable checkpoint every N optimizer steps (default: "
                          "at the end of every epoch only)", "positive")


@dataclass(frozen=True)
class CommonSettings:
    """Settings every trainer reads."""

    batch_size: int | None = _setting(None, "training batch size per process", "positive")
    learning_rate: float | None = _setting(
        None, "peak learning rate (a recipe's LR modifier sets the schedule from it); images: "
              "0.01 with sgd, else 0.001", "nonnegative")
    weight_decay: float | None = _setting(
        None, "optimizer weight decay; images: 1e-4 with sgd, else 0.01", "nonnegative")
    num_workers: int | None = _setting(None, "data-loading worker processes", "nonnegative")
    val_fraction: float | None = _setting(
        None, "share of the data held out for validation when the data has no validation split",
        "fraction")


@dataclass(frozen=True)
class ImageSettings(CommonSettings):
    """Image classification (our loop)."""

    optimizer: str = _setting("sgd", "optimizer", choices=("sgd", "adamw", "adam"))
    eval_batch_size: int | None = _setting(None, "validation batch size (default: batch_size)",
                                           "positive")
    gradient_accumulation_steps: int = _setting(1, "batches per optimizer step", "positive")
    max_train_samples: int | None = _setting(None, "use at most this many training images",
                                             "positive")
    max_eval_samples: int | None = _setting(None, "use at most this many validation images",
                                            "positive")
    image_size: int = _setting(224, "input size in pixels (center crop)", "positive")
    arch_key: str | None = _setting(None, "architecture of a plain state-dict checkpoint")
    checkpoint_steps: int | None = _checkpoint_steps()


@dataclass(frozen=True)
class TextSettings(CommonSettings):
    """Text classification, token classification and question answering (HF Trainer)."""

    optimizer: str = _setting("adamw", "optimizer", choices=("adamw", "sgd"))
    eval_batch_size: int = _setting(32, "batch size of the validation passes", "positive")
    gradient_accumulation_steps: int = _setting(1, "batches per optimizer step", "positive")
    max_train_samples: int | None = _setting(None, "use at most this many training examples",
                                             "positive")
    max_eval_samples: int | None = _setting(None, "use at most this many validation examples",
                                            "positive")
    max_seq_length: int | None = _setting(
        None, "tokens per example (default 128; 384 for question answering)", "positive")
    trust_remote_code: bool = _setting(False, "allow a Hub model's own Python code")
    checkpoint_steps: int | None = _checkpoint_steps()


@dataclass(frozen=True)
class LabelledTextSettings(TextSettings):
    """Text tasks with classes (question answering has none)."""

    label_names: list | None = _setting(
        None, "class names in id order, for integer labels/tags in local files", "names")


@dataclass(frozen=True)
class TextClassificationSettings(LabelledTextSettings):
    text_column: str | None = _setting(None, "column of the text (default: text/sentence)")
    text_pair_column: str | None = _setting(None, "column of the second text of a pair")
    label_column: str = _setting("label", "column of the label")


@dataclass(frozen=True)
class TokenClassificationSettings(LabelledTextSettings):
    tokens_column: str = _setting("tokens", "column of the word list")
    tags_column: str | None = _setting(None, "column of the tags (default: ner_tags/tags)")


@dataclass(frozen=True)
class QuestionAnsweringSettings(TextSettings):
    doc_stride: int | None = _setting(
        None, "overlap of the windows of a long context (default: max_seq_length / 3, at most "
              "128)", "positive")


@dataclass(frozen=True)
class YoloSettings(CommonSettings):
    """Detection and segmentation (Ultralytics trainer: one batch is one optimizer step)."""

    optimizer: str = _setting("adamw", "optimizer", choices=("adamw", "sgd", "adam"))
    image_size: int = _setting(640, "letterboxed input size in pixels", "positive")


@dataclass(frozen=True)
class Family:
    """One trainer family."""

    id: str
    #: "module:function" building the family's task
    trainer: str
    #: packages (besides torch, onnx, onnxruntime, accelerate) checked before a run starts
    modules: tuple[str, ...]
    #: the task metric the export's fidelity is judged by
    export_metric: str
    settings: type[CommonSettings]
    #: built-in defaults where the family's trainer differs from the settings' own
    defaults: dict[str, Any] = field(default_factory=dict)
    #: whether the trainer distils from a teacher (``--teacher auto`` trains one first)
    distills: bool = True


FAMILIES: dict[str, Family] = {f.id: f for f in (
    Family("image_classification",
           "sparsify.trainers.image_classification:run_image_classification",
           ("torchvision", "PIL"), "top1", ImageSettings,
           {"batch_size": 32, "val_fraction": 0.1}),
    Family("text_classification", "sparsify.trainers.nlp:run_nlp", ("transformers", "datasets"),
           "accuracy", TextClassificationSettings,
           {"batch_size": 16, "learning_rate": 5e-5, "weight_decay": 0.01, "num_workers": 0,
            "val_fraction": 0.1}),
    Family("token_classification", "sparsify.trainers.nlp:run_nlp", ("transformers", "datasets"),
           "f1", TokenClassificationSettings,
           {"batch_size": 16, "learning_rate": 5e-5, "weight_decay": 0.01, "num_workers": 0,
            "val_fraction": 0.1}),
    Family("question_answering", "sparsify.trainers.nlp:run_nlp", ("transformers", "datasets"),
           "f1", QuestionAnsweringSettings,
           {"batch_size": 16, "learning_rate": 5e-5, "weight_decay": 0.01, "num_workers": 0,
            "val_fraction": 0.1}),
    Family("detection", "sparsify.trainers.detection:run_detection",
           ("torchvision", "ultralytics"), "map50_95", YoloSettings,
           {"batch_size": 16, "learning_rate": 0.001, "weight_decay": 0.0005, "num_workers": 0,
            "val_fraction": 0.2}, distills=False),
    Family("segmentation", "sparsify.trainers.detection:run_detection",
           ("torchvision", "ultralytics"), "map50_95", YoloSettings,
           {"batch_size": 16, "learning_rate": 0.001, "weight_decay": 0.0005, "num_workers": 0,
            "val_fraction": 0.2}, distills=False),
)}


def family(family_id: str) -> Family:
    return FAMILIES[family_id]


def setting_fields(family_id: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FAMILIES[family_id].settings)}


def settings_for(family_id: str, given: dict[str, Any]) -> Any:
    """The family's settings: ``given`` (checked by :func:`check_train_kwargs`) over the
    family's defaults over the settings' own."""
    fam = FAMILIES[family_id]
    return fam.settings(**{**fam.defaults, **given})


def describe(family_id: str) -> list[tuple[str, str, str]]:
    """``(key, default, help)`` of every setting of a family, for ``sparsify.run train-kwargs``."""
    fam = FAMILIES[family_id]
    rows = []
    for name, f in setting_fields(family_id).items():
        default = fam.defaults.get(name, f.default)
        choices = f.metadata.get("choices")
        text = f.metadata["help"] + (f" ({' / '.join(choices)})" if choices else "")
        rows.append((name, "derived" if default is None else json.dumps(default), text))
    return rows


def _type_name(annotation: str) -> tuple[type, str]:
    for name, kind in (("int", int), ("float", float), ("str", str), ("bool", bool),
                       ("list", list)):
        if annotation.startswith(name):
            return kind, {"list": "a list of names"}.get(name, name)
    raise AssertionError(annotation)  # pragma: no cover - every setting has one of these


def check_train_kwargs(value: dict[str, Any], family_id: str, use_case_id: str
                       ) -> dict[str, Any]:
    """Check ``--train-kwargs`` keys and values against the family's settings.

    Returns:
        The given keys, values normalised (an integer for a float setting becomes a float).

    Raises:
        TrainKwargsError: a key the family's trainer does not read (the valid ones listed), or
            a value of the wrong type or out of range.
    """
    fields = setting_fields(family_id)
    out: dict[str, Any] = {}
    for key, val in value.items():
        if key not in fields:
            others = sorted(f for f, fam in FAMILIES.items()
                            if key in setting_fields(f) and f != family_id)
            why = (f" ({key} applies to {', '.join(others)} only)" if others else "")
            raise TrainKwargsError(
                f"Unknown --train-kwargs key '{key}' for {use_case_id}{why}."
                f"{did_you_mean(key, fields)} Valid: {', '.join(sorted(fields))}."
                " `sparsify.run train-kwargs " + use_case_id + "` lists them with defaults.")
        f = fields[key]
        kind, kind_name = _type_name(str(f.type))
        if kind is float and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if (isinstance(val, bool) and kind is not bool) or not isinstance(val, kind):
            raise TrainKwargsError(f"--train-kwargs '{key}' must be {kind_name}, got "
                                   f"{json.dumps(val)}.")
        check, choices = f.metadata.get("check"), f.metadata.get("choices")
        if choices:
            val = val.lower()
        if choices and val not in choices:
            raise TrainKwargsError(f"--train-kwargs '{key}' must be one of {', '.join(choices)} "
                                   f"for {use_case_id}, got {json.dumps(val)}.")
        if check == "positive" and val <= 0:
            raise TrainKwargsError(f"--train-kwargs '{key}' must be > 0, got {val}.")
        if check == "nonnegative" and val < 0:
            raise TrainKwargsError(f"--train-kwargs '{key}' must be >= 0, got {val}.")
        if check == "fraction" and not 0.0 < val < 1.0:
            raise TrainKwargsError(f"--train-kwargs '{key}' must be in (0, 1), got {val}.")
        if check == "names" and (not val or not all(isinstance(n, str) and n.strip() for n in val)
                                 or len(set(val)) != len(val)):
            raise TrainKwargsError(
                f"--train-kwargs '{key}' must be a list of distinct non-empty names, in "
                f'class-id order (e.g. ["O", "B-PER", "I-PER"]), got {json.dumps(val)}.')
        out[key] = val
    return out
