"""What one Winograd transform pass costs against copying its data: the input transform of the
default cnn's c2 (F(4x4, 3x3), 6 x 6 points, 32 channels) on one chunk of images as
conv_winograd runs it. The chunk is as many images as conv_winograd._chunk gives, the
arrays stay in cache, and everything runs on one thread. It prints microseconds per chunk
(best of 7 runs of 200) for the two 1-D passes, each pass alone, the kron product they
replace, and a copy of the same array.

    python scripts/experiments/transform_pass.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import timed  # noqa: E402

from pipeline.nn import conv_winograd as Wi  # noqa: E402
from pipeline.nn import winograd as Wn  # noqa: E402

K, M, TILES, C = 3, 4, 6, 32  # c2: 3x3 kernel, 4x4 tiles, 6x6 tiles per image, 32 channels


def best_us(fn, runs=7, repeat=200):
    """Microseconds per call of fn: the best of `runs` timings of `repeat` calls."""

    def calls():
        for _ in range(repeat):
            fn()

    return 1e6 * min(timed(calls) for _ in range(runs)) / repeat


def main():
    n = M + K - 1
    images = Wi._chunk(n, TILES, TILES, C, C, 4)
    R = images * TILES * TILES * C  # columns of a pass: tiles x channels
    _, BT, _, _ = Wn.factors(K, M, np.float32)
    _, _, KB = Wn.kron_matrices(K, M, np.float32)
    D = np.random.default_rng(0).random((n, n, R), dtype=np.float32)
    W1, V = np.empty_like(D), np.empty_like(D)

    def first():
        np.matmul(BT, D, out=W1)  # across the tile

    def second():
        np.matmul(BT, W1.transpose(1, 0, 2), out=V.transpose(1, 0, 2))  # down it

    def both():
        first()
        second()

    rows = [("the two 1-D passes (conv_winograd)", both), ("the first pass", first),
            ("the second pass", second),
            ("the kron product", lambda: np.matmul(KB, D.reshape(n * n, R),
                                                   out=V.reshape(n * n, R))),
            ("a copy of the array", lambda: np.copyto(W1, D))]
    print(f"c2's input transform, one chunk of {images} images ({D.nbytes / 2**20:.1f} MB), "
          "1 thread, us per chunk:")
    with threadpool_limits(1):
        for label, fn in rows:
            print(f"  {label:36s} {best_us(fn):8.1f}")


if __name__ == "__main__":
    main()
