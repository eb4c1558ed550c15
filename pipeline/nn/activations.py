"""The activations as forward/backward pairs: forward(x) -> (a, cache), backward(da, cache) ->
dx, and `activation_forward`/`activation_backward`, the layer shape of all four (layers.py
re-exports them with the other layers)."""

from __future__ import annotations

import numpy as np


def relu_forward(x):
    # max(x, 0) against a row of zeros broadcast down x: the same values as np.maximum(x, 0.0),
    # but numpy's maximum against a scalar skips its SIMD loop: 12.4 vs 6.0 us at (128, 256)
    # (scripts/experiments/mlp_step_kernels.py, 2026-12-02)
    a = np.maximum(x, np.zeros(x.shape[-1:], dtype=x.dtype))
    return a, a


def relu_backward(da, a):
    dx = (a > 0).astype(da.dtype)  # = da * (a > 0) to the bit: a 0/1 mask in da's type, so
    dx *= da  # the product needs no bool -> float cast inside the ufunc (buffered, slower)
    return dx


def leaky_relu_forward(x, slope=0.01):
    a = np.where(x > 0, x, x * np.float32(slope))
    return a, (x > 0, slope)


def leaky_relu_backward(da, cache):
    pos, slope = cache
    return np.where(pos, da, da * np.float32(slope))


def tanh_forward(x):
    a = np.tanh(x)
    return a, a


def tanh_backward(da, a):
    return da * (1.0 - a * a)


def sigmoid_forward(x):
    a = np.empty_like(x)
    np.negative(x, out=a)
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)
    return a, a


def sigmoid_backward(da, a):
    return da * a * (1.0 - a)


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}


def activation_forward(x, fn="relu", train=True, rng=None):
    """x (...) -> ACTIVATIONS[fn](x) (...), the layer shape of the four activations."""
    a, cache = ACTIVATIONS[fn][0](x)
    return a, (fn, cache)


def activation_backward(da, cache, grads=None, need_dx=True):
    fn, c = cache
    return ACTIVATIONS[fn][1](da, c)
