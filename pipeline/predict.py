"""Batched inference: class probabilities averaged over ensemble members and, optionally, over a
few shifted copies of each image (test-time augmentation).

Inputs are normalized float32 images (N, 28, 28, 1), as for training. Reading models from disk
and writing submissions are other modules' jobs.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.config import N_CLASSES, N_TEST, UserError
from pipeline.nn.heap import keep_freed_memory
from pipeline.nn.losses import softmax
from pipeline.nn.threads import blas_threads

# Threads during inference: the cores this process may use, each running whole chunks of 128 rows
# on one-threaded BLAS (Model.forward(threads=)): batch-sized products split across BLAS threads
# wait on each other, whole chunks on Python threads do not.
PREDICT_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1



class NonFiniteError(UserError):
    """The model gave NaN or infinite probabilities: its output must not become a submission."""


# (rows, cols) shifts averaged by test-time augmentation; (0, 0) is the image itself
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift_images(x, dr, dc, fill):
    """Move the content of x (N, H, W, C) by dr rows and dc columns, filling with `fill`."""
    out = np.full_like(x, fill)
    H, W = x.shape[1:3]
    out[:, max(dr, 0) : H + min(dr, 0), max(dc, 0) : W + min(dc, 0)] = x[
        :, max(-dr, 0) : H - max(dr, 0), max(-dc, 0) : W - max(dc, 0)
    ]
    return out


def predict_proba(models, x, *, batch_size=N_TEST, tta=False) -> np.ndarray:
    """models (list of Model), x (N, 28, 28, 1) -> probabilities (N, 10) float32.

    Runs on PREDICT_THREADS threads (the cores available), each with one BLAS thread; the
    result does not depend on the thread count. `batch_size` rows per forward pass: each pass
    ends when its last chunk of 128 rows does, the other threads idle meanwhile: the test set
    in one pass took 1.967, 1.892 and 1.839 s against 2.001, 1.987 and 1.925 s in passes of
    1000 rows (medians of three runs of python scripts/experiments/predict_batch.py --rounds 8,
    two threads, 2026-12-04)."""
    keep_freed_memory()
    with blas_threads(1):
        proba = _predict_proba(models, x, batch_size, tta)
    bad = ~np.isfinite(proba).all(axis=1)  # (N,)
    if bad.any():  # argmax of NaN is 0: a "valid" submission of zeros, the worst outcome
        raise NonFiniteError(
            f"the model gives NaN or infinite probabilities for {int(bad.sum())} of "
            f"{len(proba)} images (first: row {int(np.argmax(bad)) + 1}); nothing was written. "
            f"Its weights or the normalizer are broken: retrain with `make train`.")
    return proba


def _predict_proba(models, x, batch_size, tta):
    if not models:
        raise ValueError("predict_proba needs at least one model, got none")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise ValueError(f"x must have shape (N, 28, 28, 1), got {x.shape}")
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    fill = float(x.min()) if x.size else 0.0
    proba = np.zeros((x.shape[0], N_CLASSES), dtype=np.float32)  # (N, 10)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]  # (B, 28, 28, 1)
        for dr, dc in shifts:
            xs = xb if (dr, dc) == (0, 0) else shift_images(xb, dr, dc, fill)
            for m in models:
                proba[s : s + batch_size] += softmax(m.forward(xs, threads=PREDICT_THREADS))
    proba *= 1.0 / (len(models) * len(shifts))
    return proba


def predict_labels(models, x, *, batch_size=N_TEST, tta=False) -> np.ndarray:
    """-> predicted digits (N,) int64."""
    return predict_proba(models, x, batch_size=batch_size, tta=tta).argmax(axis=1)
