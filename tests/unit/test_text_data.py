"""NLP data: reading files, picking columns, labels, splits, and every malformed input as a
clear DataError (exit code 1 through the CLI, no traceback, no run folder)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsify.cli.main import cli
from sparsify.data.synthetic_text import (
    entity_rows, question_rows, sentiment_rows, write_csv, write_jsonl,
)
from sparsify.data.text import load_task_data as _load_task_data
from sparsify.data.text import pick_split_files, read_rows
from sparsify.errors import DataError
from sparsify.families import settings_for

pytest.importorskip("transformers")


def load_task_data(data, family, kw, seed, split_record=None):
    """The data layer with ``kw`` as --train-kwargs (over the family's defaults)."""
    return _load_task_data(data, family, settings_for(family, kw), seed, split_record)


def run_cli(tmp_path, use_case, data):
    work = tmp_path / "work"
    model = tmp_path / "model"  # a folder that exists: the data is checked before it is read
    model.mkdir(exist_ok=True)
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", use_case, "--data",
                                      str(data), "--model", str(model),
                                      "--working-dir", str(work)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert not work.exists() or not any(work.iterdir()), "a failed data check left a run folder"
    return result.output


# --- malformed inputs through the CLI ---------------------------------------------------------


def test_missing_label_column(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\ngood film,5\nbad film,1\n")
    out = run_cli(tmp_path, "sentiment", path)
    assert "reviews.csv: no label column. Columns: review, stars" in out
    assert '"label_column": "COLUMN"' in out


def test_empty_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("\n  \n")
    assert "train.csv is empty" in run_cli(tmp_path, "text_classification", path)


def test_header_only_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n")
    assert "train.csv holds no records" in run_cli(tmp_path, "text_classification", path)


def test_not_utf8(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\ngood,1\ncaf\xe9 bad,0\n".encode("latin-1"))
    out = run_cli(tmp_path, "sentiment", path)
    assert "train.csv is not UTF-8 text" in out and "line 3" in out and "iconv" in out


def test_validation_label_missing_from_training(tmp_path):
    write_csv(tmp_path / "data" / "train.csv", sentiment_rows(20))
    write_csv(tmp_path / "data" / "val.csv",
              [{"text": "it was fine", "label": "positive"}, {"text": "meh", "label": "neutral"}])
    out = run_cli(tmp_path, "sentiment", tmp_path / "data")
    assert "val.csv, line 3: label 'neutral' does not occur in the training data" in out
    assert "negative, positive" in out


def test_answer_span_outside_context(tmp_path):
    rows = question_rows(4)
    rows[2]["answers"]["answer_start"] = [len(rows[2]["context"])]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    out = run_cli(tmp_path, "qa", tmp_path / "qa.jsonl")
    assert "qa.jsonl, line 3: answer" in out and "lies outside its context" in out


def test_answer_not_matching_context(tmp_path):
    rows = question_rows(4)
    rows[1]["answers"]["answer_start"] = [0]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    out = run_cli(tmp_path, "qa", tmp_path / "qa.jsonl")
    assert "qa.jsonl, line 2: answer" in out and "does not match the context at 0" in out


def test_duplicate_validation_question_ids(tmp_path):
    write_jsonl(tmp_path / "qa" / "train.jsonl", question_rows(6))
    val = question_rows(4, seed=1)
    val[3]["id"] = val[1]["id"]
    write_jsonl(tmp_path / "qa" / "val.jsonl", val)
    out = run_cli(tmp_path, "qa", tmp_path / "qa")
    assert "val.jsonl, line 4: id 'q1' is used again (first at" in out
    assert "val.jsonl, line 2" in out and "unique ids" in out


def test_qa_missing_column(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "q?", "context": "c"}] * 3)
    out = run_cli(tmp_path, "qa", tmp_path / "qa.jsonl")
    assert "no 'answers' column" in out and "SQuAD layout" in out


def test_tags_of_another_length(tmp_path):
    rows = entity_rows(6)
    rows[4]["ner_tags"] = rows[4]["ner_tags"][:-1]
    write_jsonl(tmp_path / "ner.jsonl", rows)
    out = run_cli(tmp_path, "ner", tmp_path / "ner.jsonl")
    assert "ner.jsonl, line 5:" in out and "tags in 'ner_tags'" in out


def test_tokens_as_a_string(tmp_path):
    write_jsonl(tmp_path / "ner.jsonl", [{"tokens": "John lives here", "ner_tags": ["B-PER"]}] * 4)
    out = run_cli(tmp_path, "ner", tmp_path / "ner.jsonl")
    assert "'tokens' must be a non-empty list of words" in out


def test_bad_json_line(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps(entity_rows(1)[0]) + "\n{not json\n")
    out = run_cli(tmp_path, "ner", path)
    assert "ner.jsonl, line 2: invalid JSON" in out


def test_csv_row_with_extra_fields(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,positive\nbad, really bad,negative\n")
    out = run_cli(tmp_path, "sentiment", path)
    assert "train.csv, line 3: 3 fields, the header has 2" in out


def test_empty_text(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,positive\n,negative\nbad,negative\n")
    assert "line 3: the text ('text') is empty" in run_cli(tmp_path, "sentiment", path)


def test_missing_data_path_and_unknown_dataset_offline(tmp_path, monkeypatch):
    out = run_cli(tmp_path, "sentiment", tmp_path / "nope.csv")
    assert "nope.csv' does not exist" in out
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = run_cli(tmp_path, "sentiment", "surely_not_a_cached_dataset_xyz")
    assert "Could not load the dataset 'surely_not_a_cached_dataset_xyz'" in out
    assert "--data ./train.csv" in out


def test_single_label(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,positive\nfine,positive\nnice,positive\n")
    assert "has only one label" in run_cli(tmp_path, "sentiment", path)


# --- reading and checking ---------------------------------------------------------------------


def test_folder_files_are_picked_by_name(tmp_path):
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("{}\n")
    train, val = pick_split_files(tmp_path)
    assert (train.name, val.name) == ("train.jsonl", "dev.jsonl")
    (tmp_path / "validation.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="2 validation files"):
        pick_split_files(tmp_path)


def test_squad_nested_json_is_flattened(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Ann lives in Rome.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "Rome", "answer_start": 13}]}]}]}]}))
    rows = read_rows(path)
    assert rows[0].values["answers"] == {"text": ["Rome"], "answer_start": [13]}
    assert "paragraphs[0].qas[0]" in rows[0].where


