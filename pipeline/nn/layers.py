"""Layers as forward/backward function pairs: Dense, Conv2D, MaxPool, BatchNorm, Dropout, Flatten
and the activations, each vectorized over the batch in float32.

One shape for every layer, so `model.py` calls them all the same way:
- `*_forward(x, <parameters>, train=True, rng=None, <settings>) -> (out, cache)`: the parameters
  by their names in the model ("w", "b", "gamma", ...), the settings by their names in the spec
  ("pad", "p", "momentum", "fn");
- `*_backward(dout, cache, grads=None, need_dx=True) -> dx`: parameter gradients go into the
  dict `grads` by the same names, into the caller's arrays when it holds them (so the training
  loop allocates nothing for them per step), as new arrays when not; dx is None when not needed.
Images are NHWC. Wiring layers into a network lives in `model.py`, faster fused pairs in
`fused.py`; nothing here keeps state between calls except what the caller passes in (BatchNorm
running stats).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from pipeline.nn.activations import (  # the activations, re-exported: layers.relu_forward, ...
    ACTIVATIONS,  # noqa: F401
    activation_backward,  # noqa: F401
    activation_forward,  # noqa: F401
    leaky_relu_backward,  # noqa: F401
    leaky_relu_forward,  # noqa: F401
    relu_backward,  # noqa: F401
    relu_forward,  # noqa: F401
    sigmoid_backward,  # noqa: F401
    sigmoid_forward,  # noqa: F401
    tanh_backward,  # noqa: F401
    tanh_forward,  # noqa: F401
)


def put(grads, name, value):
    """grads[name] = value, copied into the caller's array when grads already holds one."""
    if grads is None:
        return
    if grads.get(name) is None:
        grads[name] = value
    else:
        grads[name][...] = value


def _buffer(grads, name):
    return None if grads is None else grads.get(name)


# ----------------------------------------------------------------------------------------------
# Dense: z = x @ w + b


def dense_forward(x, w, b, train=True, rng=None):
    """x (N, D_in), w (D_in, D_out), b (D_out,) -> z (N, D_out)."""
    z = x @ w  # (N, D_out)
    z += b
    return z, (x, w)


def dense_backward(dz, cache, grads=None, need_dx=True):
    """dz (N, D_out) -> dx (N, D_in) or None; grads "w" (D_in, D_out), "b" (D_out,)."""
    x, w = cache
    put(grads, "w", np.matmul(x.T, dz, out=_buffer(grads, "w")))  # (D_in, D_out)
    put(grads, "b", colsum(dz))  # (D_out,)
    return dz @ w.T if need_dx else None  # (N, D_in)


# ----------------------------------------------------------------------------------------------
# Conv2D (NHWC, stride 1, zero padding `pad`): im2col over the kh*kw kernel offsets, one GEMM.


def im2col(xp, kh, kw):
    """xp (N, Hp, Wp, C) padded input -> cols (N, Ho, Wo, kh, kw, C): one copy of the no-copy
    sliding-window view (5x faster than kh*kw slice copies with C-float inner runs)."""
    N, Hp, Wp, C = xp.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    win = np.lib.stride_tricks.sliding_window_view(
        xp, (kh, kw), axis=(1, 2)
    )  # (N, Ho, Wo, C, kh, kw)
    cols = np.empty((N, Ho, Wo, kh, kw, C), dtype=xp.dtype)  # (N, Ho, Wo, kh, kw, C)
    np.copyto(cols, win.transpose(0, 1, 2, 4, 5, 3))
    return cols


def colsum(x2):
    """x2 (M, C) -> (C,) sums over rows as a matrix-vector product (several times faster than
    x2.sum(axis=0), which numpy reduces with a strided inner loop); np.dot, not @, whose vector
    @ matrix on two threads at once ran slower than in turn (python
    scripts/experiments/matmul_threads.py)."""
    n = x2.shape[0]
    return np.dot(_ones(n, x2.dtype) if n <= ONES_CACHED else np.ones(n, dtype=x2.dtype), x2)


ONES_CACHED = 1 << 16  # colsum keeps its ones for up to this many rows (32 lengths: <= 8 MB)


