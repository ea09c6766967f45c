"""NLP models, tokenizers and features: which transformers class serves a task, loading a
model for this run's labels (the head replaced when they differ), and the tokenized features
of each task (labels on first sub-tokens, answer windows with offsets)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import DataError, ModelNotFoundError, UsageError

logger = logging.getLogger(__name__)

#: task family -> (transformers auto class, output names, metric used for the export check)
TASKS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "text_classification": ("AutoModelForSequenceClassification", ("logits",), "accuracy"),
    "token_classification": ("AutoModelForTokenClassification", ("logits",), "f1"),
    "question_answering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits"),
                           "f1"),
}
DEFAULT_MAX_SEQ_LENGTH = {"text_classification": 128, "token_classification": 128,
                          "question_answering": 384}
HEAD_NAMES = ("classifier", "qa_outputs", "score")


# --- models ----------------------------------------------------------------------------------


def _model_folder(path: Path) -> Path:
    """A transformers folder inside ``path``: itself, or a SparseZoo layout's ``training/``
    (or ``deployment/``)."""
    for candidate in (path, path / "training", path / "deployment"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelNotFoundError(
        f"{path} holds no transformers model: no config.json in it, in training/ or in "
        "deployment/.",
        hint="Give a folder written by save_pretrained() (config.json, model weights, "
             "tokenizer files), a Hugging Face Hub id, or a zoo: stub.")


def resolve_nlp_source(choice: Any) -> tuple[str, str]:
    """``(what to pass to from_pretrained, description)`` for the plan's model choice."""
    from sparsify.zoo.resolve import resolve_model_path

    path = Path(choice.local_path) if choice.local_path else resolve_model_path(choice.spec)
    if path is not None:
        if path.is_file():
            raise ModelNotFoundError(
                f"{path} is a file; NLP models are folders (config.json + weights + tokenizer).",
                hint="Pass the folder that holds the file, or a Hugging Face Hub id.")
        folder = _model_folder(path)
        return str(folder), f"local {folder}"
    if choice.entry is not None and choice.entry.sources:
        name = choice.entry.sources[0].name
        return name, f"hf:{name} (catalog {choice.entry.stub})"
    return choice.spec, f"hf:{choice.spec}"


def load_nlp_model(choice: Any, family: str, label_names: list[str] | None,
                   trust_remote_code: bool = False) -> tuple[nn.Module, Any, str, bool]:
    """Model and tokenizer for ``family``; the head is replaced when the labels differ.

    Returns:
        ``(model, tokenizer, source description, head_replaced)``.

    Raises:
        ModelNotFoundError: nothing could provide the model (with what was tried).
    """
    import transformers

    source, description = resolve_nlp_source(choice)
    auto_class = getattr(transformers, TASKS[family][0])
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Could not load the model '{choice.spec}' ({description}): "
            f"{str(exc).splitlines()[0]}",
            hint="Offline, only models already in the Hugging Face cache or local folders "
                 "load: pass --model ./folder (save_pretrained layout) or register it with "
                 "`sparsify.zoo add STUB FOLDER`. Models with custom code need "
                 "--train-kwargs '{\"trust_remote_code\": true}'.",
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotFoundError(
            f"The tokenizer of '{choice.spec}' is not a fast (Rust) tokenizer; word and "
            "character offsets need one.",
            hint="Use a model whose folder has tokenizer.json.")
    replaced = False
    if label_names is not None:
        old = [str(v) for _, v in sorted((int(k), v) for k, v in
                                        (getattr(config, "id2label", None) or {}).items())]
        own_head = any(a.endswith(TASKS[family][0].replace("AutoModelFor", "For"))
                       for a in (config.architectures or []))
        replaced = not (own_head and _same_labels(old, list(label_names)))
        kwargs.update(num_labels=len(label_names),
                      id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)})
    else:
        replaced = not any(a.endswith("ForQuestionAnswering") for a in (config.architectures or []))
    try:
        with _quiet_transformers():
            model = auto_class.from_pretrained(source, ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"Could not load the weights of '{choice.spec}' "
                                 f"({description}): {str(exc).splitlines()[0]}") from None
    if replaced and label_names is not None:
        _reinit_head_(model)
    return model, tokenizer, description, replaced


