"""Every ``--train-kwargs`` key changes what its family's trainer does.

For each (family, key) the family's task is built (and, where the key acts inside training, one
epoch is trained) once with the family's defaults and once with the key set to another value;
the observable the key governs (a DataLoader's batch size, the optimizer's class and learning
rate, the number of optimizer steps, the HF ``TrainingArguments``, the Ultralytics trainer's
arguments, the split sizes, the tokenised length, the columns read...) must differ, and be what
was asked for. A key that is accepted and then ignored fails here; a key added to a family
without a probe fails :func:`test_every_key_has_a_probe`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sparsify.errors import SparsifyError
from sparsify.families import FAMILIES, setting_fields
from sparsify.plan import build_plan
from sparsify.recipe.parser import parse_recipe
from sparsify.usecases import resolve_use_case

ONE_EPOCH = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 1.0
"""


# --- image classification: our own loop ------------------------------------------------------

@pytest.fixture(scope="module")
def image_workspace(tmp_path_factory):
    import torchvision

    from sparsify.data.synthetic import make_synthetic_image_folder

    root = tmp_path_factory.mktemp("kw_image")
    make_synthetic_image_folder(root / "data", classes=("a", "b"), per_class=10, size=24, seed=0)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=2)
    torch.save({"state_dict": model.state_dict(), "arch_key": "mobilenet_v3_small"},
               root / "init.pth")
    torch.save(model.state_dict(), root / "plain.pth")  # no arch_key inside
    return root


def image_probe(root: Path, kw: dict[str, Any], model: str = "init.pth",
                train: bool = True) -> dict[str, Any]:
    """What the image trainer did with ``kw``: split sizes, input size, model architecture and,
    after one epoch, the loaders' batch sizes and workers, the optimizer, its step count and the
    resumable checkpoints written."""
    import torch.utils.data

    from sparsify.modifiers.lifecycle import ModifierLifecycle
    from sparsify.trainers import image_classification as ic
    from sparsify.trainers import resume

    seen: dict[str, Any] = {"loaders": [], "steps": 0, "resume_writes": 0}
    loader, build, post_step, save = (torch.utils.data.DataLoader, ic.build_optimizer,
                                      ModifierLifecycle.optim_post_step, resume.save_resume)

    class RecordingLoader(loader):
        def __init__(self, dataset, **kwargs):
            seen["loaders"].append((len(dataset), kwargs.get("batch_size"),
                                    kwargs.get("num_workers", 0)))
            super().__init__(dataset, **kwargs)

    def recording_build(model, name, lr, wd):
        optimizer = build(model, name, lr, wd)
        seen["optimizer"] = (type(optimizer).__name__, optimizer.param_groups[0]["lr"],
                             max(g["weight_decay"] for g in optimizer.param_groups))
        return optimizer

    def counted_step(self):
        seen["steps"] += 1
        return post_step(self)

    def counted_save(*args, **kwargs):
        seen["resume_writes"] += 1
        return save(*args, **kwargs)

    plan = build_plan(resolve_use_case("ic"), 0.5, model=str(root / model),
                      train_kwargs={"batch_size": 4, "num_workers": 0, **kw})
    run_dir = root / f"run_{len(list(root.glob('run_*')))}"
    run_dir.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # undone before the next probe
        patch.setattr(torch.utils.data, "DataLoader", RecordingLoader)
        patch.setattr(ic, "build_optimizer", recording_build)
        patch.setattr(ModifierLifecycle, "optim_post_step", counted_step)
        patch.setattr(resume, "save_resume", counted_save)
        task = ic.ImageClassificationTask(plan, str(root / "data"), run_dir)
        try:
            task.load_model()
            seen["arch"] = task.loaded.arch_key
        except SparsifyError as exc:
            seen["arch"] = f"refused: {type(exc).__name__}"
            train = False
        seen["sizes"] = (len(task.train_ds), len(task.val_ds))
        seen["input"] = tuple(task.train_ds[0][0].shape)
        if train:
            task.train(parse_recipe(ONE_EPOCH))
    return seen


