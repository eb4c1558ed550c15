"""How large a chunk of images the Winograd kernels should take (conv_winograd.CHUNK_BYTES):
the default cnn's training step on one and two threads, and predicting rows on two threads,
for each size in turn inside one process (rounds interleaved, so a change in load hits every
size), medians.

    python scripts/experiments/wino_chunks.py                 # 2M, 3M, 4M; 20 rounds
    python scripts/experiments/wino_chunks.py --mb 1 2 4 8 --rounds 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import predict as P  # noqa: E402
from pipeline.nn import conv_winograd as Wi  # noqa: E402
from pipeline.nn.losses import (  # noqa: E402
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from pipeline.nn.model import Model  # noqa: E402
from pipeline.nn.models import build_spec  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402
from pipeline.params import TrainConfig  # noqa: E402
from pipeline.train import hyperparameters  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, nargs="+", default=[2, 3, 4], help="chunk sizes, MB")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--predict-rows", type=int, default=8192)
    a = p.parse_args(argv)
    hp = hyperparameters(TrainConfig(model="cnn"))
    model = Model(build_spec("cnn", hp))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    xt = rng.standard_normal((a.predict_rows, 28, 28, 1), dtype=np.float32)

    def step():
        z, caches = model.forward_train(x, rng)
        _, lc = softmax_cross_entropy_forward(z, y)
        model.backward(softmax_cross_entropy_backward(lc), caches)

    def predict():
        P.predict_proba([model], xt)

    sizes = [int(mb * (1 << 20)) for mb in a.mb]
    runs = {}
    saved, P.PREDICT_THREADS = P.PREDICT_THREADS, 2
    try:
        with blas_threads(1):
            predict()  # warm-up
            for _ in range(a.rounds + 1):  # the first round is a warm-up
                for size in sizes:
                    Wi.CHUNK_BYTES = size
                    for threads in (1, 2):
                        model.threads = threads
                        t0 = time.perf_counter()
                        step()
                        runs.setdefault(("step", threads, size), []).append(
                            time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    predict()
                    runs.setdefault(("predict", 2, size), []).append(time.perf_counter() - t0)
    finally:
        P.PREDICT_THREADS = saved
    print(f"medians of {a.rounds} interleaved rounds, wall time")
    for (what, threads, size), t in runs.items():
        t = float(np.median(t[1:]))
        unit = (f"{t * 1e3:7.1f} ms per step" if what == "step"
                else f"{t:7.3f} s per {a.predict_rows} rows")
        print(f"{size / (1 << 20):5.2f} MB  {what:<8} {threads} thread(s)  {unit}")


if __name__ == "__main__":
    main()