def test_split_is_seeded_stratified_and_recorded(tmp_path):
    write_csv(tmp_path / "r.csv", sentiment_rows(50))
    kw = {"val_fraction": 0.2}
    a = load_task_data(str(tmp_path / "r.csv"), "text_classification", kw, 7, tmp_path / "s.json")
    b = load_task_data(str(tmp_path / "r.csv"), "text_classification", kw, 7, None)
    assert a.val == b.val and len(a.val) == 10 and len(a.train) == 40
    assert sorted(e["label"] for e in a.val) == [0] * 5 + [1] * 5
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["seed"] == 7 and len(record["val"]) == 10


def test_text_pairs_and_explicit_columns(tmp_path):
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": ["yes", "no"][i % 2]}
            for i in range(10)]
    write_csv(tmp_path / "pairs.csv", rows)
    data = load_task_data(str(tmp_path / "pairs.csv"), "text_classification",
                          {"label_column": "gold"}, 0)
    assert data.text_column == "premise" and data.pair_column == "hypothesis"
    assert data.label_names == ["no", "yes"]
    assert {"text", "text_pair", "label"} == set(data.train[0])


def test_integer_labels_keep_their_ids(tmp_path):
    write_csv(tmp_path / "t.csv", [{"sentence": f"s{i}", "label": i % 3} for i in range(12)])
    data = load_task_data(str(tmp_path / "t.csv"), "text_classification", {}, 0)
    assert data.label_names == ["0", "1", "2"]
    assert all(e["label"] == int(e["text"][1:]) % 3 for e in data.train + data.val)


def test_string_tags_sorted_with_o_first(tmp_path):
    write_jsonl(tmp_path / "n.jsonl", entity_rows(30))
    data = load_task_data(str(tmp_path / "n.jsonl"), "token_classification", {}, 0)
    assert data.label_names[0] == "O" and data.label_names[1:] == sorted(data.label_names[1:])


