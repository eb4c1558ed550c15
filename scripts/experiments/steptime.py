"""Time one training step (batch 128, one BLAS thread, one step thread) of cnn plans, to see what
a plan costs before training it on a fold:

    python scripts/experiments/steptime.py 32c5-p-64c5-p-fc128 32c5-p-64c3-64c3-p-fc128

Prints the mean of 15 steps after 3 warm-up steps for each plan, with the parameter count, and
the ratio to the first plan. Under load the absolute figures move; compare plans within one run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import train as T  # noqa: E402
from pipeline.nn import models as M  # noqa: E402
from pipeline.nn.model import Model  # noqa: E402
from pipeline.nn.optim import Optimizer  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402


def step_seconds(plan, x, y, rng, steps=15, warm=3):
    hp = {**M.DEFAULTS["cnn"], "plan": plan}
    model = Model(M.build_spec("cnn", hp), rng=rng)
    model.threads = 1
    opt = Optimizer("adamw", model.theta.size, model.n_decay, weight_decay=1e-4)
    with blas_threads(1):
        for _ in range(warm):
            T.train_step(model, opt, x, y, 1e-3, rng)
        t0 = time.perf_counter()
        for _ in range(steps):
            T.train_step(model, opt, x, y, 1e-3, rng)
    return (time.perf_counter() - t0) / steps, model.theta.size


def main(plans):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    first = None
    for plan in plans or [M.DEFAULTS["cnn"]["plan"]]:
        sec, n = step_seconds(plan, x, y, rng)
        first = first or sec
        print(f"{plan:36s} {sec * 1000:7.1f} ms/step  {sec / first:4.2f}x  {n:,} parameters",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
