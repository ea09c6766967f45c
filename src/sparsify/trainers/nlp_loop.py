"""The Hugging Face ``Trainer`` pieces of the NLP trainer: the subclass whose loss goes through
the modifier lifecycle, and the callback that maps the Trainer's events onto the lifecycle,
evaluates each epoch and writes the resumable checkpoints (:mod:`sparsify.trainers.nlp`)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from sparsify.errors import TrainingError
from sparsify.trainers.common import prunable_sparsity

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _tensorboard_dir(folder: Path) -> Any:
    """transformers' TensorBoard callback reads its folder from ``TENSORBOARD_LOGGING_DIR``."""
    import os

    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


class _KeepLR(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler that changes nothing: the recipe's LR modifiers set the LR."""

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


class _LifecycleTrainer(Trainer):
    """``Trainer`` whose loss goes through the lifecycle (distillation) and whose scheduler
    stands aside when the recipe sets the LR."""

    def __init__(self, *args: Any, lifecycle: Any, keep_lr: bool, label_keys: tuple[str, ...],
                 bf16: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lifecycle, self._keep_lr, self._label_keys = lifecycle, keep_lr, label_keys
        self._bf16 = bf16
        # our loss is a per-batch mean: let the Trainer divide it by the accumulation steps
        self.model_accepts_loss_kwargs = False

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Resuming: the weights come from our ``resume.pth``, loaded by the callback once the
        recipe's structure (QAT modules) is back on the model (a state dict with QAT modules
        does not load into the plain model the Trainer holds at this point)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call:  # a checkpoint folder: our resume.pth holds the weights
            Path(output_dir or self.args.output_dir).mkdir(parents=True, exist_ok=True)
            return
        super().save_model(output_dir, _internal_call)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self._keep_lr:
            if self.lr_scheduler is None:
                self.lr_scheduler = _KeepLR(optimizer or self.optimizer)
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        # bf16 autocast on GPU, but not while QAT runs: the Trainer's own mixed precision
        # would wrap the forward in an autocast that no inner context can switch off
        use_bf16 = self._bf16 and not self._lifecycle.qat_active
        context = (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16
                   else contextlib.nullcontext())
        with context:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            features = {k: v for k, v in inputs.items() if k not in self._label_keys}
            loss = self._lifecycle.loss_calculated(loss, features, outputs)
        if not torch.isfinite(loss.detach()):
            raise TrainingError(
                f"The loss became {float(loss)} at epoch {self._lifecycle.epoch:.2f}.",
                hint="Lower the learning rate (--recipe-args init_lr=...) or check the data.")
        return (loss, outputs) if return_outputs else loss


class _LifecycleCallback(TrainerCallback):
    """Maps the Trainer's events onto the lifecycle; evaluates per epoch; asks the Trainer for
    a checkpoint folder at every epoch's end, every ``every`` steps and on a signal, and writes
    our ``resume.pth`` into it (:meth:`on_save`); continues from ``saved`` (a resumable
    checkpoint) when given."""

    def __init__(self, task: Any, lifecycle: Any, recipe: Any, artifacts: Path,
                 saved: dict[str, Any] | None = None, every: int | None = None) -> None:
        self.task, self.lifecycle, self.recipe, self.artifacts = task, lifecycle, recipe, artifacts
        self.saved, self.every = saved, every
        self.best: dict[str, float] = {}
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.started = time.monotonic()
        self.halt = False
        if saved is not None:
            self.best, self.best_epoch = saved["best"], saved["best_epoch"]
            self.history = saved["history"]
            self.started -= saved["seconds"]

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        batches = len(kw["train_dataloader"])
        steps = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        self.lifecycle.initialize(kw["optimizer"], steps)
        if self.saved is not None:  # the structure first (QAT modules), then the weights
            self.lifecycle.load_resume_state(self.saved["lifecycle"])
            kw["model"].load_state_dict(self.saved["state_dict"])

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.lifecycle.epoch_start()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.lifecycle.batch_start()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.lifecycle.optim_pre_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.lifecycle.optim_post_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        from sparsify.trainers.resume import stop_requested

        self.lifecycle.batch_end()
        if state.global_step % self.lifecycle.state.steps_per_epoch == 0:
            return  # an epoch's last step: checked after its evaluation (on_epoch_end)
        self.halt = stop_requested()  # once per step: every rank
        if self.halt or (self.every and state.global_step % self.every == 0):
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """The Trainer has written its checkpoint folder (optimizer, scheduler, RNG, trainer
        state): ours goes in last, so a folder without it was cut short."""
        from sparsify import stop
        from sparsify.trainers.common import save_checkpoint
        from sparsify.trainers.resume import RESUME

        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_checkpoint(folder / RESUME, {
                "state_dict": kw["model"].state_dict(),
                "lifecycle": self.lifecycle.resume_state(), "recipe": self.recipe.to_yaml(),
                "best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                "seconds": self.seconds(), "step": state.global_step})
        if self.halt:
            raise stop.stop_now()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.lifecycle.epoch_end()
        model = kw["model"]
        metrics = self.task.evaluate(model)
        metrics["sparsity"] = prunable_sparsity(
            model, self.lifecycle.masked_parameter_names() or None)["overall"]
        epoch = len(self.history) + 1
        self.history.append({"epoch": epoch, **metrics})
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if state.global_step < state.max_steps:  # a resumable checkpoint between epochs
            from sparsify.trainers.resume import stop_requested

            control.should_save = True
            self.halt = stop_requested()
        if not state.is_world_process_zero:
            return
        name = self.task.plan.eval_metric
        better = not self.best or (metrics[name] < self.best[name] if name == "loss"
                                   else metrics[name] >= self.best[name])
        self._save(model, self.artifacts / "last", epoch, metrics)
        if better:
            self.best, self.best_epoch = dict(metrics), epoch
            self._save(model, self.artifacts / "best", epoch, metrics)

    def _save(self, model: nn.Module, folder: Path, epoch: int, metrics: dict[str, float]) -> None:
        """A transformers folder (weights, config, tokenizer) with the applied recipe; written
        beside the old one and swapped in, so a crash never leaves a half checkpoint."""
        from transformers.utils import logging as hf_logging

        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one "Writing model shards" bar per save is noise
        try:
            model.save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.task.tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(self.recipe.to_yaml(), encoding="utf-8")
        (tmp / "trainer_state.json").write_text(json.dumps({
            "epoch": epoch, "metrics": metrics, "qat": self.lifecycle.qat_active,
            "started_modifiers": self.lifecycle.started_modifiers()}, indent=1))
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)  # left over by a crash between the renames
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