@lru_cache(maxsize=32)
def _ones(n, dtype):
    """A read-only (n,) vector of ones, made once per length: colsum runs a few times a step
    (3.6 -> 3.0 us at (128, 256), scripts/experiments/mlp_step_kernels.py)."""
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def col2im(dblocks, Hp, Wp, out=None):
    """dblocks (kh, kw, N, Ho, Wo, C), the input gradient per kernel offset -> dxp (N, Hp, Wp, C)
    (into `out` when given): one slice-add per offset, each reading a contiguous block."""
    kh, kw, N, Ho, Wo, C = dblocks.shape
    if out is None:
        dxp = np.zeros((N, Hp, Wp, C), dtype=dblocks.dtype)  # (N, Hp, Wp, C)
    else:
        dxp = out
        dxp[...] = 0
    for i in range(kh):
        for j in range(kw):
            dxp[:, i : i + Ho, j : j + Wo, :] += dblocks[i, j]
    return dxp


def conv2d_forward(x, w, b=None, pad=0, train=True, rng=None):
    """x (N, H, W, C), w (kh, kw, C, F), b (F,) or None -> z (N, Ho, Wo, F), stride 1."""
    N, H, W, C = x.shape
    kh, kw, _, F = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x  # (N, Hp, Wp, C)
    cols = im2col(xp, kh, kw)  # (N, Ho, Wo, kh, kw, C)
    Ho, Wo = cols.shape[1], cols.shape[2]
    cols2 = cols.reshape(N * Ho * Wo, kh * kw * C)  # (N*Ho*Wo, K), a view
    z = cols2 @ w.reshape(kh * kw * C, F)  # (N*Ho*Wo, F)
    if b is not None:
        z += b
    return z.reshape(N, Ho, Wo, F), (cols2, w, x.shape, pad, b is not None)


def conv2d_backward(dz, cache, grads=None, need_dx=True):
    """dz (N, Ho, Wo, F) -> dx (N, H, W, C) or None; grads "w" (kh, kw, C, F), "b" (F,)."""
    cols2, w, x_shape, pad, has_bias = cache
    kh, kw, C, F = w.shape
    dz2 = dz.reshape(-1, F)  # (N*Ho*Wo, F)
    dw = _buffer(grads, "w")
    dw2 = None if dw is None else dw.reshape(kh * kw * C, F)
    put(grads, "w", np.matmul(cols2.T, dz2, out=dw2).reshape(kh, kw, C, F))  # (kh, kw, C, F)
    if has_bias:
        put(grads, "b", colsum(dz2))  # (F,)
    return conv_input_grad(dz, w, x_shape, pad) if need_dx else None


def conv_input_grad(dz, w, x_shape, pad, out=None):
    """dz (N, Ho, Wo, F), w (kh, kw, C, F) -> dx (N, H, W, C) of a stride-1 convolution (into
    `out` when given).

    The gradient of each kernel offset's input window comes out as its own contiguous block:
    (N*Ho*Wo, F) @ (kh*kw, F, C) -> (kh*kw, N*Ho*Wo, C), one batched matrix product; col2im then
    adds each block at its offset."""
    N, H, W, C = x_shape
    kh, kw, _, F = w.shape
    Ho, Wo = dz.shape[1], dz.shape[2]
    wT = np.ascontiguousarray(w.reshape(kh * kw, C, F).transpose(0, 2, 1))  # (kh*kw, F, C)
    dblocks = np.matmul(dz.reshape(-1, F), wT)  # (kh*kw, N*Ho*Wo, C)
    dblocks = dblocks.reshape(kh, kw, N, Ho, Wo, C)
    if not pad:
        return col2im(dblocks, H, W, out)
    dx = col2im(dblocks, H + 2 * pad, W + 2 * pad)[:, pad : pad + H, pad : pad + W, :]
    if out is None:
        return dx  # (N, H, W, C)
    out[...] = dx
    return out


# ----------------------------------------------------------------------------------------------
# MaxPool 2x2, stride 2 (H and W must be even)