def test_hub_dataset_glue_name_and_classlabel_names(monkeypatch):
    import datasets

    calls = []
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"]),
                                  "idx": datasets.Value("int32")})

    def fake_load(name, config=None):
        calls.append((name, config))
        rows = {"sentence": ["good", "bad", "great", "awful"], "label": [1, 0, 1, 0],
                "idx": [0, 1, 2, 3]}
        test = {**rows, "label": [-1] * 4}
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict(rows, features=features),
            "validation": datasets.Dataset.from_dict(rows, features=features),
            "test": datasets.Dataset.from_dict(test, features=features)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_task_data("sst2", "text_classification", {}, 0)
    assert calls == [("nyu-mll/glue", "sst2")]
    assert data.label_names == ["negative", "positive"]  # the ClassLabel names, in id order
    assert [e["label"] for e in data.val] == [1, 0, 1, 0] and data.text_column == "sentence"


def test_question_sentence_pairs_are_pairs(tmp_path):
    rows = [{"question": f"q{i}?", "sentence": f"s{i}", "label": ["entailment",
             "not_entailment"][i % 2]} for i in range(10)]
    write_csv(tmp_path / "qnli.csv", rows)
    data = load_task_data(str(tmp_path / "qnli.csv"), "text_classification", {}, 0)
    assert (data.text_column, data.pair_column) == ("question", "sentence")


def test_tsv_has_no_quoting_and_unicode_separators_stay_in_the_text(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('text\tlabel\n"Good" movie\tpos\nhello\u2028world\tneg\nok\tpos\n',
                    encoding="utf-8")
    rows = read_rows(path)
    assert [r.values["text"] for r in rows] == ['"Good" movie', "hello\u2028world", "ok"]
    assert [r.where.rsplit(" ", 1)[1] for r in rows] == ["2", "3", "4"]


def test_regression_labels_are_refused(tmp_path):
    write_csv(tmp_path / "stsb.csv", [{"sentence1": "a", "sentence2": "b", "label": 1.5},
                                      {"sentence1": "c", "sentence2": "d", "label": 2.0}] * 3)
    with pytest.raises(DataError, match="regression"):
        load_task_data(str(tmp_path / "stsb.csv"), "text_classification", {}, 0)


def test_split_always_leaves_training_rows(tmp_path):
    write_csv(tmp_path / "r.csv", sentiment_rows(4))
    data = load_task_data(str(tmp_path / "r.csv"), "text_classification",
                          {"val_fraction": 0.9}, 0)
    assert len(data.train) == 2 and len(data.val) == 2


def test_unseen_tag_after_automatic_split_says_so(tmp_path):
    rows = entity_rows(12)
    rows[5] = {"tokens": ["Rare"], "ner_tags": ["B-MISC"]}
    write_jsonl(tmp_path / "n.jsonl", rows)
    for seed in range(40):
        try:
            load_task_data(str(tmp_path / "n.jsonl"), "token_classification", {}, seed)
        except DataError as exc:
            assert "split off the training file" in exc.hint
            break
    else:
        pytest.fail("no seed put the only B-MISC row into validation")


def test_eval_metric_loss_is_refused_for_nlp(tmp_path):
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "qa", "--data", "x",
                                      "--eval-metric", "loss", "--dry-run"])
    assert result.exit_code == 2 and "f1" in result.output and "exact_match" in result.output


NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def _integer_tag_rows(n, seed=0):
    return [{"tokens": r["tokens"], "ner_tags": [NER_NAMES.index(t) for t in r["ner_tags"]]}
            for r in entity_rows(n, seed)]


def test_integer_tags_take_their_names_from_label_names(tmp_path, caplog):
    write_jsonl(tmp_path / "ner.jsonl", _integer_tag_rows(30))
    data = load_task_data(str(tmp_path / "ner.jsonl"), "token_classification",
                          {"label_names": NER_NAMES}, 0)
    assert data.label_names == NER_NAMES
    original = {tuple(r["tokens"]): r["ner_tags"] for r in entity_rows(30)}
    for example in data.train + data.val:  # each id kept its meaning
        assert [NER_NAMES[t] for t in example["tags"]] == original[tuple(example["tokens"])]
    assert "bare integers" not in caplog.text
    # Without names, the run still works but says why its entity F1 means little.
    with caplog.at_level("WARNING"):
        bare = load_task_data(str(tmp_path / "ner.jsonl"), "token_classification", {}, 0)
    assert bare.label_names == [str(i) for i in range(7)]
    assert "bare integers" in caplog.text and "label_names" in caplog.text


