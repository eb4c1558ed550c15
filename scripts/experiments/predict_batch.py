"""predict_proba on the 28000 test rows (two threads, a fresh default cnn with BatchNorm
statistics set) for each --sizes value of its batch_size in turn, --rounds rounds interleaved,
medians: how much the threads' wait at the end of each forward pass costs. The sizes group the
rows into other chunks of 128, so their probabilities agree to float32 rounding (checked), not
bit for bit.

    python scripts/experiments/predict_batch.py [--sizes 1000 8192 28000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn.model import Model  # noqa: E402
from pipeline.nn.models import DEFAULTS, build_spec  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402

ZIP = REPO.parent / "shared" / "data" / "digit-recognizer.zip"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 28000])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--zip", type=Path, default=ZIP)
    a = ap.parse_args(argv)
    d = read_competition(a.zip)
    x = normalize(d.test_x, fit_normalizer(d.train_x))
    rng = np.random.default_rng(0)
    model = Model(build_spec("cnn", DEFAULTS["cnn"]), rng=rng)
    for k, v in model.params.items():
        if k.endswith((".var", ".gamma")):
            v[...] = rng.uniform(0.5, 1.5, size=v.shape)
    ref = predict_proba([model], x, batch_size=a.sizes[0])  # also the warm-up
    times = {b: [] for b in a.sizes}
    for _ in range(a.rounds):
        for b in a.sizes:
            t0 = time.perf_counter()
            p = predict_proba([model], x, batch_size=b)
            times[b].append(time.perf_counter() - t0)
            assert np.abs(p - ref).max() < 1e-4 and (p.argmax(1) == ref.argmax(1)).all()
    for b, t in times.items():
        print(f"batch_size {b:6d}: median {np.median(t):.3f} s, best {min(t):.3f} s "
              f"({a.rounds} rounds)")


if __name__ == "__main__":
    main()
