"""Normalization fitted on the training rows only, applied to any rows as float32 NHWC images.

One scalar mean and standard deviation over all training pixels (scaled to [0, 1]): per-pixel
statistics would divide by ~0 at the always-blank borders. It never looks at dev or test rows.
"""

from __future__ import annotations

import numpy as np

from .config import IMAGE_SIDE


def fit_normalizer(train_x: np.ndarray) -> dict[str, float]:
    """Mean and std of the training pixels, in units of pixel/255."""
    x = train_x.reshape(len(train_x), -1)  # (N, 784) uint8
    total = x.size
    mean = float(np.sum(x, dtype=np.float64) / (255.0 * total))
    mean_sq = float(np.einsum("ij,ij->", x, x, dtype=np.float64) / (255.0**2 * total))
    std = float(np.sqrt(max(mean_sq - mean**2, 1e-12)))
    return {"mean": mean, "std": std}


def normalize(x: np.ndarray, normalizer: dict[str, float]) -> np.ndarray:
    """(N, 784) uint8 -> (N, 28, 28, 1) float32 with the training mean 0 and std 1."""
    scale = np.float32(1.0 / (255.0 * normalizer["std"]))
    shift = np.float32(normalizer["mean"] / normalizer["std"])
    # C order whatever the input's (pandas gives column-major arrays): every consumer reads rows
    out = x.reshape(len(x), IMAGE_SIDE, IMAGE_SIDE, 1).astype(np.float32, order="C")
    out *= scale
    out -= shift
    return out
