"""How to apply the Winograd transforms: conv_winograd runs each 2-D transform kron(M, M) @ X
(for F(4x4, 3x3)'s input: (36 x 36) @ (36, T*C)) as two 1-D passes (`winograd.transform`: across the
tile, a product per tile row, then down it, a product per tile column on strided rows), with 3x
fewer multiply-adds. This runs real train() epochs (the bench's cnn settings) and predict_proba
with that form ("two passes"), with the one kron product ("kron", the form before 2026-12-02),
and with one (p, q*q*R) product down the tile first and then across ("down first", the two-pass
form this script measured before: slower than kron on 2026-12-02 09:26 and 13:56 UTC), in turn,
at a chosen chunk size, medians. The variants are swapped in from here (conv_winograd's
`transform` replaced), without a switch in the package.

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
TWO_PASSES = Wi.transform
_KRONS = {}  # id of a 1-D factor -> kron(M, M)


def kron_product(M, X, out):
    """out = kron(M, M) @ X as one (p*p, q*q) product."""
    K = _KRONS.get(id(M))
    if K is None:
        K = _KRONS[id(M)] = np.ascontiguousarray(np.kron(M, M))
    return np.matmul(K, X, out=out)


def down_first(M, X, out):
    """out = kron(M, M) @ X as one (p, q*q*R) product down the tile, then across it."""
    p, q = M.shape
    R = X.shape[-1]
    tmp = np.matmul(M, X.reshape(q, q * R)).reshape(p, q, R)  # down the tile
    np.matmul(M, tmp, out=out.reshape(p, p, R))  # across it
    return out


FORMS = {"two passes": TWO_PASSES, "kron": kron_product, "down first": down_first}


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
    variants = {(form, mb): (fn, int(mb * 2**20))
                for mb in a.chunk_mb for form, fn in FORMS.items()}

    def use(v):
        Wi.transform, Wi.CHUNK_BYTES = variants[v]

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
        Wi.transform = TWO_PASSES
    print(f"medians of {a.rounds} interleaved rounds, {a.rows} rows scaled to 42000 (epochs) "
          "and 28000 (predict_proba, two threads)")
    for (form, mb), threads in trainers:
        print(f"  {form:10s} {mb:4.1f} MB chunks  epoch, {threads} thread(s): "
              f"{np.median(epochs[(form, mb), threads]):6.2f} s")
    for form, mb in variants:
        print(f"  {form:10s} {mb:4.1f} MB chunks  predict: {np.median(predicts[form, mb]):5.2f} s")


if __name__ == "__main__":
    main()
