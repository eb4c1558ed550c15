"""Where a Winograd conv's inference time goes, phase by phase, on one thread: the gather of
the tiles' input windows, the input transform (KB: kron(BT, BT) @ D, in conv_winograd's two 1-D
passes), the n*n products with the transformed kernel (UV: (T, C) @ (C, F) each), the output
transform (KA: kron(AT, AT) @ M, two passes too) and the pool, for one chunk of images of each
of the default cnn's three wide convs (c2+p3, c4, c5+p6), medians of 30.
The UV products are the part no rewrite of the transforms removes: their total over the 28000
test rows is a floor for predict_proba with this network on this BLAS.

By default one chunk is timed over and over, so its input stays in cache. With --stream each
timed pass walks the whole 128-row input chunk by chunk, as conv_winograd does, and each phase's
time is summed over the chunks: the gather then reads its windows from memory, and the
transforms find less of their data in the core's cache.

    python scripts/experiments/wino_phases.py
    python scripts/experiments/wino_phases.py --stream --rounds 20
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import sgemm_gflops, timed  # noqa: E402

from pipeline.config import N_TEST  # noqa: E402
from pipeline.nn.conv_winograd import _chunk  # noqa: E402
from pipeline.nn.fused import OFFSETS  # noqa: E402
from pipeline.nn.model import EVAL_CHUNK  # noqa: E402
from pipeline.nn.winograd import factors, kron_matrices, transform  # noqa: E402


def timed_ms(f, repeats=30):
    """Median milliseconds of `repeats` calls of f, after one."""
    f()
    return 1e3 * float(np.median([timed(f) for _ in range(repeats)]))


def phases(name, H, C, F, m, pool, rng, stream=False, rounds=30):
    """-> {phase: ms per EVAL_CHUNK rows} for a 3x3 conv of an H x H x C map to F channels by
    F(m x m, 3 x 3): one chunk of conv_winograd's size timed over and over and scaled, or with
    `stream` every chunk of the EVAL_CHUNK rows in turn, each phase summed (medians of
    `rounds`)."""
    k = 3
    n, A = m + k - 1, (H - k + 1) // m
    h = m // 2
    x = rng.random((EVAL_CHUNK, H, H, C), dtype=np.float32)
    w = rng.random((k, k, C, F), dtype=np.float32)
    _, KG, _ = kron_matrices(k, m, np.float32)
    AT, BT, _, _ = factors(k, m, np.float32)
    U = (KG @ w.reshape(k * k, C * F)).reshape(n * n, C, F)
    c = _chunk(n, A, A, C, F, 4)  # images per chunk, as conv_winograd
    T = c * A * A
    sN, sH, sW, sC = x.strides
    tiles = np.lib.stride_tricks.as_strided(
        x, (n, n, EVAL_CHUNK, A, A, C), (sH, sW, sN, m * sH, m * sW, sC))
    D = np.empty((n, n, c, A, A, C), np.float32)
    V = np.empty((n * n, T, C), np.float32)
    M = np.empty((n * n, T, F), np.float32)
    Y = np.empty((m * m, T * F), np.float32)
    P = np.empty((h, h, c, A, A, F), np.float32)

    # each phase on the chunk of images s:e (at most c of them), as conv_winograd runs it
    def pool_max(s, e):
        Y2 = Y[:, : (e - s) * A * A * F].reshape(h, 2, h, 2, e - s, A, A, F)
        q = [Y2[:, i, :, j] for i, j in OFFSETS]
        p = P[:, :, : e - s]
        np.maximum(q[0], q[1], out=p)
        np.maximum(p, q[2], out=p)
        np.maximum(p, q[3], out=p)

    steps = {
        "gather": lambda s, e: np.copyto(D[:, :, : e - s], tiles[:, :, s:e]),
        "KB": lambda s, e: transform(BT, D[:, :, : e - s].reshape(n * n, -1),
                                      V[:, : (e - s) * A * A].reshape(n * n, -1)),
        "UV": lambda s, e: np.matmul(V[:, : (e - s) * A * A], U, out=M[:, : (e - s) * A * A]),
        "KA": lambda s, e: transform(AT, M[:, : (e - s) * A * A].reshape(n * n, -1),
                                      Y[:, : (e - s) * A * A * F]),
    }
    if pool:
        steps["pool"] = pool_max
    if stream:
        return streamed(name, H, C, F, m, c, steps, rounds)
    ms = {key: timed_ms(lambda f=f: f(0, c), rounds) for key, f in steps.items()}
    uv_rate = 2 * n * n * T * C * F / (ms["UV"] * 1e-3) / 1e9
    scaled = {key: v * EVAL_CHUNK / c for key, v in ms.items()}
    print(f"{name:6s} {H}x{H}x{C} -> {F}, F({m}x{m}, 3x3), chunks of {c} images; ms per "
          f"{EVAL_CHUNK} rows: " + ", ".join(f"{key} {v:.2f}" for key, v in scaled.items())
          + f" (UV at {uv_rate:.0f} GFLOP/s)")
    return scaled


def streamed(name, H, C, F, m, c, steps, rounds):
    """`steps` ({phase: f(s, e)}) over every chunk of c of the EVAL_CHUNK rows in turn, each
    phase's time summed: -> {phase: ms per EVAL_CHUNK rows}, medians of `rounds`."""
    runs = []
    for _ in range(rounds + 1):  # the first is a warm-up
        ms = dict.fromkeys(steps, 0.0)
        for s in range(0, EVAL_CHUNK, c):
            e = min(s + c, EVAL_CHUNK)
            for key, f in steps.items():
                t0 = time.perf_counter()
                f(s, e)
                ms[key] += 1e3 * (time.perf_counter() - t0)
        runs.append(ms)
    med = {key: float(np.median([r[key] for r in runs[1:]])) for key in steps}
    print(f"{name:6s} {H}x{H}x{C} -> {F}, F({m}x{m}, 3x3), chunks of {c} images, streamed; ms per "
          f"{EVAL_CHUNK} rows: " + ", ".join(f"{key} {v:.2f}" for key, v in med.items()))
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", action="store_true",
                    help="walk every chunk of the 128 rows in turn, as the kernel does")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (medians)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        print(f"sgemm {sgemm_gflops(2048):.0f} GFLOP/s on this thread, measured now (the machine's "
              "speed moves: compare the UV rates with this, not with another run's)")
        kw = dict(stream=a.stream, rounds=a.rounds)
        rows = [phases("c2+p3", 26, 32, 32, 4, True, rng, **kw),
                phases("c4", 12, 32, 64, 2, False, rng, **kw),
                phases("c5+p6", 10, 64, 64, 4, True, rng, **kw)]
    chunks = -(-N_TEST // EVAL_CHUNK)
    uv = sum(r["UV"] for r in rows) * chunks / 1e3
    total = sum(sum(r.values()) for r in rows) * chunks / 1e3
    print(f"over the {N_TEST} test rows, one thread: the three convs {total:.2f} s of CPU, "
          f"of which the UV products {uv:.2f} s (at best {uv / 2:.2f} s of wall time on two cores)")


if __name__ == "__main__":
    main()
