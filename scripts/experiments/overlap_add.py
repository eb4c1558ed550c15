"""The Winograd backward pass's col2im (conv_winograd.overlap_add) against the form it replaced,
one slice-add per window offset, on the default cnn's three wide convs (one chunk of images
each, as conv_winograd sizes them): alone on one thread, then with two threads running it at
once on their own arrays, as a training step's two parts do. Medians of --rounds calls, ms per
call. The two forms round alike but add in another order, so they agree to float32 rounding,
not bit for bit.

    python scripts/experiments/overlap_add.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.nn.conv_winograd import _chunk, overlap_add  # noqa: E402

CONVS = (("c2", 6, 32, 32, 4), ("c4", 5, 32, 64, 2), ("c5", 2, 64, 64, 4))  # name, A, C, F, m


def per_offset(dD, m, out):
    """The old form: the first m x m offsets in one copy, then one slice-add per other offset."""
    n, _, c, A, B, C = dD.shape
    np.copyto(out[:, : m * A, : m * B].reshape(c, A, m, B, m, C),
              dD[:m, :m].transpose(2, 3, 0, 4, 1, 5))
    out[:, m * A :] = 0
    out[:, : m * A, m * B :] = 0
    for u in range(n):
        for v in range(n):
            if u >= m or v >= m:
                out[:, u : u + m * A : m, v : v + m * B : m] += dD[u, v]
    return out


def median_ms(f, rounds, threads):
    """Median ms of f(i) on `threads` threads at once (thread i its own arrays), after one."""
    times = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def run(i):
        with threadpool_limits(1):
            f(i)
            for _ in range(rounds):
                start.wait()
                t0 = time.perf_counter()
                f(i)
                times[i].append(time.perf_counter() - t0)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return 1e3 * float(np.median(times[0]))


def compare(name, A, C, F, m, rounds, rng):
    """Print both forms' times on one conv's chunk of images."""
    n = m + 2
    c = _chunk(n, A, A, C, F, 4)
    side = m * A + n - m
    dD = [rng.standard_normal((n, n, c, A, A, C), dtype=np.float32) for _ in range(2)]
    out = [np.empty((c, side, side, C), np.float32) for _ in range(2)]
    rows = [np.empty((n, c, A, side, C), np.float32) for _ in range(2)]
    err = np.abs(per_offset(dD[0], m, out[0].copy()) - overlap_add(dD[0], m, rows[0], out[0]))
    forms = {"per offset": lambda i: per_offset(dD[i], m, out[i]),
             "overlap_add": lambda i: overlap_add(dD[i], m, rows[i], out[i])}
    cells = [f"{form} {median_ms(f, rounds, 1):.3f} / {median_ms(f, rounds, 2):.3f}"
             for form, f in forms.items()]
    print(f"{name}: chunk of {c} images, {A}x{A} tiles of {n}x{n}, {C} channels; ms alone / "
          f"two threads at once: " + "; ".join(cells) + f"; largest difference {err.max():.1e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for conv in CONVS:
        compare(*conv, a.rounds, rng)


if __name__ == "__main__":
    main()
