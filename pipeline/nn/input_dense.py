"""The dense layer that reads the data (an MLP's first layer): in training it leaves out of its
matrix products the input columns that hold one value across the batch.

In a batch of 128 MNIST images about a third of the 784 pixels are blank in every image (the
borders, more of them than are blank in the whole training set). Such a column j holds one value
c_j in every row, so its share of z = x @ w is the same row vector c_j w[j] for every image, and
its weight gradient x[:, j]^T dz is c_j times the bias gradient. With K the varying columns and
C the constant ones:

    z       = x[:, K] @ w[K] + (c @ w[C] + b)
    dw[K]   = x[:, K]^T @ dz
    dw[C]   = c (outer) db,   db = the column sums of dz

the same mathematics as `layers.dense_*` (sums round in another order: last-bit changes), with
both products a third smaller on MNIST; tests/test_nn_input_dense.py checks it against them.
Inference keeps the plain product, so a row's prediction never depends on the rows beside it.
`plan.make_plan` uses it for a dense layer that only flatten layers separate from the input.
"""

from __future__ import annotations

import numpy as np

from pipeline.nn.layers import colsum, dense_backward, dense_forward, put

MIN_CONSTANT = 0.125  # share of constant columns below which the plain product is kept: the
# gathers cost about what an eighth of the columns saves (python scripts/experiments/input_dense.py)


def input_dense_forward(x, w, b, train=True, rng=None):
    """x (N, D_in), w (D_in, D_out), b (D_out,) -> z (N, D_out), as `layers.dense_forward`."""
    if not train:
        return dense_forward(x, w, b)
    # (D_in,) one value down the batch (a NaN counts as varying: it never equals itself)
    constant = np.logical_and.reduce(x == x[0], axis=0) if x.shape[0] > 1 else None
    if constant is None or constant.mean() < MIN_CONSTANT:
        return dense_forward(x, w, b)[0], (x, w, None)
    keep, const = np.flatnonzero(~constant), np.flatnonzero(constant)
    xk, c = x[:, keep], x[0, const]  # (N, K), (D_in - K,)
    z = xk @ np.take(w, keep, axis=0)  # (N, D_out)
    z += c @ np.take(w, const, axis=0) + b
    return z, (xk, w, (keep, const, c))


def input_dense_backward(dz, cache, grads=None, need_dx=True):
    """dz (N, D_out) -> dx or None; grads "w", "b", as `layers.dense_backward`."""
    xk, w, split = cache  # split: None for the plain product
    if split is None:
        return dense_backward(dz, (xk, w), grads, need_dx)
    keep, const, c = split
    db = colsum(dz)  # (D_out,)
    dw = grads.get("w") if grads is not None else None
    if dw is None:  # no buffer of the caller's to write into
        dw = np.empty_like(w)  # every row is written below
        put(grads, "w", dw)
    dw[const] = np.multiply.outer(c, db)
    dw[keep] = xk.T @ dz
    put(grads, "b", db)
    return dz @ w.T if need_dx else None
