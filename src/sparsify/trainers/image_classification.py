"""Image classification: ImageFolder data, torchvision models, our own training loop.

The loop maps onto the lifecycle's events; Accelerate places the model and data (and wraps DDP
under ``torchrun`` / ``accelerate launch``). Mixed precision is used on GPU only while QAT is not
active.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import DataError, TrainingError
from sparsify.families import settings_for
from sparsify.plan import Plan
from sparsify.trainers.base import ExportResult, TrainResult
from sparsify.trainers.common import (
    batches,
    build_optimizer,
    check_replicas_agree,
    phase_dirs,
    prunable_sparsity,
    resolve_device,
    save_checkpoint,
    seed_everything,
)

logger = logging.getLogger(__name__)


def _topk(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())


class ImageClassificationTask:
    """Data (checked when built), then the model (:meth:`load_model`); ``train`` and ``export``
    are the later stages (the :class:`~sparsify.trainers.base.Task` contract)."""

    def __init__(self, plan: Plan, data: str, run_dir: Path) -> None:
        from sparsify.data.image_datasets import build_datasets
        from sparsify.data.image_folder import validate_image_folder
        from sparsify.data.named_datasets import resolve_named_image_dataset

        self.plan, self.run_dir = plan, run_dir
        self.qat = False
        self.settings = settings = settings_for(plan.use_case.family, plan.train_kwargs)
        seed_everything(plan.seed)
        root = resolve_named_image_dataset(data) or Path(data).expanduser()
        layout = validate_image_folder(root)
        self.image_size = settings.image_size
        self.train_ds, self.val_ds, self.class_names = build_datasets(
            layout, image_size=self.image_size, val_fraction=settings.val_fraction,
            seed=plan.seed, max_train_samples=settings.max_train_samples,
            max_eval_samples=settings.max_eval_samples,
            split_record_path=run_dir / "data_split.json",
        )

    def load_model(self) -> None:
        from sparsify.trainers.vision_models import load_image_model

        loaded = load_image_model(self.plan.model, len(self.class_names),
                                  self.settings.arch_key)
        self.model, self.loaded = loaded.model, loaded
        # The dense FP32 starting point, exported later as the latency baseline.
        self.baseline = copy.deepcopy(self.model).eval()
        self.start_sparsity = prunable_sparsity(self.model)["overall"]
        logger.info("Data: %d train / %d val images, %d classes; model %s (%s), sparsity %.1f%%",
                    len(self.train_ds), len(self.val_ds), len(self.class_names),
                    loaded.arch_key, loaded.source, 100 * self.start_sparsity)

    @property
    def head_replaced(self) -> bool:
        """Whether the starting model's classifier head was replaced for this data."""
        return self.loaded.head_replaced

    def load_teacher(self, choice: Any) -> nn.Module:
        """A distillation teacher, loaded like ``--model`` with this run's class count."""
        from sparsify.trainers.vision_models import load_image_model

        loaded = load_image_model(choice, len(self.class_names))
        if loaded.head_replaced:
            logger.warning("The teacher '%s' had no head for these %d classes: its head is new "
                           "(untrained), so distilling from it teaches noise.", choice.spec,
                           len(self.class_names))
        return loaded.model

    # --- training ----------------------------------------------------------------------------
    def train(self, recipe: Any, teacher: nn.Module | None = None, phase: str = "main",
              resume: Path | None = None) -> TrainResult:
        """Train ``model`` under the recipe; ``phase`` ``teacher`` keeps its checkpoints and
        logs in ``teacher/`` subfolders (the dense teacher of ``--teacher auto``).

        A resumable checkpoint (:func:`~sparsify.trainers.resume.save_resume`) is written at
        the end of every epoch, every ``checkpoint_steps`` optimizer steps when set, and when
        a signal asks training to stop (:mod:`sparsify.stop`); ``resume`` continues from one.
        """
        from accelerate import Accelerator
        from torch.utils.data import DataLoader
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        from sparsify import stop
        from sparsify.modifiers.lifecycle import ModifierLifecycle
        from sparsify.trainers.resume import (
            load_resume, rng_state, save_resume, set_rng_state, stop_requested,
        )

        settings, plan = self.settings, self.plan
        device = resolve_device(plan.device)
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        batch_size = settings.batch_size
        accum = settings.gradient_accumulation_steps
        workers = (settings.num_workers if settings.num_workers is not None
                   else min(4, max(0, (torch.get_num_threads() or 1) - 1)))
        gen = torch.Generator().manual_seed(plan.seed)
        # a last batch of one image cannot be normalised by BatchNorm in training mode: drop it
        # (it is a different image every epoch, as the data is shuffled)
        lone_last = len(self.train_ds) % batch_size == 1 and len(self.train_ds) > 1
        train_loader = DataLoader(self.train_ds, batch_size=batch_size, shuffle=True,
                                  num_workers=workers, generator=gen, drop_last=lone_last,
                                  persistent_workers=workers > 0)
        val_loader = DataLoader(self.val_ds, batch_size=settings.eval_batch_size or batch_size,
                                shuffle=False, num_workers=workers)
        optimizer_name = settings.optimizer
        lr = settings.learning_rate
        if lr is None:
            lr = 0.01 if optimizer_name == "sgd" else 1e-3
        wd = settings.weight_decay
        if wd is None:
            wd = 1e-4 if optimizer_name == "sgd" else 0.01

        model = self.model
        if teacher is not None:
            teacher = teacher.to(accelerator.device)
        lifecycle = ModifierLifecycle(recipe, model, teacher)
        lifecycle.initialize_structure()  # channels removed before the optimizer sees them
        optimizer = build_optimizer(model, optimizer_name, lr, wd)
        model, optimizer, train_loader, val_loader = accelerator.prepare(
            model, optimizer, train_loader, val_loader)
        steps_per_epoch = max(1, math.ceil(len(train_loader) / accum))
        lifecycle.initialize(optimizer, steps_per_epoch)
        epochs = lifecycle.max_epochs
        scheduler = None
        if not lifecycle.controls_lr:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=epochs * steps_per_epoch)
        amp_dtype = (torch.bfloat16 if accelerator.device.type == "cuda"
                     and torch.cuda.is_bf16_supported() else None)

        artifacts, logs = phase_dirs(self.run_dir, phase)
        writer = SummaryWriter(str(logs)) if accelerator.is_main_process else None
        metric_name = plan.eval_metric
        best: dict[str, float] = {}
        best_epoch, history, first_epoch, skip, spent = -1, [], 0, 0, 0.0
        if resume is not None:
            saved = load_resume(resume, recipe)
            lifecycle.load_resume_state(saved["lifecycle"])
            accelerator.unwrap_model(model).load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
            best, best_epoch, history = saved["best"], saved["best_epoch"], saved["history"]
            first_epoch, skip, spent = saved["epoch"], saved["step_in_epoch"], saved["seconds"]
            gen.set_state(saved["epoch_generator"])
            logger.info("Resuming %s training at epoch %d, step %d of %d (%s)", phase,
                        first_epoch + 1, skip, steps_per_epoch, resume)
        started = time.monotonic() - spent
        every = settings.checkpoint_steps

        def checkpoint(epoch: int, step_in_epoch: int, epoch_generator: torch.Tensor,
                       epoch_rng: dict[str, Any], running: tuple[float, int] = (0.0, 0)
                       ) -> None:
            if accelerator.is_main_process:
                save_resume(artifacts, {
                    "state_dict": accelerator.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "lifecycle": lifecycle.resume_state(), "recipe": recipe.to_yaml(),
                    "epoch": epoch, "step_in_epoch": step_in_epoch,
                    "epoch_generator": epoch_generator, "epoch_rng": epoch_rng,
                    "rng": rng_state(),
                    "running": running,
                    "best": best, "best_epoch": best_epoch, "history": history,
                    "seconds": time.monotonic() - started, "phase": phase})

        with stop.graceful():
            for epoch in range(first_epoch, epochs):
                # the shuffle of this epoch and the random state its first batch is drawn with:
                # a resume replays the batches before its checkpoint from them
                if resume is not None:
                    set_rng_state(saved["epoch_rng"])
                epoch_generator, epoch_rng = gen.get_state(), rng_state()
                model.train()
                lifecycle.epoch_start()
                bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                           unit="step", disable=not accelerator.is_main_process,
                           dynamic_ncols=True, leave=True, initial=skip)
                running, seen, done = 0.0, 0, skip
                if resume is not None:
                    running, seen = saved["running"]
                loader_iter = iter(batches(train_loader))
                for _ in range(skip * accum):  # the batches trained before the checkpoint
                    next(loader_iter)
                if resume is not None:  # as the checkpoint left it, for what follows
                    set_rng_state(saved["rng"])
                    resume = None
                for index, (images, targets) in enumerate(loader_iter, start=skip * accum):
                    lifecycle.batch_start()
                    use_amp = amp_dtype is not None and not lifecycle.qat_active
                    context = (torch.autocast("cuda", dtype=amp_dtype) if use_amp
                               else nullcontext())
                    with context:
                        outputs = model(images)
                        loss = F.cross_entropy(outputs, targets)
                    loss = lifecycle.loss_calculated(loss, images, outputs)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"The loss became {float(loss)} at epoch {lifecycle.epoch:.2f}.",
                            hint="Lower the learning rate (--recipe-args init_lr=...) or check "
                                 "the data.")
                    accelerator.backward(loss / accum)
                    running += float(loss.detach()) * images.shape[0]
                    seen += images.shape[0]
                    last = index + 1 == len(train_loader)
                    if (index + 1) % accum == 0 or last:
                        lifecycle.optim_pre_step()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        lifecycle.optim_post_step()
                        if scheduler is not None:
                            scheduler.step()
                        lifecycle.batch_end()
                        done += 1
                        current_lr = optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{running / max(seen, 1):.4f}",
                                        lr=f"{current_lr:.2e}",
                                        qat="on" if lifecycle.qat_active else "off")
                        bar.update(1)
                        if writer:
                            writer.add_scalar("train/loss", float(loss.detach()), lifecycle.step)
                            writer.add_scalar("train/lr", current_lr, lifecycle.step)
                        halt = not last and stop_requested()  # once per step: every rank
                        if halt or (not last and every and done % every == 0):
                            checkpoint(epoch, done, epoch_generator, epoch_rng, (running, seen))
                        if halt:
                            bar.close()
                            raise stop.stop_now()
                bar.close()
                lifecycle.epoch_end()
                metrics = self.evaluate(model, val_loader, accelerator)
                metrics["train_loss"] = running / max(seen, 1)
                metrics["sparsity"] = prunable_sparsity(
                    accelerator.unwrap_model(model), lifecycle.masked_parameter_names() or None
                )["overall"]
                history.append({"epoch": epoch + 1, **metrics})
                logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if writer:
                    for key, value in metrics.items():
                        writer.add_scalar(f"val/{key}", value, epoch + 1)
                better = (not best or (metrics[metric_name] < best[metric_name]
                                       if metric_name == "loss"
                                       else metrics[metric_name] >= best[metric_name]))
                if better:
                    best, best_epoch = dict(metrics), epoch + 1
                if accelerator.is_main_process:
                    payload = self._checkpoint(accelerator.unwrap_model(model), recipe, epoch + 1,
                                               metrics, lifecycle)
                    save_checkpoint(artifacts / "model_last.pth", payload)
                    if better:
                        save_checkpoint(artifacts / "model_best.pth", payload)
                skip = 0
                if epoch + 1 < epochs:
                    checkpoint(epoch + 1, 0, gen.get_state(), rng_state())
                    if stop_requested():
                        raise stop.stop_now()
        lifecycle.finalize()
        if writer:
            writer.close()
        self.model = accelerator.unwrap_model(model)
        check_replicas_agree(self.model)
        self.model = self.model.cpu().eval()
        self.qat = lifecycle.qat_active
        # The whole validation set (the prepared loader holds this rank's shard only).
        final = self.evaluate(self.model, _loader(self.val_ds, batch_size), None)
        logger.info("Final model on the %d validation images: %s", self.last_eval_count,
                    ", ".join(f"{k}={v:.4f}" for k, v in final.items()))
        final["sparsity"] = prunable_sparsity(
            self.model, lifecycle.masked_parameter_names() or None)["overall"]
        return TrainResult(final, best, best_epoch, epochs, history, time.monotonic() - started,
                           lifecycle.masked_parameter_names(), lifecycle.pruning_policy(),
                           cost=lifecycle.cost.report())

    def _checkpoint(self, model: nn.Module, recipe: Any, epoch: int, metrics: dict[str, float],
                    lifecycle: Any) -> dict[str, Any]:
        return {"state_dict": model.state_dict(), "arch_key": self.loaded.arch_key,
                "num_classes": len(self.class_names), "class_names": list(self.class_names),
                "epoch": epoch, "metrics": metrics, "qat": lifecycle.qat_active,
                "started_modifiers": lifecycle.started_modifiers(), "recipe": recipe.to_yaml(),
                "structure": lifecycle.structure_record(), "image_size": self.image_size}

    def restore(self, recipe: Any, artifacts: Path, checkpoint: Path | None = None
                ) -> dict[str, Any]:
        """Load ``training_artifacts/model_last.pth`` (or ``checkpoint``) into the model, with
        the QAT structure the recipe had given it; the model ends as training left it."""
        from sparsify.trainers.common import restore_checkpoint

        path = checkpoint or artifacts / "model_last.pth"
        payload = _load_payload(path)
        self.qat = restore_checkpoint(self.model, recipe, payload["state_dict"],
                                      _started(payload, recipe), path,
                                      structure=payload.get("structure"))
        return payload

    def validate(self, model: nn.Module) -> dict[str, float]:
        """The task metrics of ``model`` on the whole validation set."""
        return self.evaluate(model, _loader(self.val_ds, self.settings.eval_batch_size
                                            or self.settings.batch_size), None)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        loss_sum, top1, top5, count = 0.0, 0, 0, 0
        for images, targets in batches(loader):
            images, targets = images.to(device), targets.to(device)
            logits = model(images).float()
            if accelerator is not None:
                logits, targets = accelerator.gather_for_metrics((logits, targets))
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            top1 += _topk(logits, targets, 1)
            top5 += _topk(logits, targets, 5)
            count += targets.shape[0]
        if was_training:
            model.train()
        if count == 0:
            raise DataError("The validation set is empty.")
        self.last_eval_count = count
        metrics = {"top1": top1 / count, "loss": loss_sum / count}
        if len(self.class_names) >= 5:
            metrics["top5"] = top5 / count
        return metrics

    # --- export ------------------------------------------------------------------------------
    def sample_batch(self, n: int = 32) -> torch.Tensor:
        images = [self.val_ds[i][0] for i in range(min(n, len(self.val_ds)))]
        return torch.stack(images)

    def latency_lengths(self) -> None:
        """Images have one input size."""
        return None

    def latency_inputs(self, batch: int, length: int | None = None) -> dict[str, Any]:
        """ONNX Runtime inputs of ``batch`` images for the latency measurement."""
        return {"input": self.sample_batch(1).repeat(batch, 1, 1, 1).numpy()}

    def export(self, deploy_dir: Path, baseline_path: Path) -> ExportResult:
        """Export the trained model (INT8 when QAT ran) and the dense FP32 baseline; check the
        export's top-1 against PyTorch's on the whole validation set."""
        from sparsify.export.image import export_classifier

        batches = list(_loader(self.val_ds, 64))
        val_images = torch.cat([batch[0] for batch in batches])
        val_labels = torch.cat([batch[1] for batch in batches])
        return export_classifier(
            model=self.model, baseline=self.baseline, val_images=val_images,
            val_labels=val_labels,
            deploy_dir=deploy_dir, baseline_path=baseline_path, quantized=self.qat,
            config={
                "task": "image_classification",
                "architecture": self.loaded.arch_key,
                "class_names": list(self.class_names),
                "num_classes": len(self.class_names),
                **self._transform_config(),
            },
        )

    def _transform_config(self) -> dict[str, Any]:
        from sparsify.data.image_datasets import transform_config

        return transform_config(self.image_size)


def _loader(dataset: Any, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _load_payload(path: Path) -> dict[str, Any]:
    from sparsify.errors import ModelNotFoundError

    if not path.is_file():
        raise ModelNotFoundError(f"No checkpoint at {path}: training ended before its first "
                                 "epoch was saved.", hint="Run the training again.")
    return torch.load(path, map_location="cpu", weights_only=True)


def _started(payload: dict[str, Any], recipe: Any) -> list[int]:
    """The modifiers that had started at a checkpoint; older checkpoints recorded only the QAT
    flag, so every modifier that starts before the checkpoint's epoch is taken as started."""
    if "started_modifiers" in payload:
        return list(payload["started_modifiers"])
    epoch = float(payload.get("epoch", 0))
    return [i for i, m in enumerate(recipe.build_modifiers()) if m.start_epoch < epoch]


def run_image_classification(plan: Plan, data: str, run_dir: Path) -> ImageClassificationTask:
    """Build the task (validates the data; the model is loaded by ``load_model``)."""
    return ImageClassificationTask(plan, data, run_dir)

