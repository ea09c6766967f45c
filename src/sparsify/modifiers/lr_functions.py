"""Learning-rate schedules as pure functions of the fractional epoch (no torch)."""

from __future__ import annotations

import bisect
import math


def _progress(epoch: float, start: float, end: float) -> float:
    if end <= start:
        return 1.0
    return min(max((epoch - start) / (end - start), 0.0), 1.0)


def lr_linear(epoch: float, start: float, end: float, init_lr: float, final_lr: float) -> float:
    """``init + (e - s) / (end - s) * (final - init)``, clamped to the window."""
    return init_lr + _progress(epoch, start, end) * (final_lr - init_lr)


def lr_cosine(epoch: float, start: float, end: float, init_lr: float, final_lr: float) -> float:
    """Half a cosine from ``init_lr`` at ``start`` down (or up) to ``final_lr`` at ``end``."""
    x = _progress(epoch, start, end)
    return final_lr + 0.5 * (init_lr - final_lr) * (1.0 + math.cos(math.pi * x))


def lr_cyclic_linear(epoch: float, start: float, end: float, init_lr: float, final_lr: float,
                     cycle_epochs: float) -> float:
    """Linear from ``init_lr`` to ``final_lr`` over each cycle of ``cycle_epochs``, restarting."""
    offset = max(epoch - start, 0.0)
    within = offset % cycle_epochs
    return init_lr + (within / cycle_epochs) * (final_lr - init_lr)


def lr_step(epoch: float, start: float, init_lr: float, step_size: float, gamma: float) -> float:
    """StepLR: ``init * gamma ** floor((e - s) / step_size)``."""
    return init_lr * gamma ** math.floor(max(epoch - start, 0.0) / step_size + 1e-12)


def lr_multistep(epoch: float, init_lr: float, milestones: list[float], gamma: float) -> float:
    """MultiStepLR: multiply by ``gamma`` at each milestone epoch reached."""
    return init_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch + 1e-12)


def lr_exponential(epoch: float, start: float, init_lr: float, gamma: float) -> float:
    """ExponentialLR: multiply by ``gamma`` once per whole epoch since ``start``."""
    return init_lr * gamma ** math.floor(max(epoch - start, 0.0) + 1e-12)


def lr_cosine_warm_restarts(epoch: float, start: float, init_lr: float, t_0: float,
                            t_mult: float = 1.0, eta_min: float = 0.0) -> float:
    """CosineAnnealingWarmRestarts with periods in epochs (``T_0``, then ``T_0 * T_mult``...)."""
    t = max(epoch - start, 0.0)
    period = t_0
    while t >= period:
        t -= period
        period *= t_mult
    return eta_min + 0.5 * (init_lr - eta_min) * (1.0 + math.cos(math.pi * t / period))
