"""What the augmentation costs a training epoch: augment_batch on one 128-row batch, then real
train() epochs of the default cnn with its augmentation, with no augmentation, and with the
augmentation's bilinear sampling as it was before commit "augment: framed bilinear sampling"
(masks and int64 indexes, swapped in from here: no switch in the package), in turn, medians.

On two cores the batch of step i+1 is augmented on the prefetch thread while step i runs on
both, so every millisecond of augmentation competes with the step for a core.

    python scripts/experiments/augment_cost.py                      # 3 rounds, 8192 rows
    python scripts/experiments/augment_cost.py --rounds 5 --threads 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import ours_trainer  # noqa: E402

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn import augment as Au  # noqa: E402
from pipeline.nn.models import DEFAULTS  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402


def masked_bilinear(x, src_r, src_c, fill):
    """The bilinear sampling before the framed version: four gathers with int64 indexes, each
    masked against the image's bounds, and a weighted sum."""
    N, H, W, _ = x.shape
    flat = x.reshape(N * H * W)
    base = (np.arange(N, dtype=np.int64) * (H * W))[:, None, None]
    r0, c0 = np.floor(src_r), np.floor(src_c)
    fr, fc = (src_r - r0).astype(np.float32), (src_c - c0).astype(np.float32)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    out = np.zeros((N, H, W), dtype=np.float32)
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        r = r0 + dr
        rin = (r >= 0) & (r < H)
        rc = np.clip(r, 0, H - 1) * W
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            c = c0 + dc
            valid = rin & (c >= 0) & (c < W)
            v = flat[base + rc + np.clip(c, 0, W - 1)]
            out += wr * wc * np.where(valid, v, np.float32(fill))
    return out[..., None]


def batch_ms(x, aug, repeats=200):
    rng = np.random.default_rng(0)
    fill = float(x.min())
    times = []
    for i in range(repeats):
        xb = x[(i * 128) % (len(x) - 128):][:128]
        t0 = time.perf_counter()
        Au.augment_batch(xb, aug, rng, fill)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    a = p.parse_args(argv)
    d = read_competition(REPO.parent / "shared" / "data" / "digit-recognizer.zip")
    norm = fit_normalizer(d.train_x)
    x, y = normalize(d.train_x[: a.rows], norm), d.train_y[: a.rows].astype(np.int64)
    default = DEFAULTS["cnn"]["augment"]
    framed = Au.bilinear_sample
    variants = {"framed": (default, framed), "masked (before)": (default, masked_bilinear),
                "none": ("none", framed)}

    def use(v):
        Au.bilinear_sample = variants[v][1]

    aug = Au.parse_augment(default)
    try:
        for v in ("framed", "masked (before)"):
            use(v)
            print(f"augment_batch, 128 rows, {default!r}, {v}: {batch_ms(x, aug):.2f} ms "
                  "(median of 200, this thread)")
        trainers = {}
        for v, (augment, _) in variants.items():
            for threads in a.threads:
                use(v)
                settings = dict(model="cnn", augment=augment)
                trainers[v, threads] = ours_trainer(settings, x, y, 0, threads)
        epochs = {k: [] for k in trainers}
        for _ in range(a.rounds):
            for (v, threads), epoch in trainers.items():
                use(v)
                seconds, _ = epoch()
                epochs[v, threads].append(seconds * 42000 / a.rows)
    finally:
        Au.bilinear_sample = framed
    print(f"train() epochs of the default cnn, medians of {a.rounds} interleaved rounds, "
          f"{a.rows} rows scaled to 42000")
    for (v, threads), secs in epochs.items():
        print(f"  augment {v:16s} {threads} thread(s): {np.median(secs):6.2f} s "
              f"({', '.join(f'{s:.1f}' for s in secs)})")


if __name__ == "__main__":
    main()
