"""Where a Winograd conv's inference time goes, phase by phase, on one thread: the gather of
the tiles' input windows, the input transform (KB: kron(BT, BT) @ D, in conv_winograd's two 1-D
passes), the n*n products with the transformed kernel (UV: (T, C) @ (C, F) each), the output
transform (KA: kron(AT, AT) @ M, two passes too) and the pool, for one chunk of images of each
of the default cnn's three wide convs (c2+p3, c4, c5+p6), medians of 30.
The UV products are the part no rewrite of the transforms removes: their total over the 28000
test rows is a floor for predict_proba with this network on this BLAS.

    python scripts/experiments/wino_phases.py
"""

import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import sgemm_gflops, timed  # noqa: E402

from pipeline.config import N_TEST  # noqa: E402
from pipeline.nn.conv_winograd import OFFSETS, _chunk, _factors, _kron, _transform  # noqa: E402
from pipeline.nn.model import EVAL_CHUNK  # noqa: E402


def timed_ms(f, repeats=30):
    """Median milliseconds of `repeats` calls of f, after one."""
    f()
    return 1e3 * float(np.median([timed(f) for _ in range(repeats)]))


def phases(name, H, C, F, m, pool, rng):
    """-> {phase: ms per EVAL_CHUNK rows} for a 3x3 conv of an H x H x C map to F channels by
    F(m x m, 3 x 3), one chunk of conv_winograd's size timed and scaled."""
    k = 3
    n, A = m + k - 1, (H - k + 1) // m
    x = rng.random((EVAL_CHUNK, H, H, C), dtype=np.float32)
    w = rng.random((k, k, C, F), dtype=np.float32)
    _, KG, _ = _kron(k, m, np.float32)
    AT, BT, _, _ = _factors(k, m, np.float32)
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
    ms = {
        "gather": timed_ms(lambda: np.copyto(D, tiles[:, :, :c])),
        "KB": timed_ms(lambda: _transform(BT, D.reshape(n * n, T * C), V.reshape(n * n, -1))),
        "UV": timed_ms(lambda: np.matmul(V, U, out=M)),
        "KA": timed_ms(lambda: _transform(AT, M.reshape(n * n, T * F), Y)),
    }
    if pool:
        h = m // 2
        Y2 = Y.reshape(h, 2, h, 2, c, A, A, F)
        P = np.empty((h, h, c, A, A, F), np.float32)

        def pool_max():
            q = [Y2[:, i, :, j] for i, j in OFFSETS]
            np.maximum(q[0], q[1], out=P)
            np.maximum(P, q[2], out=P)
            np.maximum(P, q[3], out=P)
        ms["pool"] = timed_ms(pool_max)
    uv_rate = 2 * n * n * T * C * F / (ms["UV"] * 1e-3) / 1e9
    scaled = {key: v * EVAL_CHUNK / c for key, v in ms.items()}
    print(f"{name:6s} {H}x{H}x{C} -> {F}, F({m}x{m}, 3x3), chunks of {c} images; ms per "
          f"{EVAL_CHUNK} rows: " + ", ".join(f"{key} {v:.2f}" for key, v in scaled.items())
          + f" (UV at {uv_rate:.0f} GFLOP/s)")
    return scaled


def main():
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        print(f"sgemm {sgemm_gflops(2048):.0f} GFLOP/s on this thread, measured now (the machine's "
              "speed moves: compare the UV rates with this, not with another run's)")
        rows = [phases("c2+p3", 26, 32, 32, 4, True, rng), phases("c4", 12, 32, 64, 2, False, rng),
                phases("c5+p6", 10, 64, 64, 4, True, rng)]
    chunks = -(-N_TEST // EVAL_CHUNK)
    uv = sum(r["UV"] for r in rows) * chunks / 1e3
    total = sum(sum(r.values()) for r in rows) * chunks / 1e3
    print(f"over the {N_TEST} test rows, one thread: the three convs {total:.2f} s of CPU, "
          f"of which the UV products {uv:.2f} s (at best {uv / 2:.2f} s of wall time on two cores)")


if __name__ == "__main__":
    main()
