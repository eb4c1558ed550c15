"""Plain versions of the fast kernels, written as the textbook writes them. Read these first.

The kernels in `layers.py` and `optim.py` are tuned for speed: Adam with its bias corrections
folded into two scalars and every operation in place, a max-pool that remembers the winning
offset as one byte, column sums as a matrix-vector product, convolution as one GEMM over an
im2col copy. Each function here computes the same thing the obvious way, in a few lines, and
`tests/test_nn_reference.py` checks that the fast version agrees with it. Nothing here is used
in training.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------
# Column sums (fast: layers.colsum)


def colsum(x2):
    """x2 (M, C) -> (C,): the sum of each column."""
    return x2.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# 2x2 max-pool, stride 2 (fast: layers.maxpool_forward / maxpool_backward)


def _windows(x):
    """x (N, H, W, C) -> (N, H/2, W/2, C, 4): the four values of each 2x2 window, in the order
    (0,0), (0,1), (1,0), (1,1)."""
    N, H, W, C = x.shape
    w = x.reshape(N, H // 2, 2, W // 2, 2, C)  # (N, H/2, di, W/2, dj, C)
    return w.transpose(0, 1, 3, 5, 2, 4).reshape(N, H // 2, W // 2, C, 4)


def maxpool_forward(x):
    """x (N, H, W, C) -> out (N, H/2, W/2, C): the largest value of each 2x2 window."""
    return _windows(x).max(axis=-1)


def maxpool_backward(dout, x):
    """dout (N, H/2, W/2, C), x the forward's input -> dx (N, H, W, C). The max is the only
    input that moved the output, so each window's gradient goes to it (to the first of equal
    values, so that it is passed on once) and the other three get 0."""
    N, H, W, C = x.shape
    win = _windows(x)  # (N, H/2, W/2, C, 4)
    onehot = np.eye(4, dtype=dout.dtype)[win.argmax(axis=-1)]  # (N, H/2, W/2, C, 4)
    dwin = onehot * dout[..., None]  # (N, H/2, W/2, C, 4)
    dx = dwin.reshape(N, H // 2, W // 2, C, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return dx.reshape(N, H, W, C)


# ----------------------------------------------------------------------------------------------
# Convolution, stride 1, zero padding (fast: layers.conv2d_forward, im2col + one GEMM)


def conv2d_forward(x, w, b, pad=0):
    """x (N, H, W, C), w (kh, kw, C, F), b (F,) or None -> z (N, Ho, Wo, F):
    z[n, i, j, f] = b[f] + sum_{di, dj, c} xp[n, i+di, j+dj, c] * w[di, dj, c, f],
    with xp the input padded by `pad` zeros. One output pixel at a time."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # (N, Hp, Wp, C)
    kh, kw, _, F = w.shape
    Ho, Wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    z = np.zeros((x.shape[0], Ho, Wo, F), dtype=np.result_type(x, w))  # (N, Ho, Wo, F)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, i:i + kh, j:j + kw, :]  # (N, kh, kw, C)
            z[:, i, j, :] = np.einsum("nabc,abcf->nf", patch, w)
    return z if b is None else z + b


# ----------------------------------------------------------------------------------------------
# Optimizer steps on a flat parameter vector (fast: optim.py, in place with scratch buffers).
# Each returns the new values instead of writing into its arguments.


def sgd_step(theta, grad, lr):
    """theta <- theta - lr * grad."""
    return theta - lr * grad


def momentum_step(theta, grad, velocity, lr, mu=0.9):
    """v <- mu v + grad; theta <- theta - lr v. -> (theta, v)."""
    velocity = mu * velocity + grad
    return theta - lr * velocity, velocity


def adam_step(theta, grad, m, v, t, lr, *, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled=False, n_decay=None):
    """One Adam step (Kingma & Ba 2015), t = 1, 2, ... -> (theta, m, v).

    m <- b1 m + (1 - b1) g                (a running mean of the gradient)
    v <- b2 v + (1 - b2) g^2              (a running mean of its square)
    mhat = m / (1 - b1^t), vhat = v / (1 - b2^t)   (both start at 0: undo that bias)
    theta <- theta - lr mhat / (sqrt(vhat) + eps)

    Weight decay applies to theta[:n_decay] (the weight matrices; all of theta when None):
    coupled (Adam with L2) adds wd * theta to g; decoupled (AdamW, Loshchilov & Hutter 2019)
    shrinks theta by (1 - lr wd) outside the adaptive scaling."""
    d = theta.size if n_decay is None else n_decay
    decay = np.zeros_like(theta)
    decay[:d] = weight_decay
    g = grad if decoupled else grad + decay * theta
    if decoupled:
        theta = theta * (1 - lr * decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    return theta - lr * mhat / (np.sqrt(vhat) + eps), m, v


__all__ = ["adam_step", "colsum", "conv2d_forward", "maxpool_backward", "maxpool_forward",
           "momentum_step", "sgd_step"]
