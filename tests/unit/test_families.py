"""The family registry: every use case has a family, every --train-kwargs key of a family is
read by that family's trainer (or its data layer), and every other key is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import sparsify
from sparsify.cli.main import cli
from sparsify.errors import TrainKwargsError
from sparsify.families import FAMILIES, check_train_kwargs, describe, setting_fields, settings_for
from sparsify.plan import parse_train_kwargs
from sparsify.usecases import USE_CASES, resolve_use_case

SRC = Path(sparsify.__file__).parent
#: where each family's trainer reads its settings: the trainer and the data layer it calls
READERS = {
    "image_classification": ("trainers/image_classification.py",),
    "text_classification": ("trainers/nlp.py", "data/text.py", "data/text_tasks.py"),
    "token_classification": ("trainers/nlp.py", "data/text.py", "data/text_tasks.py"),
    "question_answering": ("trainers/nlp.py", "data/text.py", "data/text_tasks.py"),
    "detection": ("trainers/detection.py",),
    "segmentation": ("trainers/detection.py",),
}
#: settings every NLP family accepts but only some data layouts read
PAIRS = [(family, key) for family in FAMILIES for key in setting_fields(family)]


def _source(family: str) -> str:
    return "\n".join((SRC / name).read_text() for name in READERS[family] if (SRC / name).exists())


def test_every_use_case_has_a_family():
    assert {uc.family for uc in USE_CASES} == set(FAMILIES)


@pytest.mark.parametrize("family, key", PAIRS)
def test_every_accepted_key_is_read_by_the_family_trainer(family, key):
    text = _source(family)
    read = (re.search(rf"settings\.{key}\b", text) or re.search(rf"getattr\(settings, \"{key}\"", text)
            or re.search(rf"kw(?:\.get\(|\[)\"{key}\"", text))
    assert read, f"--train-kwargs '{key}' is accepted for {family} but its trainer never reads it"


@pytest.mark.parametrize("family, key", PAIRS)
def test_every_accepted_key_reaches_the_settings(family, key):
    field = setting_fields(family)[key]
    value = {"int": 3, "float": 0.25, "str": "x", "bool": True, "list": ["a", "b"]}[
        str(field.type).split(" ")[0]]
    if field.metadata.get("choices"):
        value = field.metadata["choices"][-1]
    given = check_train_kwargs({key: value}, family, family)
    assert getattr(settings_for(family, given), key) == value


@pytest.mark.parametrize("use_case, key", [
    ("yolo", "max_train_samples"), ("yolo", "max_eval_samples"),
    ("yolo", "gradient_accumulation_steps"), ("yolo", "eval_batch_size"),
    ("ic", "max_seq_length"), ("qa", "image_size"), ("ner", "text_column"),
    ("sentiment_analysis", "doc_stride"),
])
def test_a_key_of_another_family_is_refused_naming_the_valid_ones(use_case, key):
    uc = resolve_use_case(use_case)
    with pytest.raises(TrainKwargsError) as info:
        parse_train_kwargs(f'{{"{key}": 1}}', uc)
    message = info.value.message
    assert f"'{key}'" in message and "Valid: " in message
    for valid in setting_fields(uc.family):
        assert valid in message


def test_nlp_optimizer_choices_are_what_the_hf_trainer_maps():
    from sparsify.trainers.nlp import _HF_OPTIMIZERS

    assert set(setting_fields("text_classification")["optimizer"].metadata["choices"]) == set(
        _HF_OPTIMIZERS)
    with pytest.raises(TrainKwargsError, match="one of adamw, sgd"):
        parse_train_kwargs('{"optimizer": "adam"}', resolve_use_case("glue"))


def test_train_kwargs_command_lists_keys_with_defaults():
    result = CliRunner().invoke(cli, ["train-kwargs", "yolo"])
    assert result.exit_code == 0, result.output
    for name, default, _ in describe("detection"):
        assert re.search(rf"{name}\s+default {re.escape(default)}", result.output)
    assert "max_train_samples" not in result.output
    bad = CliRunner().invoke(cli, ["train-kwargs", "yoloo"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
