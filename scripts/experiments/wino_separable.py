"""Would the Winograd transforms be faster as two 1-D passes? conv_winograd applies each 2-D
transform as one product with kron(M, M) (for F(4x4, 3x3): (36 x 36) @ (36, T*C)); applied down
the tile and then across it, the same transform is two products with 6-row factors and 3x fewer
multiply-adds. This runs real train() epochs (the bench's cnn settings) and predict_proba with
the kron products and with the two passes, in turn, at a chosen chunk size, medians.

The two-pass form is swapped in from here, without a switch in the package: conv_winograd's
`np` is replaced, for the second variant, by a stand-in whose matmul takes the kron matrices
(and their transposes) apart and hands every other product to numpy.

    python scripts/experiments/wino_separable.py                    # 3 rounds, 8192 rows
    python scripts/experiments/wino_separable.py --rounds 5 --chunk-mb 2 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import ours_trainer  # noqa: E402

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn import conv_winograd as Wi  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402

CNN = dict(model="cnn", schedule="constant", augment="none")  # as scripts/bench.py


class TwoPassNumpy:
    """numpy, but matmul(K2, X, out) with K2 = kron(M, M) (or its transpose) of conv_winograd
    runs as M down the tile, then M across it: out[i, j] = sum_uv M[i, u] M[j, v] X[u, v]."""

    def __init__(self):
        self.factors = {}  # id of a kron matrix -> its 1-D factor
        for k, m in ((3, 4), (3, 2), (5, 2)):
            mats = Wi.winograd_matrices(k, m)
            for K2, M in zip(Wi._kron(k, m, np.float32), mats):
                self.factors[id(K2)] = M.astype(np.float32)

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, out=None, **kw):
        M = self.factors.get(id(a))
        if M is None and a.base is not None and id(a.base) in self.factors:  # K2.T, a view
            M = self.factors[id(a.base)].T
        if M is None or b.ndim != 2:
            return np.matmul(a, b, out=out, **kw)
        p, q = M.shape
        R = b.shape[-1]
        tmp = np.matmul(M, b.reshape(q, q * R)).reshape(p, q, R)  # down the tile
        if out is None:
            return np.matmul(M, tmp).reshape(p * p, R)  # across it
        np.matmul(M, tmp, out=out.reshape(p, p, R))
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--chunk-mb", type=float, nargs="+", default=[2.0])
    a = p.parse_args(argv)
    d = read_competition(REPO.parent / "shared" / "data" / "digit-recognizer.zip")
    norm = fit_normalizer(d.train_x)
    x, y = normalize(d.train_x[: a.rows], norm), d.train_y[: a.rows].astype(np.int64)
    xt = normalize(d.test_x[: a.rows], norm)
    two_pass = TwoPassNumpy()
    variants = {(form, mb): (np if form == "kron" else two_pass, int(mb * 2**20))
                for mb in a.chunk_mb for form in ("kron", "two passes")}

    def use(v):
        Wi.np, Wi.CHUNK_BYTES = variants[v]

    trainers = {}
    for v in variants:
        for threads in (1, 2):
            use(v)
            trainers[v, threads] = ours_trainer(CNN, x, y, 0, threads)
    epochs = {k: [] for k in trainers}
    predicts = {v: [] for v in variants}
    model = None
    try:
        for _ in range(a.rounds):
            for (v, threads), epoch in trainers.items():
                use(v)
                seconds, result = epoch()
                epochs[v, threads].append(seconds * 42000 / a.rows)
                model = result.model
            for v in variants:
                use(v)
                t0 = time.perf_counter()
                predict_proba([model], xt)
                predicts[v].append((time.perf_counter() - t0) * 28000 / len(xt))
    finally:
        Wi.np = np
    print(f"medians of {a.rounds} interleaved rounds, {a.rows} rows scaled to 42000 (epochs) "
          "and 28000 (predict_proba, two threads)")
    for (form, mb), threads in trainers:
        print(f"  {form:10s} {mb:4.1f} MB chunks  epoch, {threads} thread(s): "
              f"{np.median(epochs[(form, mb), threads]):6.2f} s")
    for form, mb in variants:
        print(f"  {form:10s} {mb:4.1f} MB chunks  predict: {np.median(predicts[form, mb]):5.2f} s")


if __name__ == "__main__":
    main()
