"""Learning-rate schedules as functions of the step: constant, step decay, cosine, one-cycle.

`make_schedule(name, lr, total_steps) -> f(step) -> lr` with step in [0, total_steps). Warm
restarts and per-parameter-group rates are left out.
"""

from __future__ import annotations

import math


def constant(lr, total_steps):
    return lambda step: lr


def step_decay(lr, total_steps, drops=3, gamma=0.1):
    """lr * gamma^k, dropping `drops` times at evenly spaced steps."""
    size = max(1, math.ceil(total_steps / (drops + 1)))
    return lambda step: lr * gamma ** (step // size)


def cosine(lr, total_steps, final=0.0):
    """Half a cosine from lr at step 0 to `final`*lr at the last step."""
    last = max(1, total_steps - 1)
    return lambda step: (
        lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, last) / last)))
    )


def one_cycle(lr, total_steps, pct_start=0.25, div=25.0, final_div=1e4):
    """Linear warm-up from lr/div to lr over pct_start of the steps, then cosine down to
    lr/final_div at the last step (Smith 2018; PyTorch's OneCycleLR with linear warm-up)."""
    peak = max(1, round(pct_start * total_steps))
    last = max(peak + 1, total_steps - 1)
    lo, hi, end = lr / div, lr, lr / final_div

    def f(step):
        if step <= peak:
            return lo + (hi - lo) * step / peak
        s = min(step, last)
        return end + (hi - end) * 0.5 * (1 + math.cos(math.pi * (s - peak) / (last - peak)))

    return f


SCHEDULES = {"constant": constant, "step": step_decay, "cosine": cosine, "onecycle": one_cycle}


def make_schedule(name, lr, total_steps):
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](lr, total_steps)