def maxpool_forward(x, train=True, rng=None):
    """x (N, H, W, C) -> out (N, H/2, W/2, C): elementwise max of the four strided sub-grids.
    In train mode the cache keeps which of the four won (the first on ties) as uint8 0..3."""
    N, H, W, C = x.shape
    assert H % 2 == 0 and W % 2 == 0, f"maxpool needs even H, W, got {H}x{W}"
    subs = (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    out = np.maximum(subs[0], subs[1])  # (N, H/2, W/2, C)
    np.maximum(out, subs[2], out=out)
    np.maximum(out, subs[3], out=out)
    if not train:
        return out, None
    # arg = 0 if s0 won, else 1 if s1 won, else 2 if s2 won, else 3 (ties go to the first)
    arg = np.not_equal(subs[2], out).view(np.uint8)  # (N, H/2, W/2, C)
    arg += 1
    arg *= np.not_equal(subs[1], out)
    arg += 1
    arg *= np.not_equal(subs[0], out)
    return out, (arg, x.shape)


def maxpool_backward(dout, cache, grads=None, need_dx=True):
    """dout (N, Ho, Wo, C) -> dx (N, H, W, C): each window's gradient goes to its max."""
    arg, shape = cache
    dx = np.empty(shape, dtype=dout.dtype)  # (N, H, W, C)
    for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        np.multiply(dout, arg == k, out=dx[:, i::2, j::2])
    return dx


# ----------------------------------------------------------------------------------------------
# BatchNorm over every axis but the last (N for dense, N,H,W for conv)


BN_EPS = 1e-5


def batchnorm_forward(x, gamma, beta, mean, var, train=True, rng=None, momentum=0.1, eps=BN_EPS):
    """x (..., C) -> y (..., C). In train mode uses batch stats and updates the running stats
    `mean`, `var` in place (running = (1-momentum)*running + momentum*batch); in eval mode uses
    them. Column sums are matrix-vector products (see colsum)."""
    running_mean, running_var = mean, var
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (M, C)
    if not train:
        scale = gamma / np.sqrt(running_var + eps)  # (C,)
        y = x2 * scale  # (M, C)
        y += beta - running_mean * scale
        return y.reshape(x.shape), None
    M = x2.shape[0]
    mu = colsum(x2) * (1.0 / M)  # (C,)
    xc = x2 - mu  # (M, C) centred; xhat = xc * rstd is never formed (a pass fewer)
    var = np.einsum("mc,mc->c", xc, xc) * (1.0 / M)  # (C,) biased variance
    rstd = 1.0 / np.sqrt(var + eps)  # (C,)
    y = xc * (gamma * rstd)  # (M, C) = xhat * gamma
    y += beta
    running_mean *= 1.0 - momentum
    running_mean += momentum * mu
    running_var *= 1.0 - momentum
    running_var += (momentum * M / max(M - 1, 1)) * var  # unbiased, as PyTorch
    return y.reshape(x.shape), (xc, gamma, rstd, x.shape)


def batchnorm_backward(dy, cache, grads=None, need_dx=True):
    """dy (..., C) -> dx (..., C); grads "gamma", "beta" (C,)."""
    xc, gamma, rstd, shape = cache
    return batchnorm_dx(dy.reshape(xc.shape), xc, gamma, rstd, grads).reshape(shape)


def batchnorm_dx(dy, xc, gamma, rstd, grads=None):
    """The BatchNorm backward on rows: dy (M, C), xc (M, C) the centred input -> dx (M, C);
    fills grads "gamma", "beta". Its two halves are shared with the fused BatchNorm + ReLU
    (nn/fused.py), which masks dy first and runs them on parts of the rows."""
    dbeta, dsum = batchnorm_sums(dy, xc)
    dgamma = dsum * rstd  # (C,) = sum(dy * xhat)
    put(grads, "beta", dbeta)
    put(grads, "gamma", dgamma)
    return batchnorm_input_grad(dy, xc, gamma, rstd, dbeta, dgamma, xc.shape[0])


def batchnorm_sums(dy, xc):
    """-> (sum(dy), sum(dy * xc)) over rows, (C,) each: what the BatchNorm backward needs."""
    return colsum(dy), np.einsum("mc,mc->c", dy, xc)


def batchnorm_input_grad(dy, xc, gamma, rstd, dbeta, dgamma, M, out=None):
    """dx (M', C) of the rows given, from the sums over all M rows (into `out` when given):
    dx = gamma*rstd * (dy - mean(dy) - xhat*mean(dy*xhat)), xhat = xc*rstd."""
    dx = np.multiply(xc, -rstd * dgamma / M, out=out)  # (M', C)
    dx += dy
    dx -= dbeta / M
    dx *= gamma * rstd
    return dx


# ----------------------------------------------------------------------------------------------
# Dropout (inverted: kept units are scaled by 1/(1-p) in training, identity in eval)


def dropout_forward(x, p, train=True, rng=None, mask=None):
    """x (...) -> out (...). `mask` (already scaled by 1/(1-p)) may be given to fix the draw."""
    if not train or p == 0.0:
        return x, None
    if mask is None:
        keep = rng.random(x.shape, dtype=np.float32) >= p  # (...)
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - p)
    return x * mask, mask


def dropout_backward(dout, mask, grads=None, need_dx=True):
    return dout if mask is None else dout * mask


# ----------------------------------------------------------------------------------------------
# Flatten


def flatten_forward(x, train=True, rng=None):
    """x (N, ...) -> (N, D), a view when x is contiguous."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:])), x.shape


def flatten_backward(dout, shape, grads=None, need_dx=True):
    return dout.reshape(shape)
