"""Resumable training checkpoints: what continuing an interrupted training needs, written
atomically, the last two kept.

A resumable checkpoint (``resume.pth`` in the phase's ``training_artifacts`` folder, the one
before it ``resume.prev.pth``) holds the model's state dict (QAT modules included), the
optimizer's and LR scheduler's state, the modifier lifecycle's state (step, which modifiers
started and ended, masks, the pruning schedule's position), the epoch and the optimizer step
within it, the data order of that epoch, the RNG states, the best metrics and history so far,
and the recipe it was written under. The trainer continues from it
(:meth:`~sparsify.modifiers.lifecycle.ModifierLifecycle.load_resume_state` before the state
dict loads).
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsify.errors import ModelNotFoundError
from sparsify.trainers.common import save_checkpoint

logger = logging.getLogger(__name__)

RESUME = "resume.pth"
PREVIOUS = "resume.prev.pth"


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and CUDA) random states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain values and tensors only: the checkpoint loads with ``weights_only=True``
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(artifacts: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as the phase's newest resumable checkpoint; the one it replaces
    becomes ``resume.prev.pth`` (an interrupted write leaves both intact)."""
    path = artifacts / RESUME
    save_checkpoint(path, payload, previous=artifacts / PREVIOUS)
    return path


#: the Hugging Face Trainer's checkpoint folders of a phase (``checkpoint-STEP``), each with
#: our ``resume.pth`` written into it last (a folder without it was cut short)
HF_CHECKPOINTS = "hf_trainer"


def resume_candidates(artifacts: Path) -> list[Path]:
    """A phase's resumable checkpoints, newest first: ``resume.pth`` and ``resume.prev.pth``
    (our loop, Ultralytics), or ``hf_trainer/checkpoint-STEP/resume.pth`` (the HF Trainer)."""
    found = [artifacts / name for name in (RESUME, PREVIOUS) if (artifacts / name).is_file()]
    folders = []
    for folder in (artifacts / HF_CHECKPOINTS).glob("checkpoint-*"):
        step = folder.name.partition("-")[2]
        if step.isdigit() and (folder / RESUME).is_file():
            folders.append((int(step), folder / RESUME))
    return found + [path for _, path in sorted(folders, reverse=True)]


def find_resume(artifacts: Path) -> Path | None:
    """The newest resumable checkpoint of a phase (``None``: there is none)."""
    candidates = resume_candidates(artifacts)
    return candidates[0] if candidates else None


def load_resume(path: Path, recipe: Any) -> dict[str, Any]:
    """Read a resumable checkpoint (an older one of the phase when the newest cannot be read);
    ``loaded_from`` in the result names the file read.

    Raises:
        ModelNotFoundError: none can be read, or it was written under another recipe.
    """
    artifacts = path.parent.parent.parent if path.parent.parent.name == HF_CHECKPOINTS \
        else path.parent
    others = resume_candidates(artifacts)
    candidates = [path] + (others[others.index(path) + 1:] if path in others else [])
    problems = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            saved = torch.load(candidate, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            problems.append(f"{candidate.name}: {exc}")
            logger.warning("The checkpoint %s cannot be read (%s); trying the one before it.",
                           candidate, exc)
            continue
        if saved.get("recipe") != recipe.to_yaml():
            raise ModelNotFoundError(
                f"The checkpoint {candidate} was written under another recipe than the run's "
                "recipe.yaml.", hint="Resume with the run folder as it was written.")
        saved["loaded_from"] = str(candidate)
        return saved
    raise ModelNotFoundError(f"No readable resumable checkpoint at {artifacts}"
                             f"{': ' + '; '.join(problems) if problems else ''}.",
                             hint="Start the run again.")


def stop_requested() -> bool:
    """Whether a signal asked training to stop; under a distributed launch, whether any rank
    was asked (so every rank stops at the same step)."""
    import torch.distributed as dist

    from sparsify import stop

    asked = stop.requested() is not None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(asked)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        asked = bool(flag.item())
    return asked
