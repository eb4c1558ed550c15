"""Do two threads running the same matrix product at once (numpy with one BLAS thread each, as
the package's conv+pool and BatchNorm steps run their parts) finish sooner than one thread
running both in turn? `a @ b` (np.matmul) against np.dot(a, b), for the shapes of the default
cnn's first-layer steps (fused_first: the moments (9, P) @ (P, 10), the weight-gradient sums
(10, P) @ (P, 32), P = 9 images x 676 positions), the BatchNorm column sums (ones @ (M, C),
colsum) and a few others. Prints each one's scaling: one thread's time for 2R products / two
threads' time for R each (2.0 = perfect, 1.0 = serialized, below 1: slower than in turn).

numpy's matmul of a few rows by a long inner dimension, and its vector @ matrix, did not scale
here (numpy 2.4.6, OpenBLAS 0.3.31); np.dot of the same arrays did, so the package calls
np.dot there (fused_first._products, layers.colsum).

    python scripts/experiments/matmul_threads.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

P = 9 * 26 * 26  # one fused_first chunk of the first layer: 9 images, 26x26 outputs
SHAPES = {  # name -> (M, K, N); M = 1: a vector @ matrix
    "c1 weight-gradient sums (10, P) @ (P, 32)": (10, P, 32),
    "c1 moments (9, P) @ (P, 10)": (9, P, 10),
    "BatchNorm colsum ones(M) @ (M, 32), M = 128*144": (1, 128 * 144, 32),
    "BatchNorm colsum ones(M) @ (M, 64), M = 128*100": (1, 128 * 100, 64),
    "(32, P) @ (P, 32)": (32, P, 32),
    "(128, 784) @ (784, 256), the MLP's first layer": (128, 784, 256),
    "(256, 256) @ (256, 256)": (256, 256, 256),
}


def scaling(f, repeats, rounds):
    """one thread's median time for 2*repeats calls / two threads' for repeats calls each."""
    def timed(threads):
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            if threads == 1:
                for _ in range(2 * repeats):
                    f()
            else:
                other = threading.Thread(target=lambda: [f() for _ in range(repeats)])
                other.start()
                for _ in range(repeats):
                    f()
                other.join()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))
    return timed(1) / timed(2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"scaling on two threads (2.0 perfect, 1.0 serialized), medians of {a.rounds} rounds")
    print(f"{'product':52s} {'a @ b':>7s} {'np.dot':>7s}")
    with threadpool_limits(1):
        for name, (M, K, N) in SHAPES.items():
            x = rng.standard_normal(K if M == 1 else (M, K), dtype=np.float32)
            y = rng.standard_normal((K, N), dtype=np.float32)
            mm = scaling(lambda x=x, y=y: x @ y, a.repeats, a.rounds)
            dot = scaling(lambda x=x, y=y: np.dot(x, y), a.repeats, a.rounds)
            print(f"{name:52s} {mm:7.2f} {dot:7.2f}")


if __name__ == "__main__":
    main()
