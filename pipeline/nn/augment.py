"""Data augmentation for digit images, vectorized over the batch: random shift, rotation, zoom
(one affine map per image) and elastic distortion (Simard et al. 2003), with bilinear sampling.

Every output pixel is pulled from its source position in the input with one vectorized gather per
bilinear corner; pixels whose source falls outside the image take the background value `fill`
(for normalized images, the normalized 0, i.e. the minimum of the input). Flips, noise and
colour changes are left out: they do not suit digits.
"""

from __future__ import annotations

import numpy as np

KEYS = ("shift", "rotate", "zoom", "elastic")
DEFAULT = "shift=2,rotate=10,zoom=0.1,elastic=0"
ELASTIC_SIGMA = 4.0  # smoothing of the elastic displacement field, in pixels (Simard: 4)


def parse_augment(text):
    """'none' | 'default' | 'shift=2,rotate=10,zoom=0.1,elastic=0' -> dict of floats.

    shift: max translation in pixels; rotate: max angle in degrees; zoom: max relative scale
    change; elastic: displacement scale alpha in pixels (0 = off). Omitted keys are 0.
    """
    text = (text or "none").strip().lower()
    if text == "default":
        text = DEFAULT
    out = dict.fromkeys(KEYS, 0.0)
    if text == "none":
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise ValueError(
                f"augment must be 'none', 'default' or key=value pairs with keys "
                f"{', '.join(KEYS)}; got {part!r} in {text!r}"
            )
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"augment {key} must be a number, got {value!r}") from None
        if not (out[key] >= 0):
            raise ValueError(f"augment {key} must be >= 0, got {value}")
    if out["zoom"] >= 1:
        raise ValueError(f"augment zoom must be < 1, got {out['zoom']}")
    return out


def is_identity(aug):
    return not any(aug[k] for k in KEYS)


def bilinear_sample(x, src_r, src_c, fill):
    """x (N, H, W, 1), src_r/src_c (N, H, W) float32 source coordinates -> (N, H, W, 1) float32.

    The images sit in a frame of `fill` (one pixel above and left, two below and right), and
    each coordinate is clipped to [-1, H] (or [-1, W]) first: a source further out than one
    pixel reads the frame with all its weight, so it gets `fill`, as does every corner outside
    the image (and a NaN coordinate). No masks: four gathers from the framed images and three
    lerps, each in place."""
    N, H, W, _ = x.shape
    Hf, Wf = H + 3, W + 3
    framed = np.full((N, Hf, Wf), fill, dtype=np.float32)  # (N, H+3, W+3)
    framed[:, 1 : H + 1, 1 : W + 1] = x[..., 0]
    flat = framed.reshape(-1)
    itype = np.int32 if flat.size < 2**31 - 2 * Wf else np.int64
    # fmax/fmin, not clip: a NaN coordinate becomes -1 (the frame) rather than a wild index
    r = np.fmin(np.fmax(src_r, np.float32(-1)), np.float32(H))  # (N, H, W)
    c = np.fmin(np.fmax(src_c, np.float32(-1)), np.float32(W))
    r0, c0 = np.floor(r), np.floor(c)
    r -= r0  # the fractions: the weights of the lower and right corners
    c -= c0
    # the flat index of each upper-left corner in the framed images (+1: the frame's offset)
    idx = (np.arange(N, dtype=itype) * (Hf * Wf) + Wf + 1)[:, None, None] + r0.astype(itype) * Wf
    idx += c0.astype(itype)
    top, right = flat.take(idx), flat.take(idx + 1)
    right -= top
    right *= c
    top += right  # the upper row, across
    idx += Wf
    bottom, right = flat.take(idx), flat.take(idx + 1)
    right -= bottom
    right *= c
    bottom += right  # the lower row, across
    bottom -= top
    bottom *= r
    top += bottom  # down
    return top[..., None]


def affine(x, angle, scale, tx, ty, fill, disp=None):
    """Rotate by `angle` degrees and scale by `scale` about the centre, then move content by
    (ty rows, tx cols); per-image parameter arrays of shape (N,). `disp` (N, H, W, 2) adds an
    elastic displacement (rows, cols) to the source coordinates."""
    N, H, W, _ = x.shape
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    rows, cols = np.meshgrid(
        np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij"
    )
    th = np.deg2rad(np.asarray(angle, dtype=np.float32))[:, None, None]  # (N, 1, 1)
    inv = (1.0 / np.asarray(scale, dtype=np.float32))[:, None, None]
    cos, sin = np.cos(th) * inv, np.sin(th) * inv
    dr = rows[None] - cy - np.asarray(ty, dtype=np.float32)[:, None, None]  # (N, H, W)
    dc = cols[None] - cx - np.asarray(tx, dtype=np.float32)[:, None, None]
    src_r = cy + cos * dr - sin * dc  # inverse map: output pixel -> source position
    src_c = cx + sin * dr + cos * dc
    if disp is not None:
        src_r = src_r + disp[..., 0]
        src_c = src_c + disp[..., 1]
    return bilinear_sample(x, src_r, src_c, fill)


def _gaussian_matrix(n, sigma):
    i = np.arange(n, dtype=np.float32)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)  # (n, n)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def elastic_displacement(rng, N, H, W, alpha, sigma=ELASTIC_SIGMA):
    """Uniform(-1, 1) fields smoothed by a Gaussian (as two matrix products), scaled so the
    largest displacement per image is alpha pixels -> (N, H, W, 2)."""
    u = rng.uniform(-1.0, 1.0, size=(2 * N, H, W)).astype(np.float32)  # (2N, H, W)
    gh, gw = _gaussian_matrix(H, sigma), _gaussian_matrix(W, sigma)
    u = gh @ u @ gw.T  # (2N, H, W) separable blur
    u *= alpha / (np.abs(u).max(axis=(1, 2), keepdims=True) + 1e-8)
    return np.stack([u[:N], u[N:]], axis=-1)


def augment_batch(x, aug, rng, fill=None):
    """Randomly transform each image of x (N, H, W, 1) per `aug` (from parse_augment)."""
    if is_identity(aug):
        return x
    N, H, W, _ = x.shape
    fill = float(x.min()) if fill is None else float(fill)
    angle = rng.uniform(-aug["rotate"], aug["rotate"], N)
    scale = rng.uniform(1 - aug["zoom"], 1 + aug["zoom"], N)
    tx = rng.uniform(-aug["shift"], aug["shift"], N)
    ty = rng.uniform(-aug["shift"], aug["shift"], N)
    disp = elastic_displacement(rng, N, H, W, aug["elastic"]) if aug["elastic"] else None
    return affine(x, angle, scale, tx, ty, fill, disp)
