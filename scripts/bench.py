"""Speed of the numpy network on this machine: MLP training samples/s and its share of the
sgemm peak, CNN training epoch time, and CNN inference on 28000 images. Synthetic data.

    python scripts/bench.py [--threads 1] [--plan 32c5-p-64c5-p-fc128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.nn import DEFAULTS, Model  # noqa: E402
from pipeline.nn.augment import augment_batch, parse_augment  # noqa: E402
from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward  # noqa: E402
from pipeline.nn.models import build_spec  # noqa: E402
from pipeline.nn.optim import Optimizer  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402


def timeit(f, seconds=3.0):
    f()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f()
        n += 1
    return (time.perf_counter() - t0) / n


def sgemm_peak():
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    return 2 * 2048 ** 3 / timeit(lambda: a @ a, 2.0)


def train_step_fn(model, batch, aug=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    opt = Optimizer("adam", model.theta.size, model.n_decay)

    def step():
        xb = augment_batch(x, aug, rng) if aug else x
        z, caches = model.forward_train(xb, rng)
        _, c = softmax_cross_entropy_forward(z, y)
        model.backward(softmax_cross_entropy_backward(c), caches)
        opt.step(model.theta, model.grad, 1e-3)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="OpenBLAS threads (0 = as is)")
    ap.add_argument("--plan", default=DEFAULTS["cnn"]["plan"])
    a = ap.parse_args()
    with blas_threads(a.threads):
        peak = sgemm_peak()
        print(f"sgemm peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
        mlp = Model(build_spec("mlp", {**DEFAULTS["mlp"], "hidden": (256, 128), "dropout": 0.0}))
        dt = timeit(train_step_fn(mlp, 128))
        flops = 2 * 128 * (784 * 256 + 256 * 128 + 128 * 10) * 3 - 2 * 128 * 784 * 256  # no dx for input
        print(f"mlp 784-256-128-10 adam batch 128: {128 / dt:,.0f} samples/s, {dt * 1e3:.2f} ms/step, "
              f"{flops / dt / 1e9:.1f} GFLOP/s = {flops / dt / peak:.0%} of sgemm peak")
        cnn = Model(build_spec("cnn", {**DEFAULTS["cnn"], "plan": a.plan}))
        B = DEFAULTS["cnn"]["batch_size"]
        dt = timeit(train_step_fn(cnn, B, parse_augment(DEFAULTS["cnn"]["augment"])), 5.0)
        print(f"cnn {a.plan} batch {B} (with augmentation): {dt * 1e3:.1f} ms/step, "
              f"{B / dt:,.0f} samples/s, epoch of 37800 rows {37800 / B * dt:.1f} s")
        x = np.random.default_rng(1).normal(size=(28000, 28, 28, 1)).astype(np.float32)
        t = time.perf_counter()
        predict_proba([cnn], x)
        print(f"cnn predict 28000 images: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
