"""Detection and segmentation: YOLO data, Ultralytics models, the Ultralytics trainer.

Ultralytics (AGPL-3.0, the optional ``detection`` extra) is imported only when a run starts. Its
trainer runs the loop; this module maps the loop onto the modifier lifecycle:

* ``on_train_epoch_start`` / ``on_train_epoch_end`` -> EPOCH_START / EPOCH_END;
* ``on_train_batch_start`` -> BATCH_START (the recipe's LR is set here, after Ultralytics'
  own per-epoch scheduler step, which therefore has no effect);
* the trainer's ``optimizer_step`` method is wrapped: OPTIM_PRE_STEP, the step, OPTIM_POST_STEP
  (masks re-applied), BATCH_END, then the EMA update from the masked weights and the masks
  applied to the EMA weights too (the EMA is what Ultralytics validates and saves).

Ultralytics' gradient accumulation is switched off (``nbs = batch``), so one batch is one
optimizer step and ``steps_per_epoch`` is the number of batches. When QAT starts, AMP and the
EMA are switched off (the EMA then *is* the trained model), and each ``Conv``'s SiLU gets its own
:class:`QATSiLU`, so the conv/bn/act blocks export as QLinearConv -> QLinearSigmoid ->
QLinearMul. The DFL head's fixed integral convolution is neither pruned nor quantized.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import DataError, ModelNotFoundError, TrainingError
from sparsify.families import settings_for
from sparsify.plan import Plan
from sparsify.quantization import QATSiLU  # noqa: F401 - old checkpoints pickled it here
from sparsify.trainers.base import ExportResult, TrainResult
from sparsify.trainers.common import (
    full_disk_named,
    prunable_sparsity,
    resolve_device,
    seed_everything,
)
from sparsify.trainers.yolo_models import (
    freeze_dfl_,
    load_yolo_model,
    mask_like_,
    quantize_conv_activations_,
)

logger = logging.getLogger(__name__)

#: use-case family -> Ultralytics task.
TASK_OF_FAMILY = {"detection": "detect", "segmentation": "segment"}
_OPTIMIZERS = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}


# --------------------------------------------------------------------------------------------
# The Ultralytics trainer, subclassed at run time (Ultralytics is an optional import)
# --------------------------------------------------------------------------------------------


def _trainer_class(task: str) -> type:
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer

    base = SegmentationTrainer if task == "segment" else DetectionTrainer

    class SparsifyYoloTrainer(base):  # type: ignore[misc, valid-type]
        """Ultralytics' trainer with the modifier lifecycle in its optimizer step."""

        sparsify_data: dict[str, Any] | None = None
        lifecycle: Any = None
        masked_names: list[str] = []

        def get_dataset(self) -> dict[str, Any]:
            # Staged data is already checked: no Ultralytics download or font check.
            if self.sparsify_data is not None:
                return dict(self.sparsify_data)
            return super().get_dataset()

        def optimizer_step(self) -> None:
            lifecycle = self.lifecycle
            lifecycle.optim_pre_step()
            ema, self.ema = self.ema, None
            try:
                super().optimizer_step()
            finally:
                self.ema = ema
            lifecycle.optim_post_step()
            lifecycle.batch_end()
            if ema is not None and ema.enabled and ema.ema is not self.model:
                ema.update(self.model)
                mask_like_(ema.ema, self.model, self.masked_names)

        def final_eval(self) -> None:
            # The final evaluation runs after the lifecycle's finalize (masks, BN folding) on
            # the model that is exported, not on a reloaded best.pt.
            return None

    return SparsifyYoloTrainer


