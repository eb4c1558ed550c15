"""Convolution -> 2x2 max pool, and convolution alone, by Winograd's minimal filtering
F(m x m, k x k): the same mathematics as `fused.conv_pool_*` (and so as `layers.conv2d_*` then
`layers.maxpool_*`), and as `layers.conv2d_*`, with fewer multiplications (F(2x2, 5x5): 2.8x,
F(2x2, 3x3): 2.25x, F(4x4, 3x3): 4x), for the layers with many input channels.

Each m x m block of conv outputs at (m a, m b) is one tile: it reads the n x n input window
there (n = m + k - 1), and

    Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A      (* elementwise, per output channel)

with the n-point Toom-Cook matrices of `winograd_matrices` (points 0, 1, -1, 2, -1/2, inf).
Laid out as matrix products over the whole batch (T tiles, C in, F out channels): the input
transform V = kron(B^T, B^T) @ D, (n*n, n*n) @ (n*n, T*C); the n*n products V[e] (T, C) @
U[e] (C, F) with U = kron(G, G) @ w; the output transform kron(A^T, A^T) @ M, (m*m, n*n) @
(n*n, T*F), whose rows are the conv outputs at the m*m offsets in the tile. With a pool (m
even), each 2x2 block of a tile is one pooled pixel: the maximum of four of those rows (the
offsets in the order of fused.OFFSETS); without one, the rows are put back in their places.
Each kron product runs as two 1-D passes with the 1-D matrix, across the tile and then down it
(`winograd.transform`): 3x fewer multiply-adds, faster on one thread. 3x3 kernels use 4x4 tiles
where the output side is a multiple of 4 (`TILE`, `tile_side`), else 2x2. The backward pass
runs the same products transposed; the input gradients of the tiles' windows are added back
into the image across, then down (`overlap_add`, a col2im of small blocks).

Exact in exact arithmetic; in float32 the six-point transforms (F(2x2, 5x5), F(4x4, 3x3))
round a little more than the direct sum (about 1e-6 relative, rms, against 2.5e-7 for the
direct sum; tests/test_nn_winograd.py holds it to 2e-5 of the scale; `python scripts/bench.py
--profile kernels` prints it). Ties in the max pool go to the first offset as in fused.py, but
a tie the direct sum makes exactly (identical input windows) may be broken by rounding here:
either is a valid gradient of the max.
"""


from __future__ import annotations

import numpy as np

from pipeline.nn import winograd_inference as Wf
from pipeline.nn.fused import OFFSETS, in_parts, sum_in_parts
from pipeline.nn.layers import colsum, conv2d_backward, conv2d_forward, put
from pipeline.nn.winograd import (
    even_chunks,
    factors,
    kron_matrices,
    scratch,
    tile_side,
    transform,
)

CHUNK_BYTES = 2 << 20  # per chunk of images, the largest of its transformed arrays


def _chunk(n, A, B, C, F, itemsize):
    """Images per chunk: a chunk's transformed tiles stay in the core's cache between the
    products. CHUNK_BYTES 2M against 3M and 4M (python scripts/experiments/wino_chunks.py,
    2026-12-02 03:07 UTC, quiet): the 3x3 default's training step 66.5 / 71.7 / 70.8 ms on one
    thread, 44.5 / 48.4 / 47.0 ms on two; predicting 8192 rows on two threads 0.88 / 0.96 /
    1.01 s."""
    return max(1, CHUNK_BYTES // (n * n * A * B * max(C, F) * itemsize))


def wino_pool_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1, blank=None):
    """x (N, H, W, C), w (k, k, C, F), b (F,) or None -> out (N, Ho/2, Wo/2, F), as
    fused.conv_pool_forward (and split into the same fixed parts, on `threads` threads).
    Inference may be told where the input is blank (`blank`, see winograd_inference.blank_tiles)."""
    return _wino_forward(x, w, b, pad, train, threads, pool=True, blank=blank)


def wino_conv_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1, blank=None):
    """x (N, H, W, C), w (k, k, C, F), b (F,) or None -> z (N, Ho, Wo, F), as
    layers.conv2d_forward: the same tiles and products as wino_pool_forward, each tile's
    outputs put in their places instead of pooled. An odd output side has no tiling: that conv
    runs as layers.conv2d_forward."""
    Ho, Wo = x.shape[1] + 2 * pad - w.shape[0] + 1, x.shape[2] + 2 * pad - w.shape[1] + 1
    if Ho % 2 or Wo % 2:
        out, cache = conv2d_forward(x, w, b, pad, train)
        return out, ("direct", cache)
    return _wino_forward(x, w, b, pad, train, threads, pool=False, blank=blank)


