"""The pipeline's out-of-fold estimate on the rows the experiments never chose anything on:

    python scripts/experiments/oof_subset.py data/models/oof.npz --exclude-folds 0 1

`digits cv` / `make submit FOLDS=K` deal their own folds (pipeline.cv.stratified_folds), which
differ from the experiment harness's (scripts/experiments/cvexp.py `folds`), so the harness's
selection rows are spread over every pipeline fold. This scores the pipeline's OOF
probabilities (oof.npz: proba, rows) on all rows and on the rows outside the given harness
folds, with Wilson 95% intervals (pipeline.cv.wilson_interval), plain and with TTA where present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from cvexp import folds, load  # noqa: E402

from pipeline.cv import wilson_interval  # noqa: E402


def line(what, right, n):
    lo, hi = wilson_interval(int(right), int(n))
    return f"{what}: {right / n:.4%} ({n - right} errors / {n}), 95% interval {lo:.2%}-{hi:.2%}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("oof", type=Path)
    p.add_argument("--exclude-folds", type=int, nargs="*", default=[0, 1])
    a = p.parse_args(argv)
    _, y = load()
    harness_fold = folds(y)
    with np.load(a.oof) as z:
        rows = z["rows"]
        probas = {"plain": z["proba"]}
        try:  # without TTA the pipeline stores None there (an object array)
            tta = z["proba_tta"] if "proba_tta" in z.files else None
        except ValueError:
            tta = None
        if tta is not None and tta.ndim == 2:
            probas["tta"] = tta
    keep = ~np.isin(harness_fold[rows], a.exclude_folds)
    for name, proba in probas.items():
        right = proba.argmax(1) == y[rows]
        print(line(f"{name}, all {len(rows)} OOF rows", right.sum(), len(rows)))
        print(line(f"{name}, outside harness folds {a.exclude_folds}", right[keep].sum(),
                   int(keep.sum())))


if __name__ == "__main__":
    main()