IMAGE_PROBES: dict[str, tuple[Any, Any]] = {
    # key: (value, what must change: a function of the probe)
    "batch_size": (2, lambda s: s["loaders"][0][1]),
    "eval_batch_size": (3, lambda s: s["loaders"][1][1]),
    "num_workers": (2, lambda s: s["loaders"][0][2]),
    "learning_rate": (0.123, lambda s: s["optimizer"][1]),
    "weight_decay": (0.2, lambda s: s["optimizer"][2]),
    "optimizer": ("adamw", lambda s: s["optimizer"][0]),
    "gradient_accumulation_steps": (2, lambda s: s["steps"]),
    "max_train_samples": (5, lambda s: s["sizes"][0]),
    "max_eval_samples": (1, lambda s: s["sizes"][1]),
    "val_fraction": (0.5, lambda s: s["sizes"]),
    "image_size": (16, lambda s: s["input"]),
    "arch_key": ("mobilenet_v3_small", lambda s: s["arch"]),
    "checkpoint_steps": (2, lambda s: s["resume_writes"]),
}


@pytest.mark.parametrize("key", sorted(IMAGE_PROBES))
def test_image_key_changes_the_trainer(key, image_workspace):
    value, observe = IMAGE_PROBES[key]
    model = "plain.pth" if key == "arch_key" else "init.pth"
    train = key in {"batch_size", "eval_batch_size", "num_workers", "learning_rate",
                    "weight_decay", "optimizer", "gradient_accumulation_steps",
                    "checkpoint_steps"}
    default = image_probe(image_workspace, {}, model, train)
    changed = image_probe(image_workspace, {key: value}, model, train)
    assert observe(changed) != observe(default), f"{key}={value!r} changed nothing"
    expected = {"batch_size": 2, "eval_batch_size": 3, "num_workers": 2, "learning_rate": 0.123,
                "weight_decay": 0.2, "optimizer": "AdamW", "max_train_samples": 5,
                "max_eval_samples": 1, "image_size": (3, 16, 16),
                "arch_key": "mobilenet_v3_small"}
    if key in expected:
        assert observe(changed) == expected[key]
    if key == "gradient_accumulation_steps":  # 18 images, batches of 4: 5 steps, then 3
        assert (observe(default), observe(changed)) == (5, 3)
    if key == "checkpoint_steps":  # one epoch of 5 steps: after steps 2 and 4
        assert (observe(default), observe(changed)) == (0, 2)
    if key == "val_fraction":  # 20 images: 10% -> 2 held out, 50% -> 10
        assert (observe(default), observe(changed)) == ((18, 2), (10, 10))


# --- text: the Hugging Face Trainer ------------------------------------------------------------

class _Captured(Exception):
    pass


@pytest.fixture(scope="module")
def text_workspace(tmp_path_factory):
    from sparsify.data.synthetic_text import (
        entity_rows,
        make_tiny_bert,
        question_rows,
        sentiment_rows,
        write_csv,
        write_jsonl,
    )

    root = tmp_path_factory.mktemp("kw_text")
    make_tiny_bert(root / "bert")
    rows = sentiment_rows(40)
    write_csv(root / "reviews.csv", rows)
    # the same reviews under other column names, labels as ids, and a second text column
    write_csv(root / "renamed.csv", [{"body": r["text"], "other": "x", "verdict": r["label"],
                                      "text": "same words every row",
                                      "label": ("one", "two")[i % 2]}
                                     for i, r in enumerate(rows)])
    write_csv(root / "ids.csv", [{"text": r["text"], "label": int(r["label"] == "positive")}
                                 for r in rows])
    entities = entity_rows(40)
    write_jsonl(root / "ner.jsonl", entities)
    write_jsonl(root / "ner_renamed.jsonl", [
        {"words": e["tokens"], "tokens": [t.lower() for t in e["tokens"]],
         "ner_tags": e["ner_tags"], "marks": [t.replace("PER", "PERSON") for t in e["ner_tags"]]}
        for e in entities])
    tag_names = sorted({t for e in entities for t in e["ner_tags"]})
    write_jsonl(root / "ner_ids.jsonl", [{"tokens": e["tokens"],
                                          "ner_tags": [tag_names.index(t) for t in e["ner_tags"]]}
                                         for e in entities])
    (root / "tag_names.json").write_text(json.dumps(tag_names))
    write_jsonl(root / "qa.jsonl", question_rows(40))
    return root


