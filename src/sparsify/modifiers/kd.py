"""Knowledge-distillation loss (torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over every position (all leading
    axes are flattened, the last axis holds the classes).

    ``mask`` (the leading axes' shape, e.g. a ``(batch, tokens)`` attention mask for per-token
    logits): only positions where it is non-zero count, so padding does not dilute the loss.
    """
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes)
    t = teacher_logits.reshape(-1, classes)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        if not bool(keep.any()):
            return student_logits.sum() * 0.0
        s, t = s[keep], t[keep]
    s = F.log_softmax(s.float() / temperature, dim=-1)
    t = F.softmax(t.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean") * temperature**2


def output_tensors(outputs: Any, keys: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """Logit tensors of a model output: a tensor, a tuple (by position) or a mapping (by key;
    ``keys`` None = every floating tensor except ``loss``)."""
    if isinstance(outputs, torch.Tensor):
        return {"output": outputs}
    if isinstance(outputs, (tuple, list)):
        found = {str(i): o for i, o in enumerate(outputs) if isinstance(o, torch.Tensor)}
    else:
        found = {k: v for k, v in dict(outputs).items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "loss"}
    if keys is None:
        return found
    missing = [k for k in keys if k not in found]
    if missing:
        raise KeyError(f"distill_output_keys {missing} not in the model outputs "
                       f"(present: {', '.join(found)})")
    return {k: found[k] for k in keys}


def distillation_loss(task_loss: torch.Tensor, student_outputs: Any, teacher_outputs: Any,
                      hardness: float, temperature: float,
                      keys: Sequence[str] | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1 - h) * task_loss + h * mean over output keys of kd_loss``.

    With an ``attention_mask`` of shape ``(batch, tokens)``, outputs shaped
    ``(batch, tokens, classes)`` (per-token logits) are distilled on real tokens only.
    """
    student = output_tensors(student_outputs, keys)
    teacher = output_tensors(teacher_outputs, list(student))

    def mask_for(logits: torch.Tensor) -> torch.Tensor | None:
        if attention_mask is not None and logits.dim() == 3 \
                and tuple(logits.shape[:2]) == tuple(attention_mask.shape):
            return attention_mask
        return None

    distill = torch.stack([kd_loss(student[k], teacher[k], temperature, mask_for(student[k]))
                           for k in student]).mean()
    return (1.0 - hardness) * task_loss + hardness * distill
