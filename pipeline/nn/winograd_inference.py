"""The inference runners of conv_winograd.py: T tiles through the input transform, the n*n
products with the transformed kernel, the output transform and the 2x2 pool, in three of the
thread's working buffers with every view made once per tile count (`_core`). Two ways of feeding
them: whole chunks of images, copied from a strided view of the input (`chunk_runner`), and
listed tiles anywhere in the batch, gathered and put back by row (`listed_runner`), which
`sparse_inference` uses to compute only the tiles whose input is not all background (blank.py
says where; `blank_tiles` turns its mask into tiles, `window_all` is the mask arithmetic).
"""

from __future__ import annotations

import numpy as np

from pipeline.nn.fused import OFFSETS, in_parts
from pipeline.nn.winograd import even_chunks, scratch

MIN_BLANK = 0.05  # share of blank tiles from which inference lists the inked ones. c2 on 128
# test rows, 19% of its tiles blank: 7.59 against 9.32 ms (python
# scripts/experiments/blank_tiles.py). Predicting the 28000 rows on two threads with OpenBLAS's
# SkylakeX kernels, listing c4 (2% blank) and c5 (none) too was 5-8% slower than the plain plan,
# and even with 0.05 (blank_tiles.py --predict --min-blank 0, and without; 2026-12-04)


def _core(T, C, F, mats, pool):
    """-> (D, out, compute): D (n*n*T*C,), the tiles' input windows to fill, in (u, v, tile,
    channel) order; out (h, h, T, F), the tiles' outputs (pooled with `pool`) that compute()
    leaves. mats (AT, BT, U) as in
    conv_winograd._wino_forward. Every view is made here, once per tile count, so that a run
    costs its eleven numpy calls and nothing more: with two threads each call's Python side
    slows the other thread too. The arrays take turns in three of this thread's buffers: the
    windows, V (in place) and the output transform's rows in one; the products, then the
    pooled rows in another; the first 1-D pass of each transform (winograd.transform) in the
    third."""
    AT, BT, U = mats  # the 1-D transforms (m, n) and (n, n), the transformed kernel
    (m, n), dt = AT.shape, U.dtype
    h = m // 2 if pool else m
    one = scratch("D", (T * max(n * n * C, m * m * F),), dt)
    two = scratch("M", (n * n * T * F,), dt)
    half = scratch("half", (n * max(n * T * C, m * T * F),), dt)
    D = one[: n * n * T * C]  # then V, in place
    D3, V = D.reshape(n, n, T * C), D.reshape(n * n, T, C)
    W1 = half[: n * n * T * C].reshape(n, n, T * C)  # W1[u, j]: tile row u, across
    M = two.reshape(n * n, T, F)
    W2 = half[: n * m * T * F].reshape(n, m, T * F)
    Y = one[: m * m * T * F].reshape(m, m, T, F)  # Y[i, j]: the output at (m a+i, m b+j)
    # the second pass of each transform runs down the tile: strided views, made once
    W1t, V3t = W1.transpose(1, 0, 2), D3.transpose(1, 0, 2)
    W2t, Y3t = W2.transpose(1, 0, 2), Y.reshape(m, m, T * F).transpose(1, 0, 2)
    M3 = two.reshape(n, n, T * F)
    if pool:
        Y2 = Y.reshape(h, 2, h, 2, T, F)
        q = [Y2[:, i, :, j] for i, j in OFFSETS]  # (h, h, T, F) per pool offset
        P = two[: h * h * T * F].reshape(h, h, T, F)

    def compute():
        np.matmul(BT, D3, out=W1)  # V = kron(BT, BT) @ D in two 1-D passes, as transform
        np.matmul(BT, W1t, out=V3t)
        np.matmul(V, U, out=M)  # (n*n, T, F)
        np.matmul(AT, M3, out=W2)  # Y = kron(AT, AT) @ M
        np.matmul(AT, W2t, out=Y3t)
        if pool:
            np.maximum(q[0], q[1], out=P)
            np.maximum(P, q[2], out=P)
            np.maximum(P, q[3], out=P)

    return D, (P if pool else Y), compute


def chunk_runner(c, sizes, mats, pool):
    """-> run(src, o): one chunk of c images through the conv (and the pool), inference only:
    src its tile windows (n, n, c, A, B, C), o its output (h, h, c, A, B, F), both views;
    sizes (A, B, C, F) and mats (AT, BT, U) as in conv_winograd._wino_forward."""
    A, B, C, F = sizes  # tiles down and across, channels in and out
    m, n = mats[0].shape
    h = m // 2 if pool else m
    D, out, compute = _core(c * A * B, C, F, mats, pool)
    D6, out6 = D.reshape(n, n, c, A, B, C), out.reshape(h, h, c, A, B, F)

    def run(src, o):
        np.copyto(D6, src)
        compute()  # contiguous passes, then one strided copy
        np.copyto(o, out6)

    return run