def text_probe(root: Path, use_case: str, data: str, kw: dict[str, Any]) -> dict[str, Any]:
    """What the NLP task did with ``kw``: data read and split, features, the model loader's
    arguments, the validation batches and the HF ``TrainingArguments`` of its training."""
    import transformers

    from sparsify.trainers.nlp import NLPTask

    seen: dict[str, Any] = {}
    config = transformers.AutoConfig.from_pretrained

    def recording_config(*args, **kwargs):
        seen["trust_remote_code"] = kwargs.get("trust_remote_code")
        return config(*args, **kwargs)

    def recording_arguments(**kwargs):
        seen["args"] = kwargs
        raise _Captured

    from sparsify.trainers import nlp

    callback = nlp._LifecycleCallback

    def recording_callback(*args, **kwargs):
        made = callback(*args, **kwargs)
        seen["checkpoint_every"] = made.every
        return made

    with pytest.MonkeyPatch.context() as patch:  # undone before the next probe
        patch.setattr(transformers.AutoConfig, "from_pretrained", recording_config)
        patch.setattr(transformers, "TrainingArguments", recording_arguments)
        patch.setattr(nlp, "_LifecycleCallback", recording_callback)
        plan = build_plan(resolve_use_case(use_case), 0.5, model=str(root / "bert"),
                          train_kwargs=kw)
        run_dir = root / f"run_{len(list(root.glob('run_*')))}"
        run_dir.mkdir()
        task = NLPTask(plan, str(root / data), run_dir)
        task.load_model()
        seen["sizes"] = (len(task.data.train), len(task.data.val))
        seen["labels"] = list(task.label_names or [])
        seen["first"] = task.data.train[0]
        seen["max_len"] = task.max_len
        seen["features"] = (len(task.train_features),
                            max(len(f["input_ids"]) for f in task.train_features))
        batches: list[int] = []
        collate = task.collate

        def recording_collate(items):
            batches.append(len(items))
            return collate(items)

        task.collate = recording_collate
        task.predict(task.model)
        seen["eval_batches"] = batches
        with pytest.raises(_Captured):
            task.train(parse_recipe(ONE_EPOCH))
        return seen


TEXT_CASES: dict[str, tuple[str, str]] = {
    "text_classification": ("sentiment_analysis", "reviews.csv"),
    "token_classification": ("ner", "ner.jsonl"),
    "question_answering": ("qa", "qa.jsonl"),
}
TEXT_PROBES: dict[str, tuple[Any, Any]] = {
    "batch_size": (3, lambda s: s["args"]["per_device_train_batch_size"]),
    "learning_rate": (0.125, lambda s: s["args"]["learning_rate"]),
    "weight_decay": (0.25, lambda s: s["args"]["weight_decay"]),
    "num_workers": (2, lambda s: s["args"]["dataloader_num_workers"]),
    "optimizer": ("sgd", lambda s: s["args"]["optim"]),
    "gradient_accumulation_steps": (3, lambda s: s["args"]["gradient_accumulation_steps"]),
    "eval_batch_size": (1, lambda s: max(s["eval_batches"])),
    "max_train_samples": (7, lambda s: s["sizes"][0]),
    "max_eval_samples": (2, lambda s: s["sizes"][1]),
    "val_fraction": (0.5, lambda s: s["sizes"]),
    "max_seq_length": (24, lambda s: (s["max_len"], s["features"][1])),
    "trust_remote_code": (True, lambda s: s["trust_remote_code"]),
    "doc_stride": (2, lambda s: s["features"][0]),
    # what the callback does with it (a checkpoint folder every N steps): test_resume_nlp.py
    "checkpoint_steps": (2, lambda s: s["checkpoint_every"]),
    # keys that name what to read: the data is written so that the default reads other columns
    "text_column": ("body", lambda s: s["first"]["text"]),
    "text_pair_column": ("other", lambda s: s["first"].get("text_pair")),
    "label_column": ("verdict", lambda s: s["labels"]),
    "label_names": (["negative", "positive"], lambda s: s["labels"]),
    "tokens_column": ("words", lambda s: s["first"]["tokens"]),
    "tags_column": ("marks", lambda s: s["labels"]),
}
#: the data a key needs to show its effect (default: the family's plain file)
TEXT_DATA = {"text_column": "renamed.csv", "text_pair_column": "renamed.csv",
             "label_column": "renamed.csv", "tokens_column": "ner_renamed.jsonl",
             "tags_column": "ner_renamed.jsonl"}
#: settings both runs share, so that the key's effect shows
TEXT_BASE = {"text_pair_column": {"text_column": "body"},
             "doc_stride": {"max_seq_length": 16}}
TEXT_PAIRS = [(f, k) for f in TEXT_CASES for k in setting_fields(f)]


