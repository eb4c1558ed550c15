"""The small pieces of an MLP training step, each as it was and as it is now (the same bits:
tests/test_nn_step_kernels.py), timed side by side in one process on one thread: the figures
quoted in the comments of pipeline/nn/{batches,layers,losses,optim}.py and train.py, and the
Adam blocking that was tried and dropped.

    OPENBLAS_NUM_THREADS=1 python scripts/experiments/mlp_step_kernels.py [--zip PATH]

Medians of interleaved repeats, this thread's CPU time (time.thread_time); state the load.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.nn import layers as L  # noqa: E402
from pipeline.nn.losses import row_max  # noqa: E402
from pipeline.nn.losses import softmax_cross_entropy_backward as loss_bwd  # noqa: E402
from pipeline.nn.losses import softmax_cross_entropy_forward as loss_fwd  # noqa: E402


def side_by_side(cases, repeats=200, before=None):
    """cases: {name: f} -> {name: median microseconds}, the cases taking turns."""
    t = {k: [] for k in cases}
    for _ in range(repeats):
        for k, f in cases.items():
            arg = before() if before else None
            t0 = time.thread_time()
            f(arg) if before else f()
            t[k].append(time.thread_time() - t0)
    return {k: float(np.median(v)) * 1e6 for k, v in t.items()}


def show(title, res):
    print(f"{title}: " + ", ".join(f"{k} {v:.1f} us" for k, v in res.items()))


def plain_loss(z, y):
    N = z.shape[0]
    zc = z - z.max(axis=1, keepdims=True)
    zc -= np.log(np.exp(zc).sum(axis=1, keepdims=True))
    loss = float((-zc[np.arange(N), y]).mean())
    dz = np.exp(zc)
    dz[np.arange(N), y] -= 1.0
    dz *= 1.0 / N
    return loss, dz


def adam_ops(theta, g, m, v, tmp, c1=0.1, c2=0.001, e2=1e-8, st=1e-3):
    """The 12 passes of optim._adam_core (constants of step t = 10 or so)."""
    np.subtract(g, m, tmp)
    np.multiply(tmp, c1, tmp)
    np.add(m, tmp, m)
    np.square(g, g)
    np.subtract(g, v, g)
    np.multiply(g, c2, g)
    np.add(v, g, v)
    np.sqrt(v, tmp)
    np.add(tmp, e2, tmp)
    np.divide(m, tmp, tmp)
    np.multiply(tmp, st, tmp)
    np.subtract(theta, tmp, theta)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zip", type=Path, default=Path("/work/shared/data/digit-recognizer.zip"),
                   help="competition zip for the gather and x.min() figures (synthetic if absent)")
    a = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, numpy {np.__version__}")
    rng = np.random.default_rng(0)
    if a.zip.is_file():
        from pipeline.data import read_competition
        from pipeline.preprocess import fit_normalizer, normalize
        d = read_competition(a.zip)
        x = normalize(d.train_x, fit_normalizer(d.train_x))  # (42000, 28, 28, 1)
    else:
        x = rng.standard_normal((42000, 28, 28, 1), dtype=np.float32)
    perm = rng.permutation(len(x))
    buf = np.empty((128, 28, 28, 1), np.float32)
    pos = [0]

    def fresh_rows():  # a batch of rows not gathered recently
        pos[0] = (pos[0] + 128) % (len(x) - 128)
        return perm[pos[0]:pos[0] + 128]

    show("batch gather, 128 fresh rows", side_by_side({
        "np.take(out=) raise": lambda i: np.take(x, i, axis=0, out=buf),
        "np.take(out=) clip": lambda i: np.take(x, i, axis=0, out=buf, mode="clip"),
    }, before=fresh_rows))
    show("x.min() over the training rows", side_by_side({"x.min()": lambda: x.min()}, 5))

    z = rng.standard_normal((128, 256), dtype=np.float32)
    show("ReLU forward (128, 256)", side_by_side({
        "maximum(x, 0.0)": lambda: np.maximum(z, 0.0),
        "maximum(x, zero row)": lambda: L.relu_forward(z)}))
    a1 = L.relu_forward(z)[0]
    da = rng.standard_normal(z.shape, dtype=np.float32)
    show("ReLU backward (128, 256)", side_by_side({
        "da * (a > 0)": lambda: da * (a1 > 0), "0/1 mask *= da": lambda: L.relu_backward(da, a1)}))
    xb = rng.standard_normal((128, 28, 28, 1), dtype=np.float32)
    show("flatten (128, 28, 28, 1)", side_by_side({
        "int(np.prod)": lambda: xb.reshape(128, int(np.prod(xb.shape[1:]))),
        "math.prod": lambda: L.flatten_forward(xb)}))
    show("colsum (128, 256)", side_by_side({
        "fresh ones": lambda: np.ones(128, np.float32) @ z, "cached ones": lambda: L.colsum(z)}))

    logits = rng.standard_normal((128, 10), dtype=np.float32) * 3
    y = rng.integers(0, 10, 128)
    show("row max (128, 10)", side_by_side({
        "z.max(axis=1)": lambda: logits.max(axis=1, keepdims=True),
        "row_max": lambda: row_max(logits)}, 2000))
    show("loss forward + backward (128, 10)", side_by_side({
        "plain": lambda: plain_loss(logits, y),
        "now": lambda: loss_bwd(loss_fwd(logits, y)[1])}, 2000))

    n = 235146  # the bench MLP's parameters
    g0 = rng.standard_normal(n, dtype=np.float32)
    vecs = [rng.standard_normal(n, dtype=np.float32) for _ in range(2)] + [
        np.zeros(n, np.float32), np.zeros(n, np.float32), np.empty(n, np.float32)]
    theta, g, m, v, tmp = vecs
    def refill():
        g[...] = g0

    show("Adam's g^2 in place over 235146", side_by_side({
        "multiply(g, g)": lambda _: np.multiply(g, g, out=g),
        "square(g)": lambda _: np.square(g, out=g)}, before=refill))

    def blocked(B):
        views = [tuple(u[s:s + B] for u in vecs) for s in range(0, n, B)]  # made once

        def run(_):
            for w in views:
                adam_ops(*w)
        return run

    cases = {"whole vectors": lambda _: adam_ops(theta, g, m, v, tmp)}
    cases.update({f"blocks of {B}": blocked(B) for B in (65536, 32768, 16384, 8192)})
    show("Adam's 12 passes over 235146 (tried: L2-sized blocks)",
         side_by_side(cases, 60, before=refill))
    assert math.isfinite(float(theta[0]))


if __name__ == "__main__":
    main()
