"""conv -> BatchNorm -> ReLU as one step, for convolutions with a short im2col row (K = k*k*cin
at most K_MAX: the first layer, K = 9 for 3x3 on one channel). `plan.make_plan` runs it where a
spec has conv (no bias) -> bn -> act relu; tests/test_nn_fused_first.py checks it against the
three layers of layers.py.

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

from pipeline.nn.fused import _chunk, in_parts, relu_inplace
from pipeline.nn.layers import BN_EPS, colsum, conv_input_grad, put

K_MAX = 32  # im2col depths up to which the step is used. Fused / unfused time of a training
# step's block at batch 128, 32 filters, one thread (python scripts/fused_first_bench.py
# [--dx], 2026-12-02, load 1.4): K = 9 0.40 (0.72 with the input gradient), 25 0.62 (0.93),
# 27 0.70 (0.89), 36 0.87 (0.86), 45 (1.02), 49 0.93 (1.10), 72 1.06 (1.27)


def fusable(trio):
    """True when the spec layers `trio` are conv (no bias) -> bn -> act relu with k*k*cin <=
    K_MAX: the layers `conv_bn_relu_*` stand for."""
    if len(trio) < 3:
        return False
    c, bn, a = trio[:3]
    return (c["type"] == "conv" and not c.get("bias", True) and bn["type"] == "bn"
            and a["type"] == "act" and a.get("fn") == "relu"
            and c["k"] * c["k"] * c["cin"] <= K_MAX)


def conv_bn_relu_forward(x, w, gamma, beta, mean, var, pad=0, train=True, rng=None,
                         momentum=0.1, eps=BN_EPS, threads=1):
    """x (N, H, W, C), w (kh, kw, C, F), BatchNorm's gamma, beta, running mean, var (F,) ->
    relu(batchnorm(conv2d(x, w))) (N, Ho, Wo, F), stride 1, zero padding `pad`. In train mode
    batch statistics, and `mean`, `var` update in place as layers.batchnorm_forward does."""
    N, H, W, C = x.shape
    kh, kw, _, F = w.shape
    K, dt = kh * kw * C, x.dtype
    m = colsum(x.reshape(-1, C)) * (1.0 / (N * H * W)) if train else np.zeros(C, dt)  # (C,)
    xs = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x.copy()
    xs -= m  # (N, Hp, Wp, C), zeros of the padding included: X' = X - m per column
    Ho, Wo = xs.shape[1] - kh + 1, xs.shape[2] - kw + 1
    Q = Ho * Wo
    cols = {}  # first image of a chunk -> its [X', 1]^T (K+1, images*Ho*Wo), kept for backward
    out = np.empty((N, Q, F), dtype=dt)
    nb = _chunk(Q * (K + 1 + F) * dt.itemsize)  # images per chunk
    w2 = w.reshape(K, F).astype(np.float64)  # (K, F)
    mK = np.tile(m.astype(np.float64), kh * kw)  # (K,) the shift of each column

    def columns_part(s0, e0):  # im2col of the part's images, and their [X', 1]^T [X', 1]
        gram = np.zeros((K + 1, K + 1))  # float64: the chunks' sums added exactly enough
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            # transposed, one row per kernel tap: each copy runs along image rows (Wo floats
            # for one channel), 4x faster than im2col's (rows, K) layout for a few channels
            c = cols[s] = np.empty((K + 1, e - s, Ho, Wo), dtype=dt)
            for i in range(kh):
                for j in range(kw):
                    for ch in range(C):
                        c[(i * kw + j) * C + ch] = xs[s:e, i : i + Ho, j : j + Wo, ch]
            c[K] = 1.0
            if train:
                c2 = c.reshape(K + 1, -1)  # (K+1, (e-s)*Q)
                gram += c2 @ c2.T  # (K+1, K+1)
        return gram

    grams = in_parts(columns_part, N, threads)
    if train:
        Pn = N * Q
        gram = grams[0]
        for more in grams[1:]:  # in part order
            gram += more
        xbar = gram[K, :K] / Pn  # (K,) column means of X'
        S = gram[:K, :K] / Pn - np.outer(xbar, xbar)  # (K, K) Cov(X), biased
        mz = xbar @ w2  # (F,) mean of X' w
        var_b = np.maximum(np.einsum("kf,kl,lf->f", w2, S, w2), 0.0)  # (F,) biased var of z
        rstd = 1.0 / np.sqrt(var_b + eps)  # (F,)
        s_ = gamma.astype(np.float64) * rstd  # (F,)
        wf = np.vstack([w2 * s_, beta - mz * s_]).astype(dt)  # (K+1, F) folded weights
        mean *= 1.0 - momentum
        mean += momentum * (mz + mK @ w2).astype(dt)  # the batch mean of z = X' w + mK w
        var *= 1.0 - momentum
        var += (momentum * Pn / max(Pn - 1, 1)) * var_b.astype(dt)  # unbiased, as PyTorch
    else:
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)  # (F,)
        wf = np.vstack([w2 * scale, beta - mean * scale]).astype(dt)

    def output_part(s0, e0):  # one product per chunk, the ReLU while it is in cache
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            o = out[s:e]
            np.matmul(cols[s].reshape(K + 1, -1).T, wf, out=o.reshape(-1, F))
            relu_inplace(o.reshape(e - s, Q * F))

    in_parts(output_part, N, threads)
    out = out.reshape(N, Ho, Wo, F)
    if not train:
        return out, None
    return out, (cols, nb, out, w, S, xbar, mz, gamma, rstd, x.shape, pad, threads)


def conv_bn_relu_backward(da, cache, grads=None, need_dx=True):
    """da (N, Ho, Wo, F) -> dx (N, H, W, C) or None; fills grads "w", "gamma", "beta"."""
    cols, nb, y, w, S, xbar, mz, gamma, rstd, x_shape, pad, threads = cache
    N, Ho, Wo, F = y.shape
    kh, kw, C, _ = w.shape
    K, Q, dt = kh * kw * C, Ho * Wo, da.dtype
    Pn = N * Q
    da3, y3 = da.reshape(N, Q, F), y.reshape(N, Q, F)

    def masked(s, e, dy, pos):  # dy[:e-s] = da * (y > 0) for images s:e
        np.greater(y3[s:e], 0.0, out=pos[: e - s])
        return np.multiply(da3[s:e], pos[: e - s], out=dy[: e - s])

    def buffers(s0, e0):
        m = min(nb, e0 - s0)
        return np.empty((m, Q, F), dtype=dt), np.empty((m, Q, F), dtype=bool)

    def products_part(s0, e0):  # [X', 1]^T dy over the part's images
        dy, pos = buffers(s0, e0)
        acc = np.zeros((K + 1, F))  # float64
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            d = masked(s, e, dy, pos)
            acc += cols[s].reshape(K + 1, -1) @ d.reshape(-1, F)  # (K+1, F)
        return acc

    accs = in_parts(products_part, N, threads)
    acc = accs[0]
    for more in accs[1:]:  # in part order
        acc += more
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
    sd = s_.astype(dt)
    dx = np.empty(x_shape, dtype=dt)

    def input_grad_part(s0, e0):  # dz = s dy - [X', 1] V, then the conv's input gradient
        dy, pos = buffers(s0, e0)
        dz = np.empty((e0 - s0, Q, F), dtype=dt)
        for s in range(s0, e0, nb):
            e = min(s + nb, e0)
            d = masked(s, e, dy, pos)
            z = dz[s - s0 : e - s0]
            np.matmul(cols[s].reshape(K + 1, -1).T, V, out=z.reshape(-1, F))
            np.negative(z, out=z)
            d *= sd
            z += d
        conv_input_grad(dz.reshape(e0 - s0, Ho, Wo, F), w, (e0 - s0, *x_shape[1:]), pad,
                        out=dx[s0:e0])

    in_parts(input_grad_part, N, threads)
    return dx