def _wino_forward(x, w, b, pad, train, threads, pool, blank=None):
    N, H, W, C = x.shape
    k, _, _, F = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x  # (N, Hp, Wp, C)
    Ho, Wo = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    assert Ho % 2 == 0 and Wo % 2 == 0, f"2x2 tiles need an even conv output, got {Ho}x{Wo}"
    m = tile_side(k, Ho, Wo)
    n = m + k - 1
    A, B = Ho // m, Wo // m  # tiles down and across
    h = m // 2 if pool else m  # output pixels per tile side
    _, KG, _ = kron_matrices(k, m, x.dtype)
    AT, BT, _, _ = factors(k, m, x.dtype)
    U = (KG @ w.reshape(k * k, C * F)).reshape(n * n, C, F)  # (n*n, C, F) transformed kernel
    out = np.empty((N, A, h, B, h, F), dtype=x.dtype)  # the output's own layout
    nb = _chunk(n, A, B, C, F, x.dtype.itemsize)
    # the tiles' input windows as one no-copy view: tiles[u, v, i, a, b] = xp[i, m a+u, m b+v]
    sN, sH, sW, sC = xp.strides
    tiles = np.lib.stride_tricks.as_strided(
        xp, (n, n, N, A, B, C), (sH, sW, sN, m * sH, m * sW, sC), writeable=False
    )  # (n, n, N, A, B, C)
    o6 = out.transpose(2, 4, 0, 1, 3, 5)  # (h, h, N, A, B, F): the tiles' order, a view
    if not train:
        skip = Wf.blank_tiles(blank, pad, m, n, A, B) if blank is not None else None
        if skip is not None and skip.mean() >= Wf.MIN_BLANK:  # the inked tiles listed, the blank
            # ones copied from the reference's output
            ref = _reference_output(blank, w, pad, pool)  # (1, A*h, B*h, F)
            Wf.sparse_inference(xp, out, skip, ref.reshape(A, h, B, h, F), (AT, BT, U), pool,
                              nb * A * B, threads)
        else:

            def wino_inference_part(s0, e0):
                runs = {}  # chunk size -> its runner
                for s, e in even_chunks(s0, e0, nb):
                    run = runs.get(e - s)
                    if run is None:
                        run = runs[e - s] = Wf.chunk_runner(e - s, (A, B, C, F), (AT, BT, U),
                                                            pool)
                    run(tiles[:, :, s:e], o6[:, :, s:e])

            if threads > 1:
                in_parts(wino_inference_part, N, threads)
            else:  # one part: fewer chunks than two halves
                wino_inference_part(0, N)
        if b is not None:
            out += b  # max(z + b) = max(z) + b
        return out.reshape(N, A * h, B * h, F), None
    # which pool offset won, in the tiles' order (h, h, N, A, B, F): read back in that order
    arg = np.empty((h, h, N, A, B, F), dtype=np.uint8) if pool else None

    def wino_forward_part(s0, e0):
        chunks = even_chunks(s0, e0, nb)
        c = max(e - s for s, e in chunks)
        D = scratch("D", (n, n, c, A, B, C), x.dtype)  # one chunk's tile windows
        M = scratch("M", (n * n, c * A * B, F), x.dtype)
        Y = scratch("Y", (m * m, c * A * B * F), x.dtype)
        P = scratch("P", (h, h, c, A, B, F), x.dtype) if pool and h > 1 else None
        # V, the transformed input: the part's whole, kept for the backward pass, each chunk's
        # (n*n, T, C) contiguous in it (written in one stream: 3x faster than one per row)
        V = np.empty((e0 - s0) * A * B * n * n * C, x.dtype)
        for s, e in chunks:
            T = (e - s) * A * B
            Dc = D[:, :, : e - s]
            np.copyto(Dc, tiles[:, :, s:e])
            t0 = (s - s0) * A * B * n * n * C
            Vc = V[t0 : t0 + n * n * T * C].reshape(n * n, T, C)
            transform(BT, Dc.reshape(n * n, T * C), Vc.reshape(n * n, T * C))
            Mc = M[:, :T]
            np.matmul(Vc, U, out=Mc)  # (n*n, T, F)
            Yc = Y[:, : T * F]
            transform(AT, Mc.reshape(n * n, T * F), Yc)
            # Yc[i, j]: the conv output at (m a + i, m b + j) of every tile (a, b)
            Yc = Yc.reshape(m, m, e - s, A, B, F)
            o = o6[:, :, s:e]  # (h, h, e-s, A, B, F), a view
            if not pool:  # each tile's outputs to their places
                np.copyto(o, Yc)
                continue
            Y2 = Yc.reshape(h, 2, h, 2, e - s, A, B, F)
            q = [Y2[:, i, :, j] for i, j in OFFSETS]  # (h, h, e-s, A, B, F) per pool offset
            p = P[:, :, : e - s] if h > 1 else o  # contiguous passes, then one strided copy
            np.maximum(q[0], q[1], out=p)
            np.maximum(p, q[2], out=p)
            np.maximum(p, q[3], out=p)
            # the winning offset, ties to the first (as fused.conv_pool_forward)
            a = arg[:, :, s:e]
            np.not_equal(q[2], p, out=a.view(bool))
            a += 1
            a *= np.not_equal(q[1], p)
            a += 1
            a *= np.not_equal(q[0], p)
            if h > 1:
                np.copyto(o, p)
        return s0, V

    Vs = dict(in_parts(wino_forward_part, N, threads))  # part start -> its V
    if b is not None:
        out += b  # max(z + b) = max(z) + b
    out = out.reshape(N, A * h, B * h, F)
    return out, (Vs, U, arg, m, w.shape, x.shape, pad, b is not None, threads, pool)


