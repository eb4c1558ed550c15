"""conv -> BatchNorm -> ReLU as one step, for convolutions with a short im2col row (K = k*k*cin
at most K_MAX: the first layer, K = 9 for 3x3 on one channel). `plan.make_plan` runs it where a
spec has conv (no bias) -> bn -> act relu, and `conv_relu_*` where it has conv -> act relu (the
inference plan, whose convs carry their BatchNorm folded in); tests/test_nn_fused_first.py
checks both against the layers of layers.py.

BatchNorm's batch statistics come from the im2col columns X (P, K) instead of passes over the
conv output z = X w (P, F), which for the first layer is 3.6x the size of X:
    mean_z = xbar w,    var_z[f] = w[:, f]^T S w[:, f],    S = Cov(X) (K x K, biased),
so the normalization folds into the weights and one matrix product gives the output:
    y = relu(X (w s) + beta - mean_z s),    s = gamma * rstd,  rstd = 1/sqrt(var_z + eps).
X carries a column of ones (the bias row of the folded weights), so X^T X holds the column sums
too, and X^T dy in the backward pass holds dbeta. X is stored transposed, one row per kernel tap,
in chunks of images small enough to stay in cache from the copy to the product. The columns
are of the input minus its per-channel mean (which leaves Cov(X) and z - mean_z unchanged):
near-centred columns keep S = X^T X / P - xbar^T xbar free of cancellation for inputs with a
large mean (raw 0..255 pixels).

Backward, with dy = da * (y > 0), G = X^T dy (K, F), dbeta = colsum(dy):
    dgamma = rstd * (sum_k w * G - mean_z' dbeta)         (mean_z' = xbar w of the shifted X)
    dw = s * (G - xbar^T dbeta - rstd * (S w) * dgamma)   (X^T of BatchNorm's dz, in K x F)
and only when the input gradient is needed (not for the first layer) the conv's dz itself,
    dz = s * dy - X V,   V = [w (s rstd dgamma / P); s dbeta / P - mean_z' s rstd dgamma / P],
i.e. s * (dy - dbeta/P - xhat dgamma/P), into layers.conv_input_grad.

Exact in exact arithmetic; in float32 the sums round differently from the unfused layers'. The
images are split into fused.PARTS fixed parts (fused.in_parts) on `threads` threads, each in
cache-sized chunks; the moments and gradient sums are added in part order, so any thread count
gives the same bytes.
"""

from __future__ import annotations

import numpy as np

from pipeline.nn.fused import _chunk, in_parts, relu_inplace, sum_in_parts
from pipeline.nn.layers import BN_EPS, colsum, conv_input_grad, put

K_MAX = 32  # im2col depths up to which the steps are used. Fused / unfused time of a training
# step's block at batch 128, 32 filters, one thread (python scripts/fused_first_bench.py
# [--dx], 2026-12-02 02:42 UTC, load 1.0): K = 9 0.38 (0.73 with the input gradient), 18 0.47,
# 25 0.57 (0.90), 27 0.64 (0.91), 36 0.75 (0.96), 45 0.75 (0.99), 49 0.81 (1.12), 72 1.08


def fused_length(layers):
    """How many of the spec layers `layers` (the next three) one step of this module runs:
    3 for conv (no bias) -> bn -> act relu, 2 for conv -> act relu, each with k*k*cin <= K_MAX;
    else 0."""
    c = layers[0] if layers else {}
    if c.get("type") != "conv" or c["k"] * c["k"] * c["cin"] > K_MAX:
        return 0
    nxt = [(ly["type"], ly.get("fn")) for ly in layers[1:3]]
    if nxt[:1] == [("act", "relu")]:
        return 2
    if nxt == [("bn", None), ("act", "relu")] and not c.get("bias", True):
        return 3
    return 0