def test_integer_tag_without_a_name_is_reported(tmp_path):
    rows = _integer_tag_rows(10)
    rows[3]["ner_tags"][0] = 9
    write_jsonl(tmp_path / "ner.jsonl", rows)
    from sparsify.errors import DataError

    with pytest.raises(DataError, match=r"ner.jsonl, line 4: tag 9 has no name: 7 names"):
        load_task_data(str(tmp_path / "ner.jsonl"), "token_classification",
                       {"label_names": NER_NAMES}, 0)


def test_integer_labels_in_a_csv_take_label_names(tmp_path):
    rows = [{"text": r["text"], "label": ["negative", "positive"].index(r["label"])}
            for r in sentiment_rows(40)]
    write_csv(tmp_path / "r.csv", rows)
    data = load_task_data(str(tmp_path / "r.csv"), "text_classification",
                          {"label_names": ["negative", "positive"]}, 0)
    assert data.label_names == ["negative", "positive"]
    original = {r["text"]: r["label"] for r in sentiment_rows(40)}
    for example in data.train + data.val:
        assert data.label_names[example["label"]] == original[example["text"]]


@pytest.mark.parametrize("bad", ['[]', '["O", "O"]', '["O", 3]', '"O"'])
def test_label_names_must_be_distinct_names(bad):
    from sparsify.errors import TrainKwargsError
    from sparsify.plan import parse_train_kwargs
    from sparsify.usecases import resolve_use_case

    with pytest.raises(TrainKwargsError, match="label_names"):
        parse_train_kwargs('{"label_names": %s}' % bad, resolve_use_case("ner"))


def test_label_names_take_whole_floats_and_name_strangers(tmp_path):
    from sparsify.errors import DataError

    rows = [{"text": r["text"], "label": float(["neg", "pos"].index(r["label"][:3]))}
            for r in sentiment_rows(20)]
    write_jsonl(tmp_path / "float.jsonl", rows)
    data = load_task_data(str(tmp_path / "float.jsonl"), "text_classification",
                          {"label_names": ["neg", "pos"]}, 0)
    assert data.label_names == ["neg", "pos"]
    rows[5]["label"] = "neutral"
    write_jsonl(tmp_path / "stranger.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_task_data(str(tmp_path / "stranger.jsonl"), "text_classification",
                       {"label_names": ["neg", "pos"]}, 0)
    assert "stranger.jsonl, line 6: label 'neutral' is not one of the class names (neg, pos)" \
        in info.value.message
    assert "label_names" in info.value.hint and "validation" not in info.value.hint


def test_a_script_only_hub_dataset_is_read_from_its_parquet_conversion(monkeypatch):
    """Current ``datasets`` refuses loading scripts (conll2003): the Hub's Parquet conversion
    of the same repository is read instead (a stand-in for the Hub here)."""
    import datasets

    from sparsify.data.text import PARQUET_REVISION, load_hub_dataset

    calls = []

    def hub(name, config=None, revision=None):
        calls.append((name, config, revision))
        if revision != PARQUET_REVISION:
            raise RuntimeError("Dataset scripts are no longer supported, but found conll2003.py")
        rows = {"tokens": [["EU", "rejects"], ["Peter"]], "ner_tags": [[3, 0], [1]]}
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                     "validation": datasets.Dataset.from_dict(rows)})

    monkeypatch.setattr(datasets, "load_dataset", hub)
    splits = load_hub_dataset("conll2003")
    assert calls == [("conll2003", None, None), ("conll2003", None, PARQUET_REVISION)]
    assert len(splits.train) == 2

    def missing(name, config=None, revision=None):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError, match="Could not load the dataset 'nope'"):
        load_hub_dataset("nope")
