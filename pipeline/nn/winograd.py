"""Winograd's minimal filtering F(m x m, k x k), the part the kernels of conv_winograd.py share:
the Toom-Cook matrices (`winograd_matrices`), the 2-D transforms built from them
(`kron_matrices`, and `factors` with `transform` for the same products as two 1-D passes), the
output tile side a conv gets (`TILE`, `tile_side`), how a part's images split into chunks
(`even_chunks`) and the per-thread working buffers the kernels reuse across calls (`scratch`).
What the transforms compute and how they round: conv_winograd.py.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

# the finite interpolation points, then infinity: -1/2 rounds less in float32 than -2 (python
# scripts/bench.py --profile kernels prints both; docs/bench-notes.md)
POINTS = (0.0, 1.0, -1.0, 2.0, -0.5)
KERNELS = (3, 5)  # kernel sides with a Winograd form here
# the output tile side m of F(m x m, k x k) per kernel side, when the conv's output side is a
# multiple of it (else 2): n = m + k - 1 points, at most len(POINTS) + 1 = 6
TILE = {3: 4, 5: 2}


@functools.cache
def winograd_matrices(k, m=2, points=POINTS):
    """-> (AT (m, n), G (n, k), BT (n, n)) in float64, n = m + k - 1, for the 1-D correlation
    y_i = sum_j d_{i+j} g_j (i = 0..m-1) as y = AT @ ((G @ g) * (BT @ d)), from the first n-1
    of `points` and infinity.

    Toom-Cook: with V_j the n x j matrix of the points' powers 0..j-1 (the point at infinity
    picks the leading coefficient), convolution by g is V_n^-1 diag(V_k g) V_m, and correlation
    is its transpose: AT = V_m^T, G = V_k, BT = V_n^-T."""
    n = m + k - 1
    if k not in KERNELS or m not in (2, 4) or n > len(POINTS) + 1:
        raise ValueError(
            f"Winograd F(m x m, k x k) is implemented for k in {KERNELS} and m in (2, 4) with "
            f"m + k - 1 <= {len(POINTS) + 1}, got k={k}, m={m}"
        )
    points = tuple(points)[: n - 1]

    def powers(j):  # (n, j)
        rows = [[p**e for e in range(j)] for p in points] + [[0.0] * (j - 1) + [1.0]]
        return np.array(rows)

    mats = powers(m).T, powers(k), np.linalg.inv(powers(n)).T
    for mat in mats:
        mat.flags.writeable = False  # cached: shared by every caller
    return mats


def kron_matrices(k, m, dtype):
    """-> (KA (m*m, n*n), KG (n*n, k*k), KB (n*n, n*n)) in `dtype`: the 2-D transforms."""
    return _kron_of(k, m, np.dtype(dtype).str, tuple(POINTS))


@functools.cache
def _kron_of(k, m, dtype, points):
    mats = []
    for mat in winograd_matrices(k, m, points):
        K = np.kron(mat, mat).astype(dtype)
        K.flags.writeable = False  # shared by every call
        mats.append(K)
    return tuple(mats)


@functools.cache
def factors(k, m, dtype):
    """-> (AT (m, n), BT (n, n)) of `winograd_matrices(k, m)` in `dtype`, contiguous, with
    their transposes (contiguous too): the 1-D factors `transform` applies."""
    AT, _, BT = winograd_matrices(k, m)
    mats = tuple(np.ascontiguousarray(M.astype(dtype)) for M in (AT, BT, AT.T, BT.T))
    for M in mats:
        M.flags.writeable = False  # shared by every call
    return mats


def transform(M, X, out):
    """out = kron(M, M) @ X, X (q*q, R) -> out (p*p, R) for M (p, q), as two 1-D passes: across
    the tile, one product per tile row (W[u] = M @ X[u]), then down it, one per tile column
    (out[:, j] = M @ W[:, j], strided rows). 3x fewer multiply-adds than the (p*p, q*q) kron
    product: faster on one thread, even on two; one (p, q*q*R) product down the tile first,
    then across, is slower than the kron product (python scripts/experiments/wino_separable.py;
    docs/bench-notes.md)."""
    p, q = M.shape
    R = X.shape[-1]
    W = scratch("half", (q, p, R), X.dtype)  # W[u, j]: row u of each tile, transformed across
    np.matmul(M, X.reshape(q, q, R), out=W)
    np.matmul(M, W.transpose(1, 0, 2), out=out.reshape(p, p, R).transpose(1, 0, 2))
    return out


def tile_side(k, Ho, Wo):
    """The output tile side m for a k x k conv with an Ho x Wo output: TILE[k] where the output
    divides into m x m tiles, else 2."""
    m = TILE.get(k, 2)
    return m if Ho % m == 0 and Wo % m == 0 else 2


def even_chunks(s0, e0, nb):
    """-> [(s, e)]: the images s0:e0 in the fewest chunks of at most nb, their sizes at most one
    apart, so that no chunk is a remainder of a few images, whose products run at a poor rate
    (c5's parts of 64 images: chunks of 32 and 32, not 56 and 8)."""
    if e0 <= s0:  # no images (a conv whose every tile is blank lists none)
        return []
    k = -(-(e0 - s0) // nb)
    bounds = [s0 + (e0 - s0) * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


_SCRATCH = threading.local()  # per thread: name -> a flat buffer, grown as needed


def scratch(name, shape, dtype):
    """A working array for the duration of one call on this thread, reused across calls and
    layers (same name, same thread): no allocation, so no page faults and a buffer that stays
    in cache. Never returned to the caller or kept in a cache."""
    size = math.prod(shape) * np.dtype(dtype).itemsize  # math.prod: 0.05 us, np.prod 2 us
    bufs = _SCRATCH.__dict__
    buf = bufs.get(name)
    if buf is None or buf.size < size:
        buf = bufs[name] = np.empty(size, dtype=np.uint8)
    return buf[:size].view(dtype).reshape(shape)
