"""Paired comparison of two held-out runs of cvexp.py on the same fold(s): accuracy of each,
the disagreement counts and an exact McNemar test; or the OOF estimate of one run over its folds.

    python scripts/experiments/compare.py A B [--folds 0 1]   # A against B, paired
    python scripts/experiments/compare.py A+C B               # A and C averaged (an ensemble)
    python scripts/experiments/compare.py A                   # A alone: accuracy, 95% interval

b = rows A gets right and B wrong, c = the reverse. Under "equally good", b ~ Binomial(b+c, 1/2);
p is the two-sided exact probability. The 95% interval of one accuracy is Wilson's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cvexp import RESULTS, load  # noqa: E402


def proba_of(name, f):
    """name may be 'A+B+...' (probabilities averaged) -> (proba (n, 10), rows (n,))."""
    parts = name.split("+")
    ps, rows = [], None
    for part in parts:
        with np.load(RESULTS / "proba" / f"{part}-f{f}.npz") as z:
            ps.append(z["proba"].astype(np.float32))
            if rows is not None and not np.array_equal(rows, z["rows"]):
                raise SystemExit(f"{part} fold {f} holds different rows")
            rows = z["rows"]
    return sum(ps) / len(ps), rows


def mcnemar_p(b, c):
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


def wilson(k, n, z=1.96):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def available_folds(name):
    first = name.split("+")[0]
    files = (RESULTS / "proba").glob(f"{first}-f*.npz")
    return sorted(int(p.stem.rsplit("-f", 1)[1]) for p in files)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b", nargs="?")
    p.add_argument("--folds", type=int, nargs="*")
    a = p.parse_args(argv)
    _, y = load()
    fl = a.folds
    if fl is None:
        fl = available_folds(a.a)
        if a.b:
            fl = sorted(set(fl) & set(available_folds(a.b)))
    ra, rb, ys = [], [], []
    for f in fl:
        pa, rows = proba_of(a.a, f)
        ra.append(pa.argmax(1))
        ys.append(y[rows])
        if a.b:
            pb, rows_b = proba_of(a.b, f)
            assert np.array_equal(rows, rows_b)
            rb.append(pb.argmax(1))
    yy, pa = np.concatenate(ys), np.concatenate(ra)
    n, ka = len(yy), int((pa == yy).sum())
    lo, hi = wilson(ka, n)
    print(f"folds {fl}, {n} held-out rows")
    print(f"{a.a}: {ka / n:.4%} ({n - ka} errors), 95% interval {lo:.4%}-{hi:.4%}")
    if a.b:
        pb = np.concatenate(rb)
        kb = int((pb == yy).sum())
        b = int(((pa == yy) & (pb != yy)).sum())
        c = int(((pa != yy) & (pb == yy)).sum())
        print(f"{a.b}: {kb / n:.4%} ({n - kb} errors)")
        print(f"difference {(ka - kb) / n:+.4%}; disagreements: A right/B wrong {b}, "
              f"A wrong/B right {c}; McNemar exact p = {mcnemar_p(b, c):.3f}")


if __name__ == "__main__":
    main()
