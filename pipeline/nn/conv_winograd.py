"""Convolution -> 2x2 max pool, and convolution alone, by Winograd's minimal filtering
F(2x2, kxk): the same mathematics as `fused.conv_pool_*` (and so as `layers.conv2d_*` then
`layers.maxpool_*`), and as `layers.conv2d_*`, with 2.8x fewer multiplications for a 5x5 kernel
and 2.25x for 3x3, for the layers with many input channels.

Each 2x2 block of conv outputs at even positions, the block one pooled pixel takes its maximum
of, is one Winograd tile: it reads the (k+1) x (k+1) input window at (2a, 2b), and

    Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A      (* elementwise, per output channel)

with the (k+1)-point Toom-Cook matrices of `winograd_matrices` (points 0, 1, -1, 2, -1/2, inf).
Laid out as matrix products over the whole batch (n = k+1, T tiles, C in, F out channels):
the input transform V = kron(B^T, B^T) @ D, (n*n, n*n) @ (n*n, T*C); the n*n products
V[e] (T, C) @ U[e] (C, F) with U = kron(G, G) @ w; the output transform kron(A^T, A^T) @ M,
(4, n*n) @ (n*n, T*F), whose four rows are the conv outputs at the four pool offsets (the order
of fused.OFFSETS). Without a pool the four rows are put back in their places instead of
taking their maximum (`wino_conv_*`; its output side must be even). The backward pass runs the
same products transposed; the input gradient of a tile is scattered back by (k+1)^2 stride-2
slice-adds (a col2im with 36 small blocks instead of im2col's 25 large ones).

Exact in exact arithmetic; in float32 the transforms round a little more than the direct sum
(about 1e-6 relative, rms, against 2.5e-7 for the direct sum; tests/test_nn_winograd.py
holds it to 2e-5 of the scale). Ties in the max pool
go to the first offset as in fused.py, but a tie the direct sum makes exactly (identical input
windows) may be broken by rounding here: either is a valid gradient of the max.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.nn.fused import in_parts
from pipeline.nn.layers import colsum, conv2d_backward, conv2d_forward, put

# the finite interpolation points, then infinity: -1/2 rounds less in float32 than -2 (python
# scripts/bench.py --profile kernels prints both; docs/bench-notes.md)
POINTS = (0.0, 1.0, -1.0, 2.0, -0.5)
KERNELS = (3, 5)  # kernel sides with a Winograd form here (k + 1 <= len(POINTS) + 1 points)
CHUNK_BYTES = 2 << 20  # per chunk of images, the largest of its transformed arrays


@functools.cache
def winograd_matrices(k, points=POINTS):
    """-> (AT (2, n), G (n, k), BT (n, n)) in float64, n = k + 1, for the 1-D correlation
    y_i = sum_j d_{i+j} g_j (i = 0, 1) as y = AT @ ((G @ g) * (BT @ d)), from the first k
    of `points` and infinity.

    Toom-Cook: with V_m the n x m matrix of the points' powers 0..m-1 (the point at infinity
    picks the leading coefficient), convolution by g is V_n^-1 diag(V_k g) V_2, and correlation
    is its transpose: AT = V_2^T, G = V_k, BT = V_n^-T."""
    n = k + 1
    if k not in KERNELS:
        raise ValueError(f"Winograd F(2x2, kxk) is implemented for k in {KERNELS}, got {k}")
    points = tuple(points)[: n - 1]

    def powers(m):  # (n, m)
        rows = [[p**e for e in range(m)] for p in points] + [[0.0] * (m - 1) + [1.0]]
        return np.array(rows)

    mats = powers(2).T, powers(k), np.linalg.inv(powers(n)).T
    for m in mats:
        m.flags.writeable = False  # cached: shared by every caller
    return mats


def _kron(k, dtype):
    """-> (KA (4, n*n), KG (n*n, k*k), KB (n*n, n*n)) in `dtype`: the 2-D transforms."""
    return _kron_of(k, np.dtype(dtype).str, tuple(POINTS))


@functools.cache
def _kron_of(k, dtype, points):
    mats = []
    for m in winograd_matrices(k, points):
        K = np.kron(m, m).astype(dtype)
        K.flags.writeable = False  # shared by every call
        mats.append(K)
    return tuple(mats)


def _chunk(n, A, B, C, F, itemsize):
    """Images per chunk: a chunk's transformed tiles stay in the core's cache between the
    products (CHUNK_BYTES: of 512K, 1M, 2M, 4M and a whole part, 2M ran fastest)."""
    return max(1, CHUNK_BYTES // (n * n * A * B * max(C, F) * itemsize))


def wino_pool_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1):
    """x (N, H, W, C), w (k, k, C, F), b (F,) or None -> out (N, Ho/2, Wo/2, F), as
    fused.conv_pool_forward (and split into the same fixed parts, on `threads` threads)."""
    return _wino_forward(x, w, b, pad, train, threads, pool=True)


def wino_conv_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1):
    """x (N, H, W, C), w (k, k, C, F), b (F,) or None -> z (N, Ho, Wo, F) (Ho, Wo even), as
    layers.conv2d_forward: the same tiles and products as wino_pool_forward, each tile's four
    outputs put in their places instead of pooled. An odd output side has no 2x2 tiling: that
    conv runs as layers.conv2d_forward."""
    Ho, Wo = x.shape[1] + 2 * pad - w.shape[0] + 1, x.shape[2] + 2 * pad - w.shape[1] + 1
    if Ho % 2 or Wo % 2:
        out, cache = conv2d_forward(x, w, b, pad, train)
        return out, ("direct", cache)
    return _wino_forward(x, w, b, pad, train, threads, pool=False)


def _wino_forward(x, w, b, pad, train, threads, pool):
    N, H, W, C = x.shape
    k, _, _, F = w.shape
    n = k + 1
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x  # (N, Hp, Wp, C)
    Ho, Wo = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    assert Ho % 2 == 0 and Wo % 2 == 0, f"2x2 tiles need an even conv output, got {Ho}x{Wo}"
    A, B = Ho // 2, Wo // 2
    KA, KG, KB = _kron(k, x.dtype)
    U = (KG @ w.reshape(k * k, C * F)).reshape(n * n, C, F)  # (n*n, C, F) transformed kernel
    out = np.empty((N, A * B, F) if pool else (N, A, 2, B, 2, F), dtype=x.dtype)
    arg = np.empty((N, A * B, F), dtype=np.uint8) if train and pool else None
    nb = _chunk(n, A, B, C, F, x.dtype.itemsize)
    # the tiles' input windows as one no-copy view: tiles[u, v, i, a, b] = xp[i, 2a+u, 2b+v]
    sN, sH, sW, sC = xp.strides
    tiles = np.lib.stride_tricks.as_strided(
        xp, (n, n, N, A, B, C), (sH, sW, sN, 2 * sH, 2 * sW, sC), writeable=False
    )  # (n, n, N, A, B, C)

    def wino_forward_part(s0, e0):
        m = min(nb, e0 - s0)
        D = np.empty((n, n, m, A, B, C), dtype=x.dtype)  # one chunk's tile windows
        M = np.empty((n * n, m * A * B, F), dtype=x.dtype)
        Y = np.empty((4, m * A * B * F), dtype=x.dtype)
        # V (n*n, T, C), the transformed input: the part's whole, kept for the backward pass
        V = np.empty((n * n, (e0 - s0 if train else m) * A * B, C), dtype=x.dtype)
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            T = (e - s) * A * B
            Dc = D[:, :, : e - s]
            np.copyto(Dc, tiles[:, :, s:e])
            t0 = (s - s0) * A * B if train else 0
            Vc = V[:, t0 : t0 + T]  # (n*n, T, C)
            np.matmul(KB, Dc.reshape(n * n, T * C), out=Vc.reshape(n * n, T * C))
            Mc = M[:, :T]
            np.matmul(Vc, U, out=Mc)  # (n*n, T, F)
            Yc = Y[:, : T * F]
            np.matmul(KA, Mc.reshape(n * n, T * F), out=Yc)
            if not pool:  # each tile's four outputs to their places: z[2a+i, 2b+j] = Y[2i+j]
                Yc = Yc.reshape(2, 2, e - s, A, B, F)
                for i in range(2):
                    for j in range(2):
                        out[s:e, :, i, :, j] = Yc[i, j]
                continue
            Yc = Yc.reshape(4, e - s, A * B, F)  # the conv output at each pool offset
            o = out[s:e]
            np.maximum(Yc[0], Yc[1], out=o)
            np.maximum(o, Yc[2], out=o)
            np.maximum(o, Yc[3], out=o)
            if train:  # the winning offset, ties to the first (as fused.conv_pool_forward)
                a = arg[s:e]
                np.not_equal(Yc[2], o, out=a.view(bool))
                a += 1
                a *= np.not_equal(Yc[1], o)
                a += 1
                a *= np.not_equal(Yc[0], o)
        return s0, (V if train else None)

    Vs = dict(in_parts(wino_forward_part, N, threads))  # part start -> its V
    if b is not None:
        out += b  # max(z + b) = max(z) + b
    out = out.reshape((N, A, B, F) if pool else (N, Ho, Wo, F))
    if not train:
        return out, None
    return out, (Vs, U, arg, w.shape, x.shape, pad, b is not None, threads, pool)


def wino_pool_backward(dout, cache, grads=None, need_dx=True):
    """dout (N, Ho/2, Wo/2, F) -> dx (N, H, W, C) or None; fills grads["w"] (and ["b"])."""
    return _wino_backward(dout, cache, grads, need_dx)


def wino_conv_backward(dz, cache, grads=None, need_dx=True):
    """dz (N, Ho, Wo, F) -> dx (N, H, W, C) or None; fills grads["w"] (and ["b"])."""
    if cache[0] == "direct":
        return conv2d_backward(dz, cache[1], grads, need_dx)
    return _wino_backward(dz, cache, grads, need_dx)


def _wino_backward(dout, cache, grads, need_dx):
    Vs, U, arg, w_shape, x_shape, pad, has_bias, threads, pool = cache
    N, F = dout.shape[0], dout.shape[-1]
    A, B = (dout.shape[1], dout.shape[2]) if pool else (dout.shape[1] // 2, dout.shape[2] // 2)
    k, _, C, _ = w_shape
    n = k + 1
    dt = dout.dtype
    KA, KG, KB = _kron(k, dt)
    d2 = dout.reshape((N, A * B, F) if pool else (N, A, 2, B, 2, F))
    Hp, Wp = x_shape[1] + 2 * pad, x_shape[2] + 2 * pad
    dx = np.empty(x_shape, dtype=dt) if need_dx else None
    Ut = np.ascontiguousarray(U.transpose(0, 2, 1))  # (n*n, F, C): 25% faster products
    nb = _chunk(n, A, B, C, F, dt.itemsize)

    def wino_backward_part(s0, e0):
        m = min(nb, e0 - s0)
        dY = np.empty((4, m, A * B, F), dtype=dt)  # conv output gradient by offset
        won_buf = np.empty((m, A * B, F), dtype=bool) if pool else None  # offset q won
        dM = np.empty((n * n, m * A * B, F), dtype=dt)
        dV = np.empty((n * n, m * A * B, C), dtype=dt) if need_dx else None
        dD = np.empty((n * n, m * A * B * C), dtype=dt) if need_dx else None
        dxp = np.empty((m, Hp, Wp, C), dtype=dt) if need_dx and pad else None
        dUt = np.empty((n * n, F, C), dtype=dt)  # (n*n, F, C), this part's share
        more = np.empty_like(dUt)
        V = Vs[s0]
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            T = (e - s) * A * B
            dYc = dY[:, : e - s]
            if pool:
                won = won_buf[: e - s]
                for q in range(4):  # the gradient goes to the offset that won
                    np.equal(arg[s:e], np.uint8(q), out=won)
                    np.multiply(d2[s:e], won, out=dYc[q])
            else:  # each tile's four output gradients, gathered from their places
                for q, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                    dYc[q].reshape(e - s, A, B, F)[...] = d2[s:e, :, i, :, j]
            dMc = dM[:, :T]
            np.matmul(KA.T, dYc.reshape(4, T * F), out=dMc.reshape(n * n, T * F))
            Vc = V[:, (s - s0) * A * B : (e - s0) * A * B]  # (n*n, T, C)
            np.matmul(dMc.transpose(0, 2, 1), Vc, out=dUt if s == s0 else more)
            if s > s0:  # in chunk order: a fixed sum
                dUt += more
            if not need_dx:
                continue
            dVc = dV[:, :T]
            np.matmul(dMc, Ut, out=dVc)  # (n*n, T, C)
            dDc = dD[:, : T * C]
            np.matmul(KB.T, dVc.reshape(n * n, T * C), out=dDc)
            dDc = dDc.reshape(n, n, e - s, A, B, C)  # each tile's input window gradient
            g = dxp[: e - s] if pad else dx[s:e]  # (e-s, Hp, Wp, C)
            g[...] = 0
            for u in range(n):  # back to its place in the image
                for v in range(n):
                    g[:, u : u + 2 * A : 2, v : v + 2 * B : 2] += dDc[u, v]
            if pad:
                dx[s:e] = g[:, pad : pad + x_shape[1], pad : pad + x_shape[2]]
        return dUt

    dUts = in_parts(wino_backward_part, N, threads)
    dUt = dUts[0]
    for more in dUts[1:]:  # in part order: the same sum for any thread count
        dUt += more
    dwt = (KG.T @ dUt.reshape(n * n, F * C)).reshape(k, k, F, C)
    dw = np.ascontiguousarray(dwt.transpose(0, 1, 3, 2))  # (k, k, C, F)
    put(grads, "w", dw)
    if has_bias:
        put(grads, "b", colsum(dout.reshape(-1, F)))  # (F,)
    return dx