def listed_runner(T, C, F, mats, pool):
    """-> run(x2, rows_in, o1, rows_out): T listed tiles through the conv (and the pool), as
    chunk_runner's run but for tiles anywhere: their n*n input pixels are rows_in of x2 (in
    (u, v, tile) order), their h*h outputs go to the items rows_out of o1 (one item per output
    pixel, (y, x, tile) order)."""
    D, out, compute = _core(T, C, F, mats, pool)
    D2 = D.reshape(-1, C)
    result = out.reshape(-1).view(np.dtype((np.void, F * out.itemsize)))

    def run(x2, rows_in, o1, rows_out):
        # the rows are valid: "clip" skips the default mode's checked, buffered copy (c2's
        # windows on 128 test rows: 0.86 against 2.92 ms, scripts/experiments/blank_tiles.py)
        np.take(x2, rows_in, axis=0, out=D2, mode="clip")
        compute()
        np.put(o1, rows_out, result, mode="clip")

    return run


def window_all(mask, k):
    """mask (N, H, W) bool -> (N, H-k+1, W-k+1): True where the k x k window from there is
    all True. Shifted ANDs, k down and k across: reductions over sliding windows cost more than
    the skipped tiles saved (docs/bench-notes.md, ninth round)."""
    H, W = mask.shape[1:]
    rows = mask[:, : H - k + 1].copy()
    for u in range(1, k):
        rows &= mask[:, u : H - k + 1 + u]
    out = rows[:, :, : W - k + 1].copy()
    for v in range(1, k):
        out &= rows[:, :, v : W - k + 1 + v]
    return out


def blank_tiles(blank, pad, m, n, A, B):
    """blank = (mask (N, H, W) bool, xref (1, H, W, C)[, memo]): the pixels where the input
    equals the reference image xref (one value at every pixel, as blank.py makes it) -> (N, A,
    B) bool, the tiles whose whole n x n input window is blank (their output is the
    reference's). The zero padding is the same around both, so it counts as blank."""
    mask = blank[0]
    if pad:
        mask = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)), constant_values=True)
    return window_all(mask, n)[:, : m * A : m, : m * B : m]  # (N, A, B)


def sparse_inference(xp, out, skip, ref, mats, pool, per_chunk, threads):
    """out (N, A, h, B, h, F) <- the conv (and pool) of xp (N, Hp, Wp, C) before the bias:
    where `skip` (N, A, B) is True the tile's outputs come from ref (A, h, B, h, F), the
    reference image's; the other tiles are listed and computed in chunks of `per_chunk`, their
    input windows gathered by row (np.take) and their outputs put back by row (np.put)."""
    N, Hp, Wp, C = xp.shape
    _, A, h, B, _, F = out.shape
    m, n = mats[0].shape
    i, a, b = np.nonzero(skip)
    out.transpose(0, 1, 3, 2, 4, 5)[i, a, b] = ref.transpose(0, 2, 1, 3, 4)[a, b]
    i, a, b = np.nonzero(~skip)
    first_in = (i * Hp + m * a) * Wp + m * b  # (T,) the pixel row of each window's (0, 0)
    first_out = ((i * A + a) * h * B + b) * h  # (T,) the pixel row of each tile's first output
    in_off = (np.arange(n)[:, None] * Wp + np.arange(n)).reshape(-1, 1)  # (n*n, 1): by (u, v)
    out_off = (np.arange(h)[:, None] * (B * h) + np.arange(h)).reshape(-1, 1)  # (h*h, 1)
    x2 = np.ascontiguousarray(xp).reshape(-1, C)  # (N*Hp*Wp, C)
    o1 = out.reshape(-1, F).view(np.dtype((np.void, F * out.itemsize))).reshape(-1)  # a pixel

    def sparse_part(s0, e0):
        runs = {}  # tiles per chunk -> its runner
        for s, e in even_chunks(s0, e0, per_chunk):
            run = runs.get(e - s)
            if run is None:
                run = runs[e - s] = listed_runner(e - s, C, F, mats, pool)
            run(x2, (in_off + first_in[s:e]).reshape(-1), o1,
                (out_off + first_out[s:e]).reshape(-1))

    if threads > 1:
        in_parts(sparse_part, first_in.size, threads)
    else:  # one part: fewer chunks than two halves
        sparse_part(0, first_in.size)
