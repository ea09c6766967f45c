"""NLP: text classification (sentiment), token classification (NER), question answering.

Hugging Face does the heavy lifting: ``transformers`` models and tokenizers, its ``Trainer``
for the loop (devices, DDP, mixed precision), ``datasets`` for Hub data. The recipe's
lifecycle is attached through a ``TrainerCallback`` (step, optimizer and epoch events) and
``compute_loss`` (the distillation loss); evaluation and export are ours, so that the exported
ONNX model is checked with the same task metric as the PyTorch model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify.errors import ModelNotFoundError, UsageError
from sparsify.families import QuestionAnsweringSettings, settings_for
from sparsify.plan import Plan
from sparsify.trainers.base import ExportResult, TrainResult
from sparsify.trainers.common import (
    check_replicas_agree,
    full_disk_named,
    phase_dirs,
    prunable_sparsity,
    resolve_device,
    seed_everything,
)
from sparsify.trainers.nlp_loop import _LifecycleCallback, _LifecycleTrainer, _tensorboard_dir
from sparsify.trainers.nlp_models import (
    DEFAULT_MAX_SEQ_LENGTH,
    TASKS,
    FeatureDataset,
    _max_positions,
    check_same_vocabulary,
    load_nlp_model,
    tokenize_question_answering,
    tokenize_text_classification,
    tokenize_token_classification,
)

logger = logging.getLogger(__name__)

#: --train-kwargs optimizer -> transformers' TrainingArguments.optim
_HF_OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}

# --- the task --------------------------------------------------------------------------------


class NLPTask:
    """Data (checked when built), then model and tokenizer (:meth:`load_model`); ``train`` and
    ``export`` are the later stages (the :class:`~sparsify.trainers.base.Task` contract)."""

    def __init__(self, plan: Plan, data: str, run_dir: Path) -> None:
        from sparsify.data.text import load_task_data

        self.plan, self.run_dir = plan, run_dir
        self.family = plan.use_case.family
        self.settings = settings_for(self.family, plan.train_kwargs)
        seed_everything(plan.seed)
        self.data = load_task_data(data, self.family, self.settings, plan.seed,
                                   run_dir / "data_split.json")
        self.label_names: list[str] | None = getattr(self.data, "label_names", None)
        self.qat = False

    def load_model(self) -> None:
        settings = self.settings
        self.model, self.tokenizer, self.source, self.head_replaced = load_nlp_model(
            self.plan.model, self.family, self.label_names, settings.trust_remote_code)
        self.max_len = settings.max_seq_length or DEFAULT_MAX_SEQ_LENGTH[self.family]
        self.max_len = min(self.max_len, int(getattr(self.tokenizer, "model_max_length", 10**6)),
                           _max_positions(self.model.config))
        stride = settings.doc_stride if isinstance(settings, QuestionAnsweringSettings) else None
        self.stride = stride if stride is not None else min(128, self.max_len // 3)
        if self.family == "question_answering" and self.stride >= self.max_len // 2:
            raise UsageError(f"--train-kwargs doc_stride {self.stride} must be below half of "
                             f"max_seq_length {self.max_len}.")
        self.train_features = self._features(self.data.train, train=True)
        self.val_features = self._features(self.data.val, train=False)
        self.baseline = copy.deepcopy(self.model).eval()
        self.start_sparsity = prunable_sparsity(self.model)["overall"]
        labels = f", {len(self.label_names)} labels" if self.label_names else ""
        logger.info("Data: %d train / %d val examples (%d / %d features)%s; model %s, "
                    "sparsity %.1f%%", len(self.data.train), len(self.data.val),
                    len(self.train_features), len(self.val_features), labels, self.source,
                    100 * self.start_sparsity)

    def restore(self, recipe: Any, artifacts: Path, checkpoint: Path | None = None
                ) -> dict[str, Any]:
        """Load ``training_artifacts/last`` (or ``checkpoint``, a folder written by training)
        into the model, with the QAT structure the recipe had given it."""
        from safetensors.torch import load_file

        from sparsify.trainers.common import restore_checkpoint

        folder = checkpoint or artifacts / "last"
        weights, state_file = folder / "model.safetensors", folder / "trainer_state.json"
        if not (weights.is_file() and state_file.is_file()):
            raise ModelNotFoundError(f"No checkpoint in {folder} (model.safetensors and "
                                     "trainer_state.json): training ended before its first "
                                     "epoch was saved.", hint="Run the training again.")
        meta = json.loads(state_file.read_text(encoding="utf-8"))
        started = meta.get("started_modifiers")
        if started is None:  # written before the lifecycle recorded it
            epoch = float(meta.get("epoch", 0))
            started = [i for i, m in enumerate(recipe.build_modifiers()) if m.start_epoch < epoch]
        # save_pretrained drops weights tied to others (e.g. an output embedding): ours complete it
        self.qat = restore_checkpoint(self.model, recipe, load_file(str(weights)), started,
                                      folder, complete=True)
        return meta

    def _features(self, examples: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        if self.family == "text_classification":
            return tokenize_text_classification(self.tokenizer, examples, self.max_len)
        if self.family == "token_classification":
            return tokenize_token_classification(self.tokenizer, examples, self.max_len)
        return tokenize_question_answering(self.tokenizer, examples, self.max_len, self.stride,
                                           train)

    @property
    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in self.train_features[0]:
            names.append("token_type_ids")
        return names

    @property
    def label_keys(self) -> tuple[str, ...]:
        return (("start_positions", "end_positions") if self.family == "question_answering"
                else ("labels",))

    def load_teacher(self, choice: Any) -> nn.Module:
        """A distillation teacher with this run's labels; its vocabulary must match."""
        teacher, tok, _, replaced = load_nlp_model(
            choice, self.family, self.label_names,
            self.settings.trust_remote_code)
        check_same_vocabulary(self.tokenizer, tok, choice.spec)
        if replaced:
            logger.warning("The teacher '%s' had no head for these labels: its head is new "
                           "(untrained), so distilling from it teaches noise.", choice.spec)
        return teacher

    # --- batches -----------------------------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of features to the longest (transformers' collators; token labels
        padded with -100), keeping only model inputs and labels."""
        collator = getattr(self, "_collator", None)
        if collator is None:
            from transformers import (
                DataCollatorForTokenClassification,
                DataCollatorWithPadding,
            )

            # right padding always: labels, answer positions and output slices index from the
            # left (a copy, so the tokenizer saved with the deployment keeps its own setting)
            tokenizer = copy.copy(self.tokenizer)
            tokenizer.padding_side = "right"
            cls = (DataCollatorForTokenClassification if self.family == "token_classification"
                   else DataCollatorWithPadding)
            collator = self._collator = cls(tokenizer, return_tensors="pt")
        keys = (*self.input_names, *self.label_keys)
        batch = collator([{k: f[k] for k in keys if k in f} for f in items])
        return {k: v for k, v in batch.items() if k in keys}

    # --- training ----------------------------------------------------------------------------
    def train(self, recipe: Any, teacher: nn.Module | None = None, phase: str = "main",
              resume: Path | None = None) -> TrainResult:
        """Train ``model`` under the recipe; ``phase`` ``teacher`` keeps its checkpoints and
        logs in ``teacher/`` subfolders (the dense teacher of ``--teacher auto``).

        Resumable checkpoints are the Trainer's own folders
        (``hf_trainer/checkpoint-STEP``: optimizer, scheduler, RNG, trainer state; the last two
        kept) with our ``resume.pth`` written into each last (weights with the recipe's
        structure, the lifecycle's state, best metrics and history), at the end of every epoch,
        every ``checkpoint_steps`` optimizer steps when set, and when a signal asks training to
        stop (:mod:`sparsify.stop`); ``resume`` (such a ``resume.pth``) continues from one.
        """
        from transformers import TrainingArguments

        from sparsify import stop
        from sparsify.modifiers.lifecycle import ModifierLifecycle
        from sparsify.trainers.resume import HF_CHECKPOINTS, load_resume

        settings, plan = self.settings, self.plan
        device = resolve_device(plan.device)
        lifecycle = ModifierLifecycle(recipe, self.model, teacher)
        epochs = lifecycle.max_epochs
        artifacts, logs = phase_dirs(self.run_dir, phase)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        saved = load_resume(resume, recipe) if resume is not None else None
        callback = _LifecycleCallback(self, lifecycle, recipe, artifacts, saved,
                                      settings.checkpoint_steps)
        args = TrainingArguments(
            output_dir=str(artifacts / HF_CHECKPOINTS),
            num_train_epochs=epochs,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            optim=_HF_OPTIMIZERS[settings.optimizer],
            lr_scheduler_type="linear",
            save_strategy="no",  # our callback asks for every save (epochs, steps, signals)
            save_total_limit=2,
            eval_strategy="no",
            logging_strategy="steps",
            logging_steps=max(1, math.ceil(len(self.train_features) / settings.batch_size / 4)),
            report_to=["tensorboard"],
            use_cpu=device.type == "cpu",
            bf16=False,  # autocast is ours (compute_loss): off while QAT runs
            seed=plan.seed,
            data_seed=plan.seed,
            dataloader_num_workers=settings.num_workers,
            remove_unused_columns=False,
            disable_tqdm=False,
        )
        keys = (*self.input_names, *self.label_keys)
        with _tensorboard_dir(logs), stop.graceful():
            trainer = _LifecycleTrainer(
                lifecycle=lifecycle, keep_lr=lifecycle.controls_lr, label_keys=self.label_keys,
                bf16=bf16,
                model=self.model, args=args,
                train_dataset=FeatureDataset(self.train_features, keys),
                data_collator=self.collate, callbacks=[callback],
            )
            if teacher is not None:
                teacher.to(trainer.args.device)
            if saved is not None:
                logger.info("Resuming %s training from %s", phase, saved["loaded_from"])
            with full_disk_named(Path(args.output_dir)):  # the Trainer's own writes
                trainer.train(resume_from_checkpoint=(
                    str(Path(saved["loaded_from"]).parent) if saved is not None else None))
        # finished: its resumable checkpoints are of no further use (the run is complete)
        shutil.rmtree(artifacts / HF_CHECKPOINTS, ignore_errors=True)
        lifecycle.finalize()
        check_replicas_agree(trainer.model)
        self.model = trainer.model.cpu().eval()
        self.qat = lifecycle.qat_active
        final = self.evaluate(self.model)
        final["sparsity"] = prunable_sparsity(
            self.model, lifecycle.masked_parameter_names() or None)["overall"]
        return TrainResult(final, callback.best, callback.best_epoch, epochs, callback.history,
                           callback.seconds(), lifecycle.masked_parameter_names(),
                           lifecycle.pruning_policy(),
                           cost=lifecycle.cost.report())

    # --- evaluation --------------------------------------------------------------------------
    @property
    def output_names(self) -> tuple[str, ...]:
        return TASKS[self.family][1]

    @property
    def export_metric(self) -> str:
        """The task metric the export's fidelity is judged by."""
        return TASKS[self.family][2]

    def predict_with(self, run_batch: Callable[[dict[str, torch.Tensor]], list[np.ndarray]],
                     batch_size: int | None = None) -> list[Any]:
        """Per-feature outputs over the validation features (padding dropped), from
        ``run_batch(collated inputs) -> one array per output name`` (PyTorch or ONNX Runtime)."""
        rows: list[list[np.ndarray]] = [[] for _ in self.output_names]
        batch_size = batch_size or self.settings.eval_batch_size
        for start in range(0, len(self.val_features), batch_size):
            chunk = self.val_features[start:start + batch_size]
            batch = self.collate([{k: f[k] for k in self.input_names} for f in chunk])
            for j, values in enumerate(run_batch(batch)):
                for i, feature in enumerate(chunk):
                    rows[j].append(values[i] if self.family == "text_classification"
                                   else values[i, :len(feature["input_ids"])])
        # rows of equal length stacked (classification); per-feature arrays kept otherwise
        return [np.stack(r) if self.family == "text_classification" else r for r in rows]

    @torch.no_grad()
    def predict(self, model: nn.Module, batch_size: int | None = None) -> list[Any]:
        """Per-feature outputs of ``model`` over the validation features (no padding kept)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device

        def run(batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
            out = model(**{k: v.to(device) for k, v in batch.items()})
            return [out[name].float().cpu().numpy() for name in self.output_names]

        try:
            return self.predict_with(run, batch_size)
        finally:
            model.train(was_training)

    def metrics_from_outputs(self, outputs: list[np.ndarray]) -> dict[str, float]:
        """The task metrics from per-feature outputs (PyTorch's or ONNX Runtime's)."""
        from sparsify.trainers.nlp_metrics import (
            best_answers,
            classification_metrics,
            entity_metrics,
            squad_metrics,
        )

        if self.family == "text_classification":
            preds = outputs[0].argmax(-1).tolist()
            return classification_metrics(preds, [e["label"] for e in self.data.val],
                                          len(self.label_names or []))
        if self.family == "token_classification":
            names = self.label_names or []
            predicted, reference = [], []
            for feature, example, logits in zip(self.val_features, self.data.val, outputs[0]):
                word_tags: dict[int, str] = {}
                for position, word in enumerate(feature["word_ids"]):
                    if word is not None and word not in word_tags:
                        word_tags[word] = names[int(np.argmax(logits[position]))]
                # words cut off by max_seq_length count as "O" predictions
                predicted.append([word_tags.get(w, "O") for w in range(len(example["tokens"]))])
                reference.append([names[t] for t in example["tags"]])
            return entity_metrics(predicted, reference)
        answers = best_answers(self.data.val, self.val_features, outputs[0], outputs[1])
        return squad_metrics(answers, {e["id"]: e["answers"]["text"] for e in self.data.val})

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.metrics_from_outputs(self.predict(model))

    validate = evaluate

    # --- export ------------------------------------------------------------------------------
    def sample_inputs(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """``batch`` copies of the first validation feature, padded (or cut) to ``length``."""
        feature = {k: self.val_features[0][k][:length] if length else self.val_features[0][k]
                   for k in self.input_names}
        padded = self.tokenizer.pad([feature] * batch, padding="max_length" if length else True,
                                    padding_side="right",
                                    max_length=length, return_tensors="np")
        return {k: padded[k].astype(np.int64) for k in self.input_names}

    def latency_inputs(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """ONNX Runtime inputs for the latency measurement: ``length`` tokens (default: the
        deployment's ``max_seq_length``)."""
        return self.sample_inputs(batch, length or self.max_len)

    def latency_lengths(self) -> dict[str, int]:
        """The deployment's ``max_seq_length`` and the validation data's 95th-percentile
        tokenized length (what most real inputs take; one entry when they are equal)."""
        sizes = sorted(len(f["input_ids"]) for f in self.val_features)
        p95 = sizes[min(len(sizes) - 1, math.ceil(0.95 * len(sizes)) - 1)] if sizes else 0
        lengths = {"max_seq_length": self.max_len}
        if 0 < p95 < self.max_len:
            lengths["data_p95"] = p95
        return lengths

    def export(self, deploy_dir: Path, baseline_path: Path) -> ExportResult:
        from sparsify.export.nlp import export_transformer

        return export_transformer(self, deploy_dir, baseline_path)


def run_nlp(plan: Plan, data: str, run_dir: Path) -> NLPTask:
    """Build the task (validates the data; the model is loaded by ``load_model``)."""
    return NLPTask(plan, data, run_dir)