class DetectionTask:
    """Data (checked and staged when built), then the model (:meth:`load_model`); ``train``
    and ``export`` follow (the :class:`~sparsify.trainers.base.Task` contract)."""

    head_replaced = False  # Ultralytics builds the head for the data's classes

    def __init__(self, plan: Plan, data: str, run_dir: Path) -> None:
        from sparsify.data.yolo import is_named_dataset, validate_yolo_dataset
        from sparsify.data.yolo_stage import stage_dataset

        self.plan, self.run_dir = plan, run_dir
        self.task = TASK_OF_FAMILY[plan.use_case.family]
        self.settings = settings_for(plan.use_case.family, plan.train_kwargs)
        seed_everything(plan.seed)
        self.image_size = self.settings.image_size
        self.val_fraction = self.settings.val_fraction

        # Data first: a rejected dataset fails before any model is built.
        self.dataset = None
        if is_named_dataset(data):
            logger.info("Dataset %s: passed to Ultralytics (downloaded when online)", data)
            data_arg, prepared = data, None
        else:
            self.dataset = validate_yolo_dataset(data, self.task, val_fraction=self.val_fraction,
                                                 seed=plan.seed)
            data_arg = str(stage_dataset(self.dataset, run_dir))
            staged = run_dir / "dataset"
            prepared = {
                "path": staged.resolve(), "yaml_file": data_arg,
                "train": str((staged / "images/train").resolve()),
                "val": str((staged / "images/val").resolve()),
                "names": dict(enumerate(self.dataset.names)), "nc": len(self.dataset.names),
                "channels": 3,
            }
        self.trainer = self._build_trainer(data_arg, prepared)
        names = self.trainer.data["names"]
        self.class_names = [names[i] for i in sorted(names)] if isinstance(names, dict) \
            else list(names)
        self.qat = False

    def load_model(self) -> None:
        loaded = load_yolo_model(self.plan.model, self.task, len(self.class_names))
        self.loaded = loaded
        self.dfl_names = freeze_dfl_(loaded.model)
        self.model = loaded.model
        self.model.names = dict(enumerate(self.class_names))
        # The dense FP32 starting point, exported later as the latency baseline.
        self.baseline = copy.deepcopy(self.model).eval()
        self.start_sparsity = prunable_sparsity(self.model)["overall"]
        logger.info("Model %s (%s), sparsity %.1f%%", loaded.architecture, loaded.source,
                    100 * self.start_sparsity)

    def restore(self, recipe: Any, artifacts: Path, checkpoint: Path | None = None
                ) -> dict[str, Any]:
        """Load ``training_artifacts/model_final.pt`` (or ``checkpoint``): the trained model as
        training ended, QAT structure included (the file pickles the module, written by this
        run; it is read with ``weights_only=False`` for that reason)."""
        path = checkpoint or artifacts / "model_final.pt"
        if not path.is_file():
            raise ModelNotFoundError(f"No checkpoint at {path}: training did not finish.",
                                     hint="Run the training again.")
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self.model = payload["model"].float().cpu().eval()
        self.qat = bool(payload.get("qat"))
        return payload

    # --- Ultralytics trainer -----------------------------------------------------------------
    def _build_trainer(self, data_arg: str, prepared: dict[str, Any] | None) -> Any:
        settings, plan = self.settings, self.plan
        device = resolve_device(plan.device)
        cls = _trainer_class(self.task)
        cls.sparsify_data = prepared
        batch = settings.batch_size
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        overrides = {
            "model": self.plan.model.spec if self.plan.model.spec.endswith((".pt", ".yaml"))
            else "yolov8n.yaml",  # only a label here: the model object is set before training
            "data": data_arg, "task": self.task, "imgsz": self.image_size, "batch": batch,
            # nbs = batch: no gradient accumulation, one batch is one optimizer step.
            "nbs": batch, "workers": settings.num_workers,
            "device": "cpu" if device.type == "cpu" else str(device.index or 0),
            "project": str(self.run_dir.resolve()), "name": "training_artifacts", "exist_ok": True,
            "plots": False, "amp": "bf16" if bf16 else False, "seed": plan.seed,
            "optimizer": _OPTIMIZERS[settings.optimizer],
            "lr0": settings.learning_rate, "verbose": False, "pretrained": False,
            "val": True, "save": True, "cache": False,
        }
        if settings.weight_decay is not None:
            overrides["weight_decay"] = settings.weight_decay
        if device.type == "mps":
            overrides["device"] = "mps"
        try:
            trainer = cls(overrides=overrides)
        except (RuntimeError, FileNotFoundError, SyntaxError, TypeError) as exc:
            raise DataError(f"Ultralytics could not load the dataset '{data_arg}': {exc}",
                            hint="Offline, named datasets (coco8.yaml...) cannot be downloaded: "
                                 "pass a local YOLO dataset folder or YAML.") from None
        # Ultralytics sets workers to 0 on CPU whatever it was given; the loaders are built
        # later from args, so a worker count the user asked for is honoured here.
        trainer.args.workers = settings.num_workers
        return trainer

    # --- training ----------------------------------------------------------------------------
    def load_teacher(self, choice: Any) -> nn.Module:
        return load_yolo_model(choice, self.task, len(self.class_names)).model

    def train(self, recipe: Any, teacher: nn.Module | None = None, phase: str = "main",
              resume: Path | None = None) -> TrainResult:
        """Train under the recipe (YOLO has one phase: no teacher of its own, see
        ``Family.distills``).

        A resumable checkpoint (``training_artifacts/resume.pth``,
        :mod:`sparsify.trainers.detection_resume`) is written at the end of every epoch;
        Ultralytics' loop cannot start inside an epoch, so a signal stops at the next batch
        and ``resume`` repeats that epoch from its start."""
        from sparsify import stop
        from sparsify.modifiers.lifecycle import ModifierLifecycle
        from sparsify.trainers.detection_resume import YoloResume

        if teacher is not None:
            logger.warning("Distillation is not available for YOLO training yet; the teacher "
                           "is not used.")
        trainer, model = self.trainer, self.model
        # The DFL's fixed integral conv decodes boxes: it stays float.
        lifecycle = ModifierLifecycle(recipe, model, None, float_modules=self.dfl_names)
        epochs = lifecycle.max_epochs
        trainer.model = model
        trainer.epochs = trainer.args.epochs = epochs
        trainer.args.close_mosaic = min(int(trainer.args.close_mosaic), max(epochs // 3, 0))
        if lifecycle.controls_lr:
            trainer.args.warmup_epochs = 0.0  # the recipe owns the LR from the first step
        trainer.lifecycle = lifecycle
        state = {"qat_ready": False}
        resumable = YoloResume(trainer, lifecycle, recipe, self.plan.seed, resume)

        def on_train_start(tr: Any) -> None:
            lifecycle.initialize(tr.optimizer, max(1, len(tr.train_loader)))
            resumable.attach()
            if resumable.saved is not None and resumable.saved["qat_ready"]:
                # the structure first (QAT modules, quantized SiLUs), then the weights
                resumable.restore_structure()
                self._qat_started(tr)
                state["qat_ready"] = True
            resumable.restore()
            tr.masked_names = lifecycle.masked_parameter_names()

        def on_epoch_start(tr: Any) -> None:
            lifecycle.epoch_start()

        def on_batch_start(tr: Any) -> None:
            lifecycle.batch_start()
            tr.masked_names = lifecycle.masked_parameter_names()
            if lifecycle.qat_active and not state["qat_ready"]:
                self._qat_started(tr)
                state["qat_ready"] = True

        def on_epoch_end(tr: Any) -> None:
            lifecycle.epoch_end()
            loss = getattr(tr, "loss", None)
            if loss is not None and not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {float(loss)} at epoch {lifecycle.epoch:.2f}.",
                    hint="Lower the learning rate (--recipe-args init_lr=...) or check the data.")

        trainer.add_callback("on_train_start", on_train_start)
        trainer.add_callback("on_train_epoch_start", on_epoch_start)
        trainer.add_callback("on_train_batch_start", on_batch_start)
        def on_batch_end(tr: Any) -> None:
            from sparsify.trainers.resume import stop_requested

            if stop_requested():
                raise resumable.stopped()

        trainer.add_callback("on_train_epoch_end", on_epoch_end)
        trainer.add_callback("on_train_batch_end", on_batch_end)
        trainer.add_callback("on_fit_epoch_end", lambda tr: resumable.save(state["qat_ready"]))

        with stop.graceful(), full_disk_named(Path(trainer.save_dir)):  # Ultralytics' saves
            trainer.train()
        seconds = resumable.seconds()
        lifecycle.finalize()
        self.qat = lifecycle.qat_active
        final = trainer.model if self.qat or trainer.ema is None else trainer.ema.ema
        if final is not trainer.model:
            mask_like_(final, trainer.model, lifecycle.masked_parameter_names())
        self.model = final.float().cpu().eval()

        metrics = self.evaluate(self.model)
        metrics["sparsity"] = prunable_sparsity(
            self.model, lifecycle.masked_parameter_names() or None)["overall"]
        history = self._history()
        best_epoch = int(getattr(trainer.stopper, "best_epoch", epochs - 1)) + 1
        best = next((dict(h) for h in history if h.get("epoch") == best_epoch), dict(metrics))
        best.pop("epoch", None)
        from sparsify.trainers.common import save_checkpoint

        save_checkpoint(self.run_dir / "training_artifacts" / "model_final.pt", {
            "model": copy.deepcopy(self.model), "names": self.class_names, "task": self.task,
            "image_size": self.image_size, "qat": self.qat, "recipe": recipe.to_yaml(),
            "metrics": metrics})
        return TrainResult(metrics, best, best_epoch, epochs, history, seconds,
                           lifecycle.masked_parameter_names(), lifecycle.pruning_policy(),
                           cost=lifecycle.cost.report())

    def _qat_started(self, trainer: Any) -> None:
        """QAT just began: quantize the SiLUs, switch AMP and the EMA off."""
        n = quantize_conv_activations_(trainer.model)
        logger.info("QAT: %d Conv blocks get quantized SiLU activations; AMP and EMA off.", n)
        trainer.amp = False
        trainer.args.amp = False
        trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
        if trainer.ema is not None:
            trainer.ema.ema = trainer.model
            trainer.ema.enabled = False

    def _history(self) -> list[dict[str, float]]:
        rows = self.trainer.read_results_csv()
        if not rows:
            return []
        out = []
        for i in range(len(rows.get("epoch", []))):
            row = {k: rows[k][i] for k in rows}
            entry = {"epoch": int(row["epoch"])}
            entry.update(_rename_metrics(row))
            out.append(entry)
        return out

    def validate(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate(model)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """mAP50 / mAP50-95 (box, and mask for segmentation), precision and recall on the
        validation images, with Ultralytics' validator."""
        trainer = self.trainer
        validator = trainer.get_validator()
        validator.args.plots = False
        holder = trainer.ema
        try:
            if holder is not None:
                saved = holder.ema
                holder.ema = model
            else:
                saved = trainer.model
                trainer.model = model
            trainer.amp = False
            results = validator(trainer)
        finally:
            if holder is not None:
                holder.ema = saved
            else:
                trainer.model = saved
        return _rename_metrics(results or {})

    # --- export ------------------------------------------------------------------------------
    def val_pairs(self) -> list[tuple[Path, Path | None]]:
        """The validation images with their label files (``None``: no objects)."""
        if self.dataset is not None:
            return list(self.dataset.val)
        from ultralytics.data.utils import img2label_paths

        from sparsify.data.yolo import IMG_EXTENSIONS

        val = Path(str(self.trainer.data["val"]))
        images = sorted(p for p in val.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        labels = [Path(p) for p in img2label_paths([str(p) for p in images])]
        return [(i, lab if lab.is_file() else None) for i, lab in zip(images, labels)]

    def latency_lengths(self) -> None:
        """Images have one input size."""
        return None

    def latency_inputs(self, batch: int, length: int | None = None) -> dict[str, Any]:
        """ONNX Runtime inputs of ``batch`` images for the latency measurement."""
        import numpy as np

        from sparsify.export.detection import letterbox

        image = letterbox(self.val_pairs()[0][0], self.image_size)
        return {"images": np.repeat(image[None], batch, axis=0)}

    def export(self, deploy_dir: Path, baseline_path: Path) -> ExportResult:
        """INT8 (when QAT ran) ONNX with raw, NMS-free outputs, checked by box mAP50-95."""
        from sparsify.export.detection import export_yolo

        return export_yolo(
            model=self.model, baseline=self.baseline, val=self.val_pairs(),
            deploy_dir=deploy_dir, baseline_path=baseline_path, quantized=self.qat,
            config={"task": self.plan.use_case.id, "ultralytics_task": self.task,
                    "architecture": self.loaded.architecture,
                    "class_names": list(self.class_names),
                    "num_classes": len(self.class_names), "image_size": self.image_size})


_METRIC_NAMES = {
    "metrics/mAP50(B)": "map50", "metrics/mAP50-95(B)": "map50_95",
    "metrics/precision(B)": "precision", "metrics/recall(B)": "recall",
    "metrics/mAP50(M)": "mask_map50", "metrics/mAP50-95(M)": "mask_map50_95",
    "metrics/precision(M)": "mask_precision", "metrics/recall(M)": "mask_recall",
    "val/box_loss": "val_box_loss", "val/cls_loss": "val_cls_loss",
    "val/seg_loss": "val_seg_loss", "val/dfl_loss": "val_dfl_loss",
}


def _rename_metrics(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, name in _METRIC_NAMES.items():
        value = row.get(key)
        if value is not None:
            value = float(value)
            if math.isfinite(value):
                out[name] = value
    return out


def run_detection(plan: Plan, data: str, run_dir: Path) -> DetectionTask:
    """Build the task (checks and stages the data; the model is loaded by ``load_model``)."""
    return DetectionTask(plan, data, run_dir)
