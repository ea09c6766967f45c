"""Pieces every trainer shares: device choice, seeding, optimizers, checkpoints, sparsity."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.errors import UsageError

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CUDA included) seeded, by Accelerate's ``set_seed``."""
    from accelerate.utils import set_seed

    set_seed(seed % 2**32)  # NumPy takes 32-bit seeds


def phase_dirs(run_dir: Path, phase: str) -> tuple[Path, Path]:
    """``(checkpoint folder, TensorBoard folder)`` of a training phase: the run's own for the
    main training, ``teacher/`` subfolders for the dense teacher's fine-tune."""
    artifacts, logs = run_dir / "training_artifacts", run_dir / "logs"
    if phase != "main":
        artifacts, logs = artifacts / phase, logs / phase
    artifacts.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    return artifacts, logs


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; explicit devices are checked.

    Raises:
        UsageError: the requested device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine. "
                         "Use --device cpu or auto.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), numbered from 0.", hint="Use --device cuda:0 or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available on this machine.")
    return torch.device(name)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def prunable_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, Any]:
    """Exact zeros in the prunable weights (or in ``names``, e.g. the weights a recipe
    pruned): overall and per layer."""
    from sparsify.modifiers.selectors import prunable_parameter_names

    params = dict(model.named_parameters())
    per_layer, zeros, total = {}, 0, 0
    for name in names or prunable_parameter_names(model):
        w = params[name].detach()
        z = int((w == 0).sum())
        per_layer[name] = round(z / w.numel(), 4)
        zeros += z
        total += w.numel()
    return {"overall": round(zeros / max(total, 1), 4), "per_layer": per_layer,
            "prunable_parameters": total}


def save_checkpoint(path: Path, payload: dict[str, Any], previous: Path | None = None) -> None:
    """``torch.save`` to a temporary name, then rename (never a half-written checkpoint);
    ``previous``: the checkpoint being replaced is kept under that name.

    Raises:
        TrainingError: the disk is full (the file and the space it needed named; the
            checkpoint it would have replaced is intact).
    """
    from sparsify.errors import TrainingError

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(payload, tmp)
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if not disk_full(exc):
            raise
        need = sum(t.numel() * t.element_size() for t in _tensors(payload))
        free = shutil.disk_usage(path.parent).free
        raise TrainingError(
            f"No space left on the device writing {path} (about {need / 2**20:.0f} MB needed, "
            f"{free / 2**20:.0f} MB free).",
            hint="Free some space (or use --working-dir on another disk) and resume: the last "
                 "complete checkpoint is intact.") from None


@contextlib.contextmanager
def full_disk_named(folder: Path) -> Iterator[None]:
    """A framework's own checkpoint write (the HF Trainer's, Ultralytics') that fails for want
    of space becomes a :class:`~sparsify.errors.TrainingError` naming the folder."""
    from sparsify.errors import TrainingError

    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not disk_full(exc):
            raise
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        raise TrainingError(
            f"No space left on the device writing a checkpoint in {folder} ({exc}; "
            f"{free / 2**20:.0f} MB free).",
            hint="Free some space (or use --working-dir on another disk) and resume: the last "
                 "complete checkpoint is intact.") from None


def disk_full(exc: BaseException) -> bool:
    """Whether a failed write failed for want of space (torch says "file write failed")."""
    import errno

    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) \
        or "file write failed" in str(exc)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []



def check_replicas_agree(model: nn.Module) -> None:
    """Under a distributed launch, check that every rank ends training with the same parameters.

    DDP averages the gradients, and the pruning masks and QAT act alike on every rank, so the
    parameters must be identical; a difference means a rank trained something the others did
    not (and the main process would export only its own copy). Buffers are not compared: QAT
    observers added during training see each rank's own data by design.

    Raises:
        TrainingError: on every rank, naming the first rank and parameter that differ from
            rank 0's.
    """
    import torch.distributed as dist

    from sparsify.errors import TrainingError

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    mine = ([name for name, _ in model.named_parameters()],
            [float(p.detach().double().sum()) for p in model.parameters()])
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    names, reference = gathered[0]
    for rank, (other_names, sums) in enumerate(gathered[1:], start=1):
        if other_names != names:
            raise TrainingError(f"Rank {rank} ended training with other parameters than rank 0.")
        for name, ref, theirs in zip(names, reference, sums):
            if ref != theirs:
                raise TrainingError(
                    f"Rank {rank}'s '{name}' differs from rank 0's after training "
                    f"(sums {theirs!r} vs {ref!r}): the data-parallel replicas diverged.")
    logger.info("Data-parallel check: parameters identical on all %d ranks.",
                dist.get_world_size())


def restore_checkpoint(model: nn.Module, recipe: Any, state_dict: dict[str, Any],
                       started: list[int], path: Path, complete: bool = False,
                       structure: list[dict[str, Any]] | None = None) -> bool:
    """Load a training checkpoint into a fresh copy of the starting model.

    The modifiers that had started when the checkpoint was written give the model their
    structure again (QAT modules, through the lifecycle), the state dict loads, and their
    end-of-training steps run (conv-bn folding), so the model is what training ended with.

    ``complete``: entries the checkpoint lacks are taken from the restructured model itself
    (weights ``save_pretrained`` leaves out because they are tied to others).

    ``structure``: the checkpoint's ``ModifierLifecycle.structure_record()`` (the channels a
    ``ChannelPruningModifier`` removed), redone as recorded rather than chosen again.

    Returns:
        Whether the restored model carries QAT structure (it then exports as INT8).

    Raises:
        ModelNotFoundError: the checkpoint does not fit the model (another architecture, or a
            run folder whose recipe or model was changed).
    """
    from sparsify.errors import ModelNotFoundError
    from sparsify.modifiers.lifecycle import ModifierLifecycle

    lifecycle = ModifierLifecycle(recipe, model)
    lifecycle.restore_structure(started, structure)
    if complete:
        state_dict = {**{k: v for k, v in model.state_dict().items() if k not in state_dict},
                      **state_dict}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelNotFoundError(
            f"The checkpoint {path} does not fit the run's model: "
            f"{' '.join(first[:2])[:400]}",
            hint="Export from the run folder the checkpoint was written in, unchanged "
                 "(plan.yaml, recipe.yaml and the starting model).") from None
    lifecycle.finalize_restored()
    model.eval()
    return lifecycle.qat_active


def batches(loader: Any) -> Any:
    """Iterate a DataLoader; a ``DataError`` raised in a worker process (an image that cannot be
    decoded) comes back as that one message, not as the worker's traceback text."""
    from sparsify.errors import DataError

    try:
        yield from loader
    except DataError as error:
        if "Original Traceback" not in error.message:
            raise
        last = [line for line in error.message.strip().splitlines() if line.strip()][-1]
        message = last.split("DataError: ", 1)[-1].strip()
        raise DataError(message, hint="Replace or remove the file and start the run again.") \
            from None