def _columns(x, w_shape, pad, shift, threads, moments):
    """x (N, H, W, C), w_shape (kh, kw, C, F) -> (cols, nb, Ho, Wo, gram): cols[s] = [X', 1]^T
    (K+1, images*Ho*Wo) for the chunk of nb images from s, X' the im2col rows of x - shift
    (shift (C,) or None, the padding's zeros included); with `moments`, gram = [X', 1]^T [X', 1]
    (K+1, K+1) float64, else None."""
    N, H, W, C = x.shape
    kh, kw, _, F = w_shape
    K, dt = kh * kw * C, x.dtype
    xs = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    if shift is not None:
        xs = xs - shift if xs is x else np.subtract(xs, shift, out=xs)  # (N, Hp, Wp, C)
    Ho, Wo = xs.shape[1] - kh + 1, xs.shape[2] - kw + 1
    cols = {}  # chunk's first image -> its columns, kept for the backward pass
    nb = _chunk(Ho * Wo * (K + 1 + F) * dt.itemsize)  # images per chunk: columns and output
    sN, sH, sW, sC = xs.strides
    # transposed im2col as a no-copy view, one row per kernel tap and channel:
    # win[i, j, ch, n, a, b] = xs[n, a + i, b + j, ch]; its copy runs along image rows (Wo
    # floats for one channel), 2x faster than into im2col's (rows, K) layout for a few channels
    win = np.lib.stride_tricks.as_strided(xs, (kh, kw, C, N, Ho, Wo), (sH, sW, sC, sN, sH, sW),
                                          writeable=False)

    def columns_part(s0, e0):
        gram = np.zeros((K + 1, K + 1)) if moments else None  # float64: chunk sums added
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            c = cols[s] = np.empty((K + 1, e - s, Ho, Wo), dtype=dt)
            np.copyto(c[:K].reshape(kh, kw, C, e - s, Ho, Wo), win[:, :, :, s:e])
            c[K] = 1.0
            if moments:  # rows 0..K-1 of [X', 1]^T [X', 1]; the last is their column sums
                c2 = c.reshape(K + 1, -1)  # (K+1, (e-s)*Ho*Wo)
                gram[:K] += np.dot(c2[:K], c2.T)  # (K, K+1): a GEMM (c2 @ c2.T would be a SYRK, 3x
                # slower at these shapes: python scripts/fused_first_bench.py --gram)
        if moments:  # the ones row: the column sums of X' (as its products), and the count
            gram[K, :K] = gram[:K, K]
            gram[K, K] = (e0 - s0) * Ho * Wo
        return gram

    if moments:
        return cols, nb, Ho, Wo, sum_in_parts(columns_part, N, threads)  # in part order
    in_parts(columns_part, N, threads)
    return cols, nb, Ho, Wo, None


def _affine_relu(cols, nb, wf, N, Ho, Wo, threads):
    """-> relu([X', 1] wf) (N, Ho, Wo, F): one product per chunk, the ReLU while in cache."""
    F = wf.shape[1]
    out = np.empty((N, Ho * Wo, F), dtype=wf.dtype)

    def output_part(s0, e0):
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            o = out[s:e]
            np.matmul(cols[s].reshape(wf.shape[0], -1).T, wf, out=o.reshape(-1, F))
            relu_inplace(o)

    in_parts(output_part, N, threads)
    return out.reshape(N, Ho, Wo, F)


def _masked(da, y, s, e, dy, pos):
    """dy[:e-s] = da * (y > 0) for images s:e (through the ReLU), in the buffers dy, pos."""
    np.greater(y[s:e], 0.0, out=pos[: e - s])
    return np.multiply(da[s:e], pos[: e - s], out=dy[: e - s])


def _buffers(nb, s0, e0, y):
    m = min(nb, e0 - s0)
    return np.empty((m, *y.shape[1:]), dtype=y.dtype), np.empty((m, *y.shape[1:]), dtype=bool)