def _same_labels(old: list[str], new: list[str]) -> bool:
    """Whether a checkpoint's head predicts ``new``: the same names in the same order (case
    ignored), or transformers' generic ``LABEL_i`` names for as many labels."""
    if len(old) != len(new):
        return False
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(old))
    return generic or [n.lower() for n in old] == [n.lower() for n in new]


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """transformers warns at length about newly initialised heads; we log one line instead."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def _reinit_head_(model: nn.Module) -> None:
    """A fresh classification head (when the labels differ from the checkpoint's, even if
    their number is the same)."""
    std = float(getattr(model.config, "initializer_range", 0.02))
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            # BERT-style initialisation, done here: transformers 5's _init_weights skips
            # modules it already initialised while loading
            with torch.no_grad():
                for module in head.modules():
                    if isinstance(module, nn.Linear):
                        module.weight.normal_(0.0, std)
                        if module.bias is not None:
                            module.bias.zero_()
            logger.info("Classification head '%s' initialised for the new labels", name)


def check_same_vocabulary(student_tok: Any, teacher_tok: Any, teacher_spec: str) -> None:
    """Raises UsageError when a teacher tokenizes differently from the student."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise UsageError(
            f"The teacher '{teacher_spec}' uses another vocabulary than the model "
            f"({len(teacher_tok)} vs {len(student_tok)} tokens): distillation needs both to "
            "read the same token ids.",
            hint="Use a teacher of the same model family (same tokenizer), --teacher self, or "
                 "--teacher disable.")


def _max_positions(config: Any) -> int:
    """The longest input the model's position embeddings take (RoBERTa-style models reserve
    two positions for the padding offset)."""
    n = int(getattr(config, "max_position_embeddings", 10**6) or 10**6)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        n -= 2
    return n


# --- features --------------------------------------------------------------------------------


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
        self.items, self.keys = items, keys

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: self.items[i][k] for k in self.keys if k in self.items[i]}


def tokenize_text_classification(tok: Any, examples: list[dict[str, Any]], max_len: int
                                 ) -> list[dict[str, Any]]:
    texts = [e["text"] for e in examples]
    pairs = [e["text_pair"] for e in examples] if examples and "text_pair" in examples[0] else None
    enc = tok(texts, pairs, truncation=True, max_length=max_len)
    return [{**{k: enc[k][i] for k in enc}, "labels": e["label"]}
            for i, e in enumerate(examples)]


def tokenize_token_classification(tok: Any, examples: list[dict[str, Any]], max_len: int
                                  ) -> list[dict[str, Any]]:
    """Labels on the first sub-token of each word, -100 on the others and on special tokens."""
    enc = tok([e["tokens"] for e in examples], is_split_into_words=True, truncation=True,
              max_length=max_len)
    out = []
    for i, e in enumerate(examples):
        word_ids = enc.word_ids(i)
        labels, previous = [], None
        for w in word_ids:
            labels.append(-100 if w is None or w == previous else e["tags"][w])
            previous = w
        out.append({**{k: enc[k][i] for k in enc}, "labels": labels, "word_ids": word_ids})
    return out


def tokenize_question_answering(tok: Any, examples: list[dict[str, Any]], max_len: int,
                                stride: int, train: bool) -> list[dict[str, Any]]:
    """SQuAD features: long contexts are cut into windows of ``max_len`` tokens overlapping by
    ``stride``; training windows that do not hold the answer point at the first token."""
    pad_right = tok.padding_side == "right"
    questions = [e["question"] for e in examples]
    contexts = [e["context"] for e in examples]
    try:
        enc = tok(questions if pad_right else contexts, contexts if pad_right else questions,
                  truncation="only_second" if pad_right else "only_first", max_length=max_len,
                  stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
        longest = max(range(len(questions)), key=lambda i: len(tok.tokenize(questions[i])))
        raise DataError(
            f"Cannot fit question and context into max_seq_length {max_len} with doc_stride "
            f"{stride}: {exc}. The longest question (example {longest}) has "
            f"{len(tok.tokenize(questions[longest]))} tokens.",
            hint="Raise --train-kwargs max_seq_length, lower doc_stride, or shorten the "
                 "questions.") from None
    context_index = 1 if pad_right else 0
    out = []
    for i in range(len(enc["input_ids"])):
        e_idx = enc["overflow_to_sample_mapping"][i]
        seq_ids = enc.sequence_ids(i)
        offsets = [o if seq_ids[k] == context_index else None
                   for k, o in enumerate(enc["offset_mapping"][i])]
        feature = {k: enc[k][i] for k in enc if k not in ("offset_mapping",
                                                          "overflow_to_sample_mapping")}
        if train:
            answers = examples[e_idx]["answers"]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            inside = [k for k, o in enumerate(offsets) if o is not None]
            start_tok = end_tok = 0
            if inside and offsets[inside[0]][0] <= start_char \
                    and offsets[inside[-1]][1] >= end_char:
                start_tok = next(k for k in inside if offsets[k][1] > start_char)
                end_tok = next(k for k in reversed(inside) if offsets[k][0] < end_char)
            feature.update(start_positions=start_tok, end_positions=end_tok)
        else:
            feature.update(example_index=e_idx, offset_mapping=offsets)
        out.append(feature)
    return out
