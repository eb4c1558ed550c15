"""Fused kernels: the same mathematics as a sequence of `layers.py` layers, in fewer passes over
memory. `Model` runs them where its spec has the pair (see `plan.make_plan`); each is checked
against the unfused pair in tests/test_nn_fused.py, and the unfused layers stay the readable
reference.

- conv -> 2x2 max pool (`conv_pool_*`): the im2col rows are ordered by the pool window offset
  (q = 0..3 for (0,0), (0,1), (1,0), (1,1)), so the convolution's output for each offset is one
  contiguous block and the pool is three elementwise maxima of whole blocks. Images go through
  in chunks small enough that each chunk's columns and output stay in the core's cache between
  the copy, the matrix product and the max. The full conv output is never written.
- BatchNorm -> ReLU (`bn_relu_*`): the activation is applied in place on BatchNorm's output and
  its mask folded into BatchNorm's backward.

Same results as the unfused layers up to float32 rounding: the matrix products see the rows in
another order and in other blocks, so sums round differently (last-bit changes); the max-pool's
tie rule (the first offset wins) is the same.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.nn.layers import (
    BN_EPS,
    batchnorm_input_grad,
    batchnorm_sums,
    colsum,
    conv_input_grad,
    put,
)

OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))  # pool window offsets (row, col), in tie order
CHUNK_BYTES = 1 << 20  # columns per chunk: of 256K, 1M, 4M and all, 1M was fastest for c3


def _chunk(per_image_bytes):
    return max(1, CHUNK_BYTES // per_image_bytes)


def conv_pool_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1):
    """x (N, H, W, C), w (kh, kw, C, F), b (F,) or None -> out (N, Ho/2, Wo/2, F): a stride-1
    convolution followed by a 2x2 max pool (Ho, Wo must be even). The images are split into
    PARTS fixed halves, run on `threads` threads at once (same result for any thread count)."""
    N, H, W, C = x.shape
    kh, kw, _, F = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x  # (N, Hp, Wp, C)
    Ho, Wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    assert Ho % 2 == 0 and Wo % 2 == 0, f"max pool needs an even conv output, got {Ho}x{Wo}"
    A, B, K = Ho // 2, Wo // 2, kh * kw * C
    if not train and C == 1:
        return _conv_pool_windows(xp, w, b, A, B), None
    # im2col ordered by pool offset as one no-copy view (one copy of it 14% faster than four):
    # win[n, di, dj, a, b, i, j] = xp[n, 2a + di + i, 2b + dj + j]
    sN, sH, sW, sC = xp.strides
    win = np.lib.stride_tricks.as_strided(
        xp, (N, 2, 2, A, B, kh, kw, C), (sN, sH, sW, 2 * sH, 2 * sW, sH, sW, sC), writeable=False
    )  # (N, 2, 2, A, B, kh, kw, C)
    w2 = w.reshape(K, F)
    nb = _chunk(4 * A * B * K * 4)
    cols = np.empty((N, 4, A, B, kh, kw, C), dtype=x.dtype) if train else None  # for backward
    out = np.empty((N, A * B, F), dtype=x.dtype)  # (N, A*B, F)
    arg = np.empty((N, A * B, F), dtype=np.uint8) if train else None

    def conv_pool_forward_part(s0, e0):
        z = np.empty((min(nb, e0 - s0), 4, A * B, F), dtype=x.dtype)  # one chunk's conv output
        own = None if train else np.empty((min(nb, e0 - s0), 4, A, B, kh, kw, C), dtype=x.dtype)
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            c = cols[s:e] if train else own[: e - s]
            np.copyto(c.reshape(e - s, 2, 2, A, B, kh, kw, C), win[s:e])  # q = 2 di + dj
            zc = z[: e - s]
            np.matmul(c.reshape(-1, K), w2, out=zc.reshape(-1, F))  # ((e-s)*4*A*B, F)
            o = out[s:e]
            np.maximum(zc[:, 0], zc[:, 1], out=o)
            np.maximum(o, zc[:, 2], out=o)
            np.maximum(o, zc[:, 3], out=o)
            if train:  # the winning offset, ties to the first (as layers.maxpool_forward)
                a = arg[s:e]
                np.not_equal(zc[:, 2], o, out=a.view(bool))
                a += 1
                a *= np.not_equal(zc[:, 1], o)
                a += 1
                a *= np.not_equal(zc[:, 0], o)

    in_parts(conv_pool_forward_part, N, threads)
    if b is not None:
        out += b  # max(z + b) = max(z) + b: the bias after the pool is the same, 4x cheaper
    out = out.reshape(N, A, B, F)
    if not train:
        return out, None
    return out, (cols, arg, w, x.shape, pad, b is not None, threads)


def _conv_pool_windows(xp, w, b, A, B):
    """Inference form of conv_pool_forward for one input channel, where im2col's short rows
    dominate: each pooled pixel's whole (kh+1) x (kw+1) input window (stride 2) times a kernel
    zero-padded once per pool offset, (N*A*B, (kh+1)(kw+1)C) @ ((kh+1)(kw+1)C, 4F). 1.44x the
    products of im2col (36 against 4 x 25 inputs for 5x5), a third of the copying, and a squarer
    product; measured faster forward, slower for the backward pass, so used for inference."""
    N = xp.shape[0]
    kh, kw, C, F = w.shape
    K2 = (kh + 1) * (kw + 1) * C
    wp = np.zeros((kh + 1, kw + 1, C, 4, F), dtype=w.dtype)  # the kernel at each pool offset
    for q, (i, j) in enumerate(OFFSETS):
        wp[i : i + kh, j : j + kw, :, q, :] = w
    wp = wp.reshape(K2, 4 * F)
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh + 1, kw + 1), axis=(1, 2))
    # (N, A, B, kh+1, kw+1, C): the window of pooled pixel (a, b) starts at (2a, 2b)
    win = win[:, 0 : 2 * A : 2, 0 : 2 * B : 2].transpose(0, 1, 2, 4, 5, 3)
    nb = _chunk(A * B * K2 * 4)
    S = np.empty((min(nb, N), A, B, kh + 1, kw + 1, C), dtype=xp.dtype)  # one chunk's windows
    z = np.empty((min(nb, N) * A * B, 4, F), dtype=xp.dtype)
    out = np.empty((N * A * B, F), dtype=xp.dtype)
    for s in range(0, N, nb):
        e = min(s + nb, N)
        np.copyto(S[: e - s], win[s:e])
        zc = z[: (e - s) * A * B]
        np.matmul(S[: e - s].reshape(-1, K2), wp, out=zc.reshape(-1, 4 * F))
        o = out[s * A * B : e * A * B]
        np.maximum(zc[:, 0], zc[:, 1], out=o)
        np.maximum(o, zc[:, 2], out=o)
        np.maximum(o, zc[:, 3], out=o)
    if b is not None:
        out += b
    return out.reshape(N, A, B, F)


def conv_pool_backward(dout, cache, grads=None, need_dx=True):
    """dout (N, Ho/2, Wo/2, F) -> dx (N, H, W, C) or None; fills grads["w"] (and ["b"])."""
    cols, arg, w, x_shape, pad, has_bias, threads = cache
    N, A, B, F = dout.shape
    kh, kw, C, _ = w.shape
    K = kh * kw * C
    d2 = dout.reshape(N, A * B, F)
    dx = np.empty(x_shape, dtype=dout.dtype) if need_dx else None
    # images per chunk; one chunk per part with dx (chunked, its col2im was no faster)
    nb = N if need_dx else _chunk(4 * A * B * max(K, F) * dout.dtype.itemsize)

    def conv_pool_backward_part(s0, e0):
        m = min(nb, e0 - s0)
        dz = np.empty((m, 4, A * B, F), dtype=dout.dtype)  # one chunk's conv output gradient
        won = np.empty((m, A * B, F), dtype=bool)  # reused: 15% faster than a new mask each
        dzn = np.empty((m, 2 * A, 2 * B, F), dtype=dout.dtype) if need_dx else None
        dw, more = np.empty((K, F), dtype=dout.dtype), np.empty((K, F), dtype=dout.dtype)
        for s in range(s0, e0, nb):  # chunks: dz stays in cache for its product
            e = min(s + nb, e0)
            dzc = dz[: e - s]
            for q in range(4):
                np.equal(arg[s:e], np.uint8(q), out=won[: e - s])
                np.multiply(d2[s:e], won[: e - s], out=dzc[:, q])
            # (K, F), this chunk's share, added in chunk order
            np.matmul(cols[s:e].reshape(-1, K).T, dzc.reshape(-1, F), out=dw if s == s0 else more)
            if s > s0:
                dw += more
            if need_dx:
                g = dzn[: e - s]  # the conv's own layout
                for q, (i, j) in enumerate(OFFSETS):
                    g[:, i::2, j::2] = dzc[:, q].reshape(e - s, A, B, F)
                conv_input_grad(g, w, (e - s, *x_shape[1:]), pad, out=dx[s:e])
        return dw

    dw = sum_in_parts(conv_pool_backward_part, N, threads)
    put(grads, "w", dw.reshape(kh, kw, C, F))
    if has_bias:
        put(grads, "b", colsum(d2.reshape(-1, F)))  # (F,)
    return dx


# ----------------------------------------------------------------------------------------------
# Threads: the images of a batch in PARTS fixed parts, the parts on a small thread pool


PARTS = 2  # fixed, so that the sums (and so the results) do not depend on the thread count
_POOLS = {}


def worker_pool(workers, name="nn"):
    """This process's pool of `workers` threads named `name`, made on first use and kept: its
    threads, and the working buffers each keeps (winograd.scratch), outlive the call. A
    forked child makes pools of its own (its parent's worker threads do not exist in it)."""
    key = (os.getpid(), name, workers)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix=name)
    return pool