def _products(da, y, cols, nb, threads):
    """-> [X', 1]^T dy (K+1, F) float64, dy = da * (y > 0), summed in part order."""
    F = y.shape[-1]

    def products_part(s0, e0):
        dy, pos = _buffers(nb, s0, e0, y)
        acc = None
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            d = _masked(da, y, s, e, dy, pos)
            c2 = cols[s].reshape(len(cols[s]), -1)  # (K+1, (e-s)*Ho*Wo)
            # (K+1, F); np.dot, not @: two threads' few-row matmuls ran no faster than one's
            # (python scripts/experiments/matmul_threads.py)
            more = np.dot(c2, d.reshape(-1, F))
            acc = more.astype(np.float64) if acc is None else acc + more
        return acc

    return sum_in_parts(products_part, y.shape[0], threads)  # in part order


def _input_grad(da, y, cols, nb, w, x_shape, pad, threads, V=None, sd=None):
    """-> dx (N, H, W, C), the conv's input gradient for dz = dy (V None) or dz = sd * dy -
    [X', 1] V (V (K+1, F), sd (F,): BatchNorm's backward), dy = da * (y > 0)."""
    dx = np.empty(x_shape, dtype=da.dtype)

    def input_grad_part(s0, e0):
        dy, pos = _buffers(nb, s0, e0, y)  # (dy unused when dz = dy)
        dz = np.empty((e0 - s0, *y.shape[1:]), dtype=da.dtype)  # (e0-s0, Ho, Wo, F)
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            z = dz[s - s0 : e - s0]
            if V is None:
                _masked(da, y, s, e, z, pos)
                continue
            d = _masked(da, y, s, e, dy, pos)
            np.matmul(cols[s].reshape(V.shape[0], -1).T, V, out=z.reshape(-1, V.shape[1]))
            np.negative(z, out=z)
            d *= sd
            z += d
        conv_input_grad(dz, w, (e0 - s0, *x_shape[1:]), pad, out=dx[s0:e0])

    in_parts(input_grad_part, x_shape[0], threads)
    return dx


# ----------------------------------------------------------------------------------------------
# conv -> BatchNorm -> ReLU


def conv_bn_relu_forward(x, w, gamma, beta, mean, var, pad=0, train=True, rng=None,
                         momentum=0.1, eps=BN_EPS, threads=1):
    """x (N, H, W, C), w (kh, kw, C, F), BatchNorm's gamma, beta, running mean, var (F,) ->
    relu(batchnorm(conv2d(x, w))) (N, Ho, Wo, F), stride 1, zero padding `pad`. In train mode
    batch statistics, and `mean`, `var` update in place as layers.batchnorm_forward does."""
    N, H, W, C = x.shape
    kh, kw, _, F = w.shape
    K, dt = kh * kw * C, x.dtype
    w2 = w.reshape(K, F).astype(np.float64)  # (K, F)
    if not train:
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)  # (F,)
        wf = np.vstack([w2 * scale, beta - mean * scale]).astype(dt)
        cols, nb, Ho, Wo, _ = _columns(x, w.shape, pad, None, threads, False)
        return _affine_relu(cols, nb, wf, N, Ho, Wo, threads), None
    m = colsum(x.reshape(-1, C)) * (1.0 / (N * H * W))  # (C,) the shift: near-centred columns
    cols, nb, Ho, Wo, gram = _columns(x, w.shape, pad, m, threads, True)
    Pn = N * Ho * Wo
    xbar = gram[K, :K] / Pn  # (K,) column means of X'
    S = gram[:K, :K] / Pn - np.outer(xbar, xbar)  # (K, K) Cov(X), biased
    mz = xbar @ w2  # (F,) mean of X' w
    var_b = np.maximum(np.einsum("kf,kl,lf->f", w2, S, w2), 0.0)  # (F,) biased var of z
    rstd = 1.0 / np.sqrt(var_b + eps)  # (F,)
    s_ = gamma.astype(np.float64) * rstd  # (F,)
    wf = np.vstack([w2 * s_, beta - mz * s_]).astype(dt)  # (K+1, F) folded weights
    mK = np.tile(m.astype(np.float64), kh * kw)  # (K,) the shift of each column
    mean *= 1.0 - momentum
    mean += momentum * (mz + mK @ w2).astype(dt)  # the batch mean of z = X' w + mK w
    var *= 1.0 - momentum
    var += (momentum * Pn / max(Pn - 1, 1)) * var_b.astype(dt)  # unbiased, as PyTorch
    out = _affine_relu(cols, nb, wf, N, Ho, Wo, threads)
    return out, (cols, nb, out, w, S, xbar, mz, gamma, rstd, x.shape, pad, threads)


