"""NLP pieces: metrics (entities, SQuAD), answer extraction, sub-word label alignment, QA
windows, model loading with head replacement, the teacher's vocabulary check."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sparsify.trainers.nlp_metrics import (
    best_answers, classification_metrics, entity_metrics, entity_spans, normalize_answer,
    squad_metrics,
)

transformers = pytest.importorskip("transformers")


# --- metrics -----------------------------------------------------------------------------------


def test_entity_spans_iob2_iob1_bioes_and_plain_tags():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "PER", "PER", "LOC"]
    assert entity_spans(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7),
                                  ("PER", 8, 10), ("LOC", 10, 11)}
    assert entity_spans(["S-PER", "B-LOC", "E-LOC", "O"]) == {("PER", 0, 1), ("LOC", 1, 3)}
    assert entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}


def test_entity_metrics_are_entity_level():
    ref = [["B-PER", "I-PER", "O", "B-LOC"]]
    # the person is cut short: wrong entity though 3 of 4 tokens are right
    pred = [["B-PER", "O", "O", "B-LOC"]]
    m = entity_metrics(pred, ref)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["accuracy"] == 0.75


def test_classification_metrics_binary_and_macro():
    m = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], 2)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
    m = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    m = squad_metrics({"a": "the Eiffel Tower", "b": "in Paris France"},
                      {"a": ["Eiffel Tower"], "b": ["Paris", "France"]})
    assert m["exact_match"] == 50.0
    assert m["f1"] == pytest.approx(50 * (1 + 0.5))  # b: best of 2 golds, F1 0.5


def test_best_answers_pick_the_best_span_over_windows():
    example = {"id": "q", "context": "Ann lives in Rome now"}
    offsets = [None, (0, 3), (4, 9), (10, 12), (13, 17), (18, 21)]
    start, end = np.zeros((2, 6)), np.zeros((2, 6))
    start[0, 4], end[0, 4] = 5, 5          # "Rome" in window 0, score 10
    start[1, 1], end[1, 2] = 4, 4          # "Ann lives" in window 1, score 8
    start[0, 0] = end[0, 0] = 50           # a non-context token never wins
    features = [{"example_index": 0, "offset_mapping": offsets}] * 2
    assert best_answers([example], features, start, end) == {"q": "Rome"}


# --- tokenization ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sparsify.data.synthetic_text import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def test_labels_on_first_sub_token_only(tiny):
    from sparsify.trainers.nlp_models import tokenize_token_classification

    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    # "berlinx" is not in the vocabulary: WordPiece splits it into several pieces
    features = tokenize_token_classification(tok, [{"tokens": ["Alice", "berlinx"],
                                                    "tags": [1, 2]}], 32)
    labels, word_ids = features[0]["labels"], features[0]["word_ids"]
    assert word_ids.count(1) > 1
    assert labels[0] == -100 and labels[-1] == -100          # [CLS], [SEP]
    assert [lab for lab in labels if lab != -100] == [1, 2]


def test_qa_windows_locate_the_answer(tiny):
    from sparsify.trainers.nlp_models import tokenize_question_answering

    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    context = " ".join(["Alice lives in Berlin."] * 6) + " Bruno works for Acme."
    example = {"id": "x", "question": "Who does Bruno work for?", "context": context,
               "answers": {"text": ["Acme"], "answer_start": [context.index("Acme")]}}
    train = tokenize_question_answering(tok, [example], 24, 8, train=True)
    assert len(train) > 2  # the long context was cut into overlapping windows
    hits = [f for f in train if f["start_positions"] > 0]
    assert hits and all(tok.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1])
                        == "acme" for f in hits)
    assert any(f["start_positions"] == 0 for f in train)  # windows without the answer -> CLS
    val = tokenize_question_answering(tok, [example], 24, 8, train=False)
    assert all(f["example_index"] == 0 for f in val)
    assert val[0]["offset_mapping"][0] is None  # [CLS] is outside the context


# --- models --------------------------------------------------------------------------------


def choice(path):
    return SimpleNamespace(spec=str(path), local_path=str(path), entry=None)


def test_head_is_replaced_only_when_labels_differ(tiny, tmp_path):
    from sparsify.trainers.nlp_models import load_nlp_model

    model, tok, _, replaced = load_nlp_model(choice(tiny), "text_classification", ["neg", "pos"])
    assert replaced and model.config.id2label == {0: "neg", 1: "pos"}
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    again, _, _, replaced = load_nlp_model(choice(tmp_path / "trained"), "text_classification",
                                           ["neg", "pos"])
    assert not replaced
    assert all((a == b).all() for a, b in zip(model.classifier.parameters(),
                                               again.classifier.parameters()))
    other, _, _, replaced = load_nlp_model(choice(tmp_path / "trained"), "text_classification",
                                           ["bad", "good"])
    assert replaced  # same count, other names: a new head
    assert not all((a == b).all() for a, b in zip(model.classifier.parameters(),
                                                   other.classifier.parameters()))


def test_sparsezoo_layout_folder_and_missing_model(tiny, tmp_path):
    import shutil

    from sparsify.errors import ModelNotFoundError
    from sparsify.trainers.nlp_models import load_nlp_model

    shutil.copytree(tiny, tmp_path / "zoo_model" / "training")
    model, *_ = load_nlp_model(choice(tmp_path / "zoo_model"), "question_answering", None)
    assert type(model).__name__ == "BertForQuestionAnswering"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_nlp_model(choice(tmp_path / "empty"), "question_answering", None)


def test_teacher_with_another_vocabulary_is_refused(tiny, tmp_path):
    from tokenizers import BertWordPieceTokenizer

    from sparsify.errors import UsageError
    from sparsify.trainers.nlp_models import check_same_vocabulary

    (tmp_path / "v.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "x"]))
    other = transformers.BertTokenizerFast(
        tokenizer_object=BertWordPieceTokenizer(str(tmp_path / "v.txt"))._tokenizer)
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    check_same_vocabulary(tok, transformers.AutoTokenizer.from_pretrained(tiny), "same")
    with pytest.raises(UsageError, match="another vocabulary"):
        check_same_vocabulary(tok, other, "teacher-x")


def test_left_padding_tokenizer_keeps_labels_aligned(tiny):
    from sparsify.trainers.nlp import NLPTask, tokenize_token_classification

    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    tok.padding_side = "left"
    feats = tokenize_token_classification(tok, [{"tokens": ["Alice"], "tags": [1]},
                                                {"tokens": ["Alice", "lives", "in"],
                                                 "tags": [1, 0, 0]}], 32)
    task = NLPTask.__new__(NLPTask)
    task.tokenizer, task.family, task.train_features = tok, "token_classification", feats
    batch = task.collate(feats)
    assert batch["input_ids"][0, -1] == tok.pad_token_id  # padded on the right all the same
    assert batch["labels"][0].tolist()[:3] == [-100, 1, -100]


def test_long_question_is_a_data_error(tiny):
    from sparsify.errors import DataError
    from sparsify.trainers.nlp_models import tokenize_question_answering

    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    example = {"id": "x", "question": " ".join(["where"] * 40) + "?", "context": "Ann lives here.",
               "answers": {"text": ["here"], "answer_start": [10]}}
    with pytest.raises(DataError, match="max_seq_length 24"):
        tokenize_question_answering(tok, [example], 24, 8, train=True)


def test_generic_and_case_different_label_names_keep_the_head():
    from sparsify.trainers.nlp_models import _same_labels

    assert _same_labels(["LABEL_0", "LABEL_1"], ["neg", "pos"])
    assert _same_labels(["NEGATIVE", "POSITIVE"], ["negative", "positive"])
    assert not _same_labels(["positive", "negative"], ["negative", "positive"])
    assert not _same_labels(["a", "b"], ["a", "b", "c"])


def test_latency_is_timed_at_max_seq_length_and_at_the_datas_p95(tiny, tmp_path):
    from sparsify.data.synthetic_text import sentiment_rows, write_csv
    from sparsify.plan import build_plan
    from sparsify.trainers.nlp import NLPTask
    from sparsify.usecases import resolve_use_case

    rows = sentiment_rows(60)
    write_csv(tmp_path / "train.csv", rows[:40])
    write_csv(tmp_path / "validation.csv", rows[40:])
    plan = build_plan(resolve_use_case("sentiment"), 0.5, model=str(tiny),
                      train_kwargs={"max_seq_length": 96})
    (tmp_path / "run").mkdir()
    task = NLPTask(plan, str(tmp_path), tmp_path / "run")
    task.load_model()
    lengths = task.latency_lengths()
    sizes = sorted(len(f["input_ids"]) for f in task.val_features)
    assert lengths["max_seq_length"] == 96
    assert lengths["data_p95"] == sizes[18]  # the 19th of 20: 95% are as long or shorter
    assert lengths["data_p95"] < 96
    for length in lengths.values():
        inputs = task.latency_inputs(32, length=length)
        assert all(v.shape == (32, length) for v in inputs.values())
    assert task.latency_inputs(1)["input_ids"].shape == (1, 96)  # the deployment's length
