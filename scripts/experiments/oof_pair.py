"""Two runs' out-of-fold predictions side by side, row by row (the same folds and rows, e.g. one
recipe before and after a change to the kernels):

    python scripts/experiments/oof_pair.py A/data/models/oof.npz B/data/models/oof.npz

prints each run's errors, the rows only one of them gets right and McNemar's exact p, plain and
with TTA where both have it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from compare import mcnemar_p  # noqa: E402
from cvexp import load  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    _, y = load()
    a, b = np.load(args.a), np.load(args.b)
    if not np.array_equal(a["rows"], b["rows"]) or not np.array_equal(a["fold"], b["fold"]):
        sys.exit("the two runs scored different rows or folds: nothing to pair")
    truth = y[a["rows"]]
    for key in ("proba", "proba_tta"):
        if key not in a.files or key not in b.files:
            continue
        ra, rb = a[key].argmax(1) == truth, b[key].argmax(1) == truth
        only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
        print(f"{key}: A {int((~ra).sum())} errors, B {int((~rb).sum())} errors in {len(truth)}; "
              f"A right/B wrong {only_a}, A wrong/B right {only_b}; "
              f"McNemar exact p = {mcnemar_p(only_a, only_b):.3f}")


if __name__ == "__main__":
    main()