def conv_bn_relu_backward(da, cache, grads=None, need_dx=True):
    """da (N, Ho, Wo, F) -> dx (N, H, W, C) or None; fills grads "w", "gamma", "beta"."""
    cols, nb, y, w, S, xbar, mz, gamma, rstd, x_shape, pad, threads = cache
    N, Ho, Wo, F = y.shape
    kh, kw, C, _ = w.shape
    K, Pn, dt = kh * kw * C, N * Ho * Wo, da.dtype
    acc = _products(da, y, cols, nb, threads)
    G, dbeta = acc[:K], acc[K]  # (K, F) X'^T dy, (F,) colsum(dy)
    w2 = w.reshape(K, F).astype(np.float64)  # (K, F)
    s_ = gamma.astype(np.float64) * rstd  # (F,)
    dgamma = rstd * (np.einsum("kf,kf->f", w2, G) - mz * dbeta)  # (F,) sum(dy * xhat)
    dw = s_ * (G - np.outer(xbar, dbeta) - rstd * (S @ w2) * dgamma)  # (K, F)
    put(grads, "w", dw.reshape(kh, kw, C, F).astype(dt))
    put(grads, "gamma", dgamma.astype(dt))
    put(grads, "beta", dbeta.astype(dt))
    if not need_dx:
        return None
    t = s_ * rstd * dgamma / Pn  # (F,)
    V = np.vstack([w2 * t, s_ * dbeta / Pn - mz * t]).astype(dt)  # (K+1, F)
    return _input_grad(da, y, cols, nb, w, x_shape, pad, threads, V, s_.astype(dt))


# ----------------------------------------------------------------------------------------------
# conv -> ReLU (no statistics: the inference plan's first layer, BatchNorm folded into w, b)


def conv_relu_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1):
    """x (N, H, W, C), w (kh, kw, C, F), b (F,) or None -> relu(conv2d(x, w) + b)."""
    kh, kw, C, F = w.shape
    cols, nb, Ho, Wo, _ = _columns(x, w.shape, pad, None, threads, False)
    bias = np.zeros((1, F), dtype=x.dtype) if b is None else b.reshape(1, F)
    wf = np.vstack([w.reshape(-1, F), bias]).astype(x.dtype)  # (K+1, F)
    out = _affine_relu(cols, nb, wf, x.shape[0], Ho, Wo, threads)
    return out, ((cols, nb, out, w, x.shape, pad, threads, b is not None) if train else None)


def conv_relu_backward(da, cache, grads=None, need_dx=True):
    """da (N, Ho, Wo, F) -> dx (N, H, W, C) or None; fills grads "w" (and "b")."""
    cols, nb, y, w, x_shape, pad, threads, has_bias = cache
    acc = _products(da, y, cols, nb, threads)  # (K+1, F): [X^T dy; colsum(dy)]
    put(grads, "w", acc[:-1].reshape(w.shape).astype(da.dtype))
    if has_bias:
        put(grads, "b", acc[-1].astype(da.dtype))
    return _input_grad(da, y, cols, nb, w, x_shape, pad, threads) if need_dx else None


STEPS = {3: (conv_bn_relu_forward, conv_bn_relu_backward),  # fused_length -> kernel pair
         2: (conv_relu_forward, conv_relu_backward)}