@pytest.mark.parametrize("family, key", TEXT_PAIRS)
def test_text_key_changes_the_trainer(family, key, text_workspace):
    use_case, data = TEXT_CASES[family]
    data = TEXT_DATA.get(key, data)
    value, observe = TEXT_PROBES[key]
    if key == "label_names":  # integer labels / tags
        data = {"text_classification": "ids.csv", "token_classification": "ner_ids.jsonl"}[family]
        if family == "token_classification":
            value = json.loads((text_workspace / "tag_names.json").read_text())
    if key == "max_seq_length":  # shorter than the longest example: truncation shows (and the
        # QA window still holds the question with a doc_stride below half of it)
        value = {"text_classification": 12, "token_classification": 8,
                 "question_answering": 16}[family]
    base = TEXT_BASE.get(key, {})
    default = text_probe(text_workspace, use_case, data, base)
    changed = text_probe(text_workspace, use_case, data, {**base, key: value})
    assert observe(changed) != observe(default), f"{family}: {key}={value!r} changed nothing"
    if key in {"batch_size", "learning_rate", "weight_decay", "num_workers",
               "gradient_accumulation_steps", "eval_batch_size", "max_train_samples",
               "max_eval_samples", "trust_remote_code", "checkpoint_steps"}:
        assert observe(changed) == value
    if key == "max_seq_length":
        assert observe(changed) == (value, value)
    if key == "optimizer":
        assert observe(changed) == "sgd"
    if key == "label_names":
        assert observe(changed) == value
        assert observe(default) == [str(i) for i in range(len(value))]


# --- detection and segmentation: the Ultralytics trainer ---------------------------------------

@pytest.fixture(scope="module")
def yolo_workspace(tmp_path_factory):
    pytest.importorskip("ultralytics")
    from sparsify.data.synthetic_yolo import make_synthetic_yolo_dataset

    root = tmp_path_factory.mktemp("kw_yolo")
    for name, task in (("det", "detect"), ("seg", "segment")):  # no val side: a seeded split
        make_synthetic_yolo_dataset(root / name, task, train_images=10, val_images=0, size=32,
                                    layout="flat", seed=0)
    return root


def yolo_probe(root: Path, family: str, kw: dict[str, Any], monkeypatch) -> dict[str, Any]:
    """The Ultralytics trainer's arguments and the split the task staged for it."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(root / "ultralytics_config"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from sparsify.trainers.detection import DetectionTask

    use_case = {"detection": "object_detection", "segmentation": "segmentation"}[family]
    data = {"detection": "det", "segmentation": "seg"}[family]
    plan = build_plan(resolve_use_case(use_case), 0.5, model="yolov8n.yaml", train_kwargs=kw)
    run_dir = root / f"run_{len(list(root.glob('run_*')))}"
    run_dir.mkdir()
    task = DetectionTask(plan, str(root / data), run_dir)
    args = vars(task.trainer.args)
    staged = run_dir / "dataset" / "images"
    return {**args, "split": (len(list((staged / "train").iterdir())),
                              len(list((staged / "val").iterdir())))}


YOLO_PROBES: dict[str, tuple[Any, str, Any]] = {
    # key: (value, trainer argument, what Ultralytics holds)
    "batch_size": (4, "batch", 4),
    "num_workers": (2, "workers", 2),
    "learning_rate": (0.05, "lr0", 0.05),
    "weight_decay": (0.125, "weight_decay", 0.125),
    "optimizer": ("sgd", "optimizer", "SGD"),
    "image_size": (96, "imgsz", 96),
    "val_fraction": (0.5, "split", (5, 5)),
}


@pytest.mark.parametrize("family, key", [(f, k) for f in ("detection", "segmentation")
                                         for k in setting_fields(f)])
def test_yolo_key_changes_the_trainer(family, key, yolo_workspace, monkeypatch):
    value, name, expected = YOLO_PROBES[key]
    default = yolo_probe(yolo_workspace, family, {}, monkeypatch)
    changed = yolo_probe(yolo_workspace, family, {key: value}, monkeypatch)
    assert changed[name] != default[name], f"{family}: {key}={value!r} changed nothing"
    assert changed[name] == expected


def test_every_key_has_a_probe():
    probes = {"image_classification": IMAGE_PROBES, "text_classification": TEXT_PROBES,
              "token_classification": TEXT_PROBES, "question_answering": TEXT_PROBES,
              "detection": YOLO_PROBES, "segmentation": YOLO_PROBES}
    assert set(probes) == set(FAMILIES)
    missing = [(f, k) for f in FAMILIES for k in setting_fields(f) if k not in probes[f]]
    assert not missing, json.dumps(missing)