def _reference_output(blank, w, pad, pool):
    """The conv (and pool) of the reference image blank[1], before the bias: made once per
    memo (blank[2], a dict the caller keeps for these weights), else on every call."""
    memo = blank[2] if len(blank) > 2 else None
    ref = memo.get("out") if memo is not None else None
    if ref is None:
        ref = _wino_forward(blank[1], w, None, pad, False, 1, pool)[0]
        if memo is not None:
            memo["out"] = ref
    return ref


# the number of each (row, column) of the pool window in fused.OFFSETS, as `arg` holds them
WINNER = np.array([[OFFSETS.index((i, j)) for j in (0, 1)] for i in (0, 1)],
                  np.uint8).reshape(2, 2, 1, 1, 1, 1, 1, 1)


def overlap_add(dD, m, rows, out):
    """The tiles' input window gradients back to their places in the image, adding where
    windows overlap (a col2im of n x n windows at stride m): dD (n, n, c, A, B, C), the window
    of tile (a, b) at (m a, m b) -> out (c, Hp, Wp, C), Hp = m A + n - m, Wp = m B + n - m,
    through rows (n, c, A, Wp, C), a working buffer. Across first: each window row's n values go
    to their columns (one copy of the first m, an add for each of the other n - m), then down,
    the rows to theirs the same way: 2 (n - m + 2) calls, not one per window offset (n*n)
    (python scripts/experiments/overlap_add.py, 2026-12-04, ms a chunk): on one thread about as
    fast (c2 0.161-0.169 against 0.168-0.175, c5 0.169-0.173 against 0.152-0.166); with two
    threads at once, as a step's two parts run, faster (c2 0.179-0.186 against 0.213-0.286,
    c5 0.194-0.213 against 0.201-0.304): each call takes the GIL to start."""
    n, _, c, A, B, C = dD.shape
    Wp = rows.shape[3]
    np.copyto(rows[:, :, :, : m * B].reshape(n, c, A, B, m, C),
              dD[:, :m].transpose(0, 2, 3, 4, 1, 5))
    rows[:, :, :, m * B :] = 0
    for v in range(m, n):
        rows[:, :, :, v : v + m * B : m] += dD[:, v]
    np.copyto(out[:, : m * A].reshape(c, A, m, Wp, C), rows[:m].transpose(1, 2, 0, 3, 4))
    out[:, m * A :] = 0
    for u in range(m, n):
        out[:, u : u + m * A : m] += rows[u]
    return out


def wino_pool_backward(dout, cache, grads=None, need_dx=True):
    """dout (N, Ho/2, Wo/2, F) -> dx (N, H, W, C) or None; fills grads["w"] (and ["b"])."""
    return _wino_backward(dout, cache, grads, need_dx)


def wino_conv_backward(dz, cache, grads=None, need_dx=True):
    """dz (N, Ho, Wo, F) -> dx (N, H, W, C) or None; fills grads["w"] (and ["b"])."""
    if cache[0] == "direct":
        return conv2d_backward(dz, cache[1], grads, need_dx)
    return _wino_backward(dz, cache, grads, need_dx)


