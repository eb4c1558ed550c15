"""What leaving out the constant input columns saves in the MLP's first layer: the forward and
backward of a (128, 784) @ (784, 256) dense layer, plain (layers.dense_*) and by
input_dense.py, on one thread. It prints the share of constant pixels in batches of 128
train.csv rows (shuffled, normalized as the pipeline does), also after the default MLP's
augmentation, which moves the digits and leaves far fewer. Then it times those batches, and
synthetic batches with a set share of constant columns, to show where input_dense's gathers
cost what they save (its MIN_CONSTANT). Microseconds per forward + backward: the median of
--rounds interleaved runs of 200 batches each.

    python scripts/experiments/input_dense.py [--rounds 5] [--zip PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import interleaved  # noqa: E402

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn import input_dense as Id  # noqa: E402
from pipeline.nn import layers as L  # noqa: E402
from pipeline.nn.augment import augment_batch, parse_augment  # noqa: E402
from pipeline.nn.models import DEFAULTS  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402

BATCH, D_IN, D_OUT, BATCHES = 128, 784, 256, 200


def step(forward, backward, w, b, dz, grads):
    def run(batches):
        for x in batches:
            backward(dz, forward(x, w, b)[1], grads, False)

    return run


def us_per_batch(batches, runs, rounds):
    """{name: median microseconds per batch}, the variants interleaved round by round."""
    times = interleaved({name: lambda run=run: run(batches) for name, run in runs.items()},
                        rounds)
    return {name: 1e6 * statistics.median(t) / len(batches) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--zip", type=Path, default=Path("/work/shared/data/digit-recognizer.zip"))
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(D_IN, D_OUT)) * 0.05).astype(np.float32)
    b, dz = np.zeros(D_OUT, np.float32), rng.normal(size=(BATCH, D_OUT)).astype(np.float32)
    grads = {"w": np.empty_like(w), "b": np.empty_like(b)}
    runs = {"plain": step(L.dense_forward, L.dense_backward, w, b, dz, grads),
            "input_dense": step(Id.input_dense_forward, Id.input_dense_backward, w, b, dz, grads)}

    pixels = read_competition(a.zip).train_x
    x = normalize(pixels, fit_normalizer(pixels)).reshape(len(pixels), D_IN)
    order = rng.permutation(len(x))
    real = [x[order[i : i + BATCH]] for i in range(0, BATCH * BATCHES, BATCH)]
    shares = [(xb == xb[0]).all(axis=0).mean() for xb in real]
    share = np.mean(shares)
    print(f"constant pixels: {share:.1%} of a batch of {BATCH} on average ({min(shares):.1%} to "
          f"{max(shares):.1%}), {(pixels == pixels[0]).all(axis=0).mean():.1%} of all the rows")
    aug = DEFAULTS["mlp"]["augment"]
    augmented = [augment_batch(xb.reshape(BATCH, 28, 28, 1), parse_augment(aug), rng, x.min())
                 for xb in real]
    print(f"  with the default MLP's augmentation ({aug}): "
          f"{np.mean([(xb == xb[0]).all(axis=(0, 3)).mean() for xb in augmented]):.1%} of a batch")
    rows = [(f"train.csv batches ({share:.0%} constant)", real)]
    for s in (0.05, 0.125, 0.2, 1 / 3):
        synthetic = []
        for _ in range(BATCHES):
            xb = rng.normal(size=(BATCH, D_IN)).astype(np.float32)
            xb[:, rng.random(D_IN) < s] = -0.42
            synthetic.append(xb)
        rows.append((f"synthetic, {s:.1%} constant", synthetic))
    print(f"fc1 forward + backward, ({BATCH}, {D_IN}) @ ({D_IN}, {D_OUT}), 1 thread, us per "
          f"batch (medians of {a.rounds}); MIN_CONSTANT = {Id.MIN_CONSTANT}")
    print(f"  {'batches':34s} {'plain':>8s} {'input_dense':>12s} {'ratio':>6s}")
    with threadpool_limits(1):
        saved, Id.MIN_CONSTANT = Id.MIN_CONSTANT, 0.0  # time the gathers below it too
        for label, batches in rows:
            t = us_per_batch(batches, runs, a.rounds)
            print(f"  {label:34s} {t['plain']:8.1f} {t['input_dense']:12.1f} "
                  f"{t['input_dense'] / t['plain']:6.3f}")
        Id.MIN_CONSTANT = saved


if __name__ == "__main__":
    main()