def in_parts(fn, n, threads=1):
    """[fn(s, e) for each of PARTS contiguous parts of range(n)], the parts on up to `threads`
    threads at once (numpy releases the GIL in matrix products and most ufuncs)."""
    k = max(1, min(PARTS, n))
    bounds = [n * i // k for i in range(k + 1)]
    parts = list(zip(bounds[:-1], bounds[1:]))
    if threads <= 1 or k == 1:
        return [fn(s, e) for s, e in parts]
    pool = worker_pool(threads - 1)
    later = [pool.submit(fn, s, e) for s, e in parts[1:]]
    first = fn(*parts[0])  # the calling thread takes the first part
    return [first, *(f.result() for f in later)]


def sum_in_parts(fn, n, threads=1):
    """The sum of in_parts(fn, n, threads), each part's result (a new array) added to the first
    in part order: the same sum for any thread count."""
    parts = in_parts(fn, n, threads)
    total = parts[0]
    for more in parts[1:]:
        total += more
    return total


def relu_inplace(a):
    """a (contiguous, any shape) -> max(a, 0) in place, in rows of ROW against one cached row
    of zeros: numpy's maximum with a scalar runs 3-4x slower than with an array operand (its
    fast loop wants two contiguous inputs), and one short row reads less than a whole array of
    zeros (an 11 MB map, numpy 2.4: 0.96 ms with 0.0, 0.28 ms with a row; python
    scripts/fused_first_bench.py --relu)."""
    if not a.flags.c_contiguous:  # the plain form
        np.maximum(a, 0.0, out=a)
        return
    flat = a.reshape(-1)  # a view
    zeros = _zeros(a.dtype)
    n = flat.size - flat.size % ROW
    if n:
        np.maximum(flat[:n].reshape(-1, ROW), zeros, out=flat[:n].reshape(-1, ROW))
    np.maximum(flat[n:], zeros[: flat.size - n], out=flat[n:])


ROW = 32768  # floats per row of relu_inplace, 128 KB of zeros (the 11 MB map: 0.33 ms; 4096: 0.63)
_ZEROS = {}


def _zeros(dtype):  # read-only, one per dtype
    z = _ZEROS.get(dtype)
    if z is None:
        z = _ZEROS[dtype] = np.zeros(ROW, dtype=dtype)
        z.flags.writeable = False
    return z


THREADED_MIN = 1 << 18  # values from which BatchNorm + ReLU uses the step's threads: at 128 x
# 4 x 4 x 64 and 128 x 128 a second thread made it slower, at 128 x 12 x 12 x 32 faster
# (python scripts/bench.py --profile cnn --threads 2 --clock wall)


def bn_relu_forward(x, gamma, beta, mean, var, train=True, rng=None, momentum=0.1, eps=BN_EPS,
                    threads=1):
    """x (..., C) -> relu(batchnorm(x)) (..., C); the running stats update as in
    layers.batchnorm_forward. In training the rows go through in the PARTS fixed parts, on
    `threads` threads: the column sums are added part by part in order, so any thread count
    gives the same bytes."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (M, C)
    if not train:
        scale = gamma / np.sqrt(var + eps)  # (C,)
        y = x2 * scale
        y += beta - mean * scale
        relu_inplace(y)
        return y.reshape(x.shape), None
    M = x2.shape[0]
    threads = threads if x2.size >= THREADED_MIN else 1  # small maps: one thread is faster
    mu = sum_in_parts(lambda s, e: colsum(x2[s:e]), M, threads) * (1.0 / M)  # (C,)
    xc = np.empty_like(x2)  # (M, C) centred, as layers.batchnorm_forward

    def centre(s, e):
        np.subtract(x2[s:e], mu, out=xc[s:e])
        return np.einsum("mc,mc->c", xc[s:e], xc[s:e])

    var_b = sum_in_parts(centre, M, threads) * (1.0 / M)  # (C,) biased variance
    rstd = 1.0 / np.sqrt(var_b + eps)  # (C,)
    scale = gamma * rstd
    y = np.empty_like(x2)

    def normalize(s, e):  # y = xhat * gamma + beta, then the ReLU
        np.multiply(xc[s:e], scale, out=y[s:e])
        y[s:e] += beta
        relu_inplace(y[s:e])

    in_parts(normalize, M, threads)
    mean *= 1.0 - momentum
    mean += momentum * mu
    var *= 1.0 - momentum
    var += (momentum * M / max(M - 1, 1)) * var_b
    return y.reshape(x.shape), (xc, y, gamma, rstd, x.shape, threads)


def bn_relu_backward(da, cache, grads=None, need_dx=True):
    """da (..., C) -> dx (..., C); fills grads["gamma"], grads["beta"]: layers.batchnorm_dx
    on rows masked by the ReLU, in the forward pass's parts."""
    xc, y, gamma, rstd, shape, threads = cache
    M = xc.shape[0]
    da2 = da.reshape(xc.shape)
    dy = np.empty_like(xc)  # (M, C) through the ReLU

    def mask(s, e):
        np.multiply(da2[s:e], y[s:e] > 0, out=dy[s:e])
        return np.stack(batchnorm_sums(dy[s:e], xc[s:e]))

    dbeta, dgamma = sum_in_parts(mask, M, threads)  # (C,) each: sum(dy), sum(dy * xc)
    dgamma *= rstd  # sum(dy * xhat)
    put(grads, "beta", dbeta)
    put(grads, "gamma", dgamma)
    if not need_dx:
        return None
    dx = np.empty_like(xc)
    in_parts(lambda s, e: batchnorm_input_grad(dy[s:e], xc[s:e], gamma, rstd, dbeta, dgamma, M,
                                               out=dx[s:e]), M, threads)
    return dx.reshape(shape)