def _wino_backward(dout, cache, grads, need_dx):
    Vs, U, arg, m, w_shape, x_shape, pad, has_bias, threads, pool = cache
    N, F = dout.shape[0], dout.shape[-1]
    k, _, C, _ = w_shape
    n = m + k - 1
    h = m // 2 if pool else m
    A, B = dout.shape[1] // h, dout.shape[2] // h
    dt = dout.dtype
    _, KG, _ = kron_matrices(k, m, dt)
    _, _, A_, B_ = factors(k, m, dt)  # AT.T, BT.T: the transposed transforms
    d6 = dout.reshape(N, A, h, B, h, F)
    Hp, Wp = x_shape[1] + 2 * pad, x_shape[2] + 2 * pad
    dx = np.empty(x_shape, dtype=dt) if need_dx else None
    Ut = np.ascontiguousarray(U.transpose(0, 2, 1))  # (n*n, F, C): 25% faster products
    nb = _chunk(n, A, B, C, F, dt.itemsize)

    def wino_backward_part(s0, e0):
        chunks = even_chunks(s0, e0, nb)  # the forward pass's: V is laid out by them
        c = max(e - s for s, e in chunks)
        dY = scratch("dY", (m * m, c * A * B * F), dt)  # the output gradient, by (i, j)
        won_buf = scratch("won", (2, 2, h, h, c, A, B, F), bool) if pool else None  # who won
        dP = scratch("dP", (h, h, c, A, B, F), dt) if pool and h > 1 else None
        dM = scratch("dM", (n * n, c * A * B, F), dt)
        dV = scratch("dV", (n * n, c * A * B, C), dt) if need_dx else None
        dD = scratch("dD", (n * n, c * A * B * C), dt) if need_dx else None
        dxp = scratch("dxp", (c, Hp, Wp, C), dt) if need_dx and pad else None
        rows = scratch("rows", (n, c, A, Wp, C), dt) if need_dx else None  # overlap_add's
        dUt = np.empty((n * n, F, C), dtype=dt)  # (n*n, F, C), this part's share (returned)
        more = scratch("more", (n * n, F, C), dt)
        V = Vs[s0]
        for s, e in chunks:
            T = (e - s) * A * B
            dYc = dY[:, : T * F]
            Y6 = dYc.reshape(m, m, e - s, A, B, F)
            g6 = d6[s:e].transpose(2, 4, 0, 1, 3, 5)  # (h, h, e-s, A, B, F), a view
            if pool:
                if h > 1:  # one strided copy, then contiguous passes
                    np.copyto(dP[:, :, : e - s], g6)
                    g6 = dP[:, :, : e - s]
                # the gradient goes to the offset that won: all four offsets in two calls
                won = won_buf[:, :, :, :, : e - s]  # (2, 2, h, h, e-s, A, B, F)
                np.equal(arg[:, :, s:e], WINNER, out=won)
                np.multiply(g6, won, out=Y6.reshape(h, 2, h, 2, e - s, A, B, F)
                            .transpose(1, 3, 0, 2, 4, 5, 6, 7))
            else:  # each tile's output gradients, gathered from their places
                np.copyto(Y6, g6)
            dMc = dM[:, :T]
            transform(A_, dYc, dMc.reshape(n * n, T * F))  # kron(AT, AT).T @ dY
            t0 = (s - s0) * A * B * n * n * C
            Vc = V[t0 : t0 + n * n * T * C].reshape(n * n, T, C)  # this chunk's, as forward
            np.matmul(dMc.transpose(0, 2, 1), Vc, out=dUt if s == s0 else more)
            if s > s0:  # in chunk order: a fixed sum
                dUt += more
            if not need_dx:
                continue
            dVc = dV[:, :T]
            np.matmul(dMc, Ut, out=dVc)  # (n*n, T, C)
            dDc = dD[:, : T * C]
            transform(B_, dVc.reshape(n * n, T * C), dDc)  # kron(BT, BT).T @ dV
            g = dxp[: e - s] if pad else dx[s:e]  # (e-s, Hp, Wp, C)
            overlap_add(dDc.reshape(n, n, e - s, A, B, C), m, rows[:, : e - s], g)
            if pad:
                dx[s:e] = g[:, pad : pad + x_shape[1], pad : pad + x_shape[2]]
        return dUt

    dUt = sum_in_parts(wino_backward_part, N, threads)  # in part order
    dwt = (KG.T @ dUt.reshape(n * n, F * C)).reshape(k, k, F, C)
    dw = np.ascontiguousarray(dwt.transpose(0, 1, 3, 2))  # (k, k, C, F)
    put(grads, "w", dw)
    if has_bias:
        put(grads, "b", colsum(dout.reshape(-1, F)))  # (F,)
    return dx
