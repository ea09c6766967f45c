"""Resuming an Ultralytics (YOLO) training.

Ultralytics' own ``last.pt`` holds the half-precision EMA with the QAT structure stripped, so it
cannot continue a sparse-transfer run exactly. At the end of every epoch (``on_fit_epoch_end``,
after Ultralytics validated, wrote ``results.csv`` and saved ``last.pt``) this module writes
``training_artifacts/resume.pth``: the FP32 weights with their QAT structure, the EMA and its
update count, the optimizer, LR scheduler and grad scaler, the best fitness and the early
stopper, the modifier lifecycle, ``results.csv`` so far, the mosaic buffer and the random states.
:meth:`YoloResume.restore` puts all of it back in ``on_train_start``, before Ultralytics reads
``start_epoch``.

Two things had to be made reproducible for a resumed run to end as the uninterrupted one (CPU,
no loader workers): the training data's shuffle, which PyTorch's ``RandomSampler`` draws from a
generator shared by every epoch (and draws from once more when an epoch's iterator runs out), is
replaced by one drawn from ``(seed, epoch)``; and mosaic picks its companion images from the
buffer of recently loaded images, which is reloaded in order.

Ultralytics' loop cannot start inside an epoch: a signal stops training at the next batch and the
resume repeats that epoch from its start (a signal in the first epoch starts it again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sparsify import stop

logger = logging.getLogger(__name__)


class EpochShuffle(torch.utils.data.Sampler):
    """A shuffle of ``n`` items drawn from ``(seed, epoch)``: epoch ``k``'s order does not
    depend on how far earlier epochs' iterators were drawn. Each ``iter`` is the next epoch
    (Ultralytics' loader asks for one per epoch)."""

    def __init__(self, n: int, seed: int, epoch: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        yield from torch.randperm(self.n, generator=generator).tolist()


class YoloResume:
    """The resumable checkpoint of one Ultralytics training: :meth:`save` at each epoch's end,
    :meth:`restore_structure` + :meth:`restore` at the start of a resumed one."""

    def __init__(self, trainer: Any, lifecycle: Any, recipe: Any, seed: int,
                 resume: Path | None) -> None:
        from sparsify.trainers.resume import load_resume

        self.trainer, self.lifecycle, self.recipe, self.seed = trainer, lifecycle, recipe, seed
        self.artifacts = Path(trainer.save_dir)
        self.saved = load_resume(resume, recipe) if resume is not None else None
        self.started = time.monotonic() - (self.saved["seconds"] if self.saved else 0.0)
        self.epochs_done = self.saved["epoch"] if self.saved else 0

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def _sampler_holder(self) -> Any:
        """The batch sampler whose ``sampler`` shuffles the training data (None: not one that
        shuffles, e.g. under a distributed sampler)."""
        repeat = getattr(self.trainer.train_loader, "batch_sampler", None)
        batches = getattr(repeat, "sampler", None)
        if isinstance(getattr(batches, "sampler", None), torch.utils.data.RandomSampler):
            return batches
        return None

    def attach(self) -> None:
        """``on_train_start``: the training data shuffles from ``(seed, epoch)``."""
        holder = self._sampler_holder()
        if holder is not None:
            holder.sampler = EpochShuffle(len(holder.sampler), self.seed, self.epochs_done)

    def restore_structure(self) -> None:
        """The lifecycle's state and the structure of the modifiers that had started (QAT),
        before the weights load."""
        assert self.saved is not None
        self.lifecycle.load_resume_state(self.saved["lifecycle"])

    def restore(self) -> None:
        """``on_train_start`` of a resumed run: everything :meth:`save` wrote, back in place;
        Ultralytics then starts at ``start_epoch``."""
        from sparsify.trainers.resume import set_rng_state

        saved, tr = self.saved, self.trainer
        if saved is None:
            return
        if not saved["qat_ready"]:
            self.restore_structure()
        tr.model.load_state_dict(saved["state_dict"])
        tr.optimizer.load_state_dict(saved["optimizer"])
        tr.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler") is not None:
            tr.scaler.load_state_dict(saved["scaler"])
        if tr.ema is not None and saved["ema"] is not None and tr.ema.ema is not tr.model:
            tr.ema.ema.load_state_dict(saved["ema"])
            tr.ema.updates = saved["ema_updates"]
        tr.best_fitness = saved["best_fitness"]
        for key, value in saved["stopper"].items():
            setattr(tr.stopper, key, value)
        Path(tr.csv).write_text(saved["results_csv"], encoding="utf-8")
        dataset = tr.train_loader.dataset
        for index in saved["mosaic_buffer"]:  # the same companions for mosaic
            dataset.load_image(int(index))
        tr.start_epoch = saved["epoch"]
        set_rng_state(saved["rng"])
        logger.info("Resuming YOLO training at epoch %d of %d (%s)", saved["epoch"] + 1,
                    tr.epochs, saved["loaded_from"])

    def save(self, qat_ready: bool) -> None:
        """``on_fit_epoch_end``: the state after this epoch (none after the last one)."""
        from sparsify.trainers.resume import rng_state, save_resume

        tr = self.trainer
        self.epochs_done = tr.epoch + 1
        if self.epochs_done >= tr.epochs or tr.stop:
            return
        csv = Path(tr.csv)
        ema = tr.ema.ema if tr.ema is not None and tr.ema.ema is not tr.model else None
        save_resume(self.artifacts, {
            "state_dict": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(), "scaler": tr.scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "ema_updates": tr.ema.updates if ema is not None else 0,
            "best_fitness": _plain(tr.best_fitness),
            "stopper": {k: _plain(getattr(tr.stopper, k))
                        for k in ("best_fitness", "best_epoch", "possible_stop")},
            "results_csv": csv.read_text(encoding="utf-8") if csv.is_file() else "",
            "mosaic_buffer": [int(i) for i in getattr(tr.train_loader.dataset, "buffer", [])],
            "lifecycle": self.lifecycle.resume_state(), "recipe": self.recipe.to_yaml(),
            "qat_ready": qat_ready, "epoch": self.epochs_done, "rng": rng_state(),
            "seconds": self.seconds()})

    def stopped(self) -> stop.Stopped:
        """A signal during an epoch: say where the resume picks up, and stop."""
        logger.warning("Stopping: YOLO training resumes at the start of epoch %d (Ultralytics' "
                       "loop cannot start inside an epoch).", self.epochs_done + 1)
        return stop.stop_now()


def _plain(value: Any) -> Any:
    """A NumPy scalar as a Python number (the checkpoint loads with ``weights_only=True``)."""
    return value.item() if hasattr(value, "item") else value
