"""The fast kernels (layers.py, optim.py) agree with the plain versions in nn/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.nn import layers as L
from pipeline.nn import reference as R
from pipeline.nn.optim import Optimizer


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(1, 3), (257, 5), (4096, 64)])
def test_colsum_is_the_column_sum(rng, shape):
    # the matrix-vector column sum equals x.sum(axis=0), in float32
    x = rng.standard_normal(shape).astype(np.float32)
    fast = L.colsum(x)
    assert fast.dtype == np.float32 and fast.shape == (shape[1],)
    np.testing.assert_allclose(fast, R.colsum(x), rtol=1e-4, atol=1e-4 * np.sqrt(shape[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_matches_the_plain_version(rng, dtype):
    # forward values and backward routing equal the window-argmax version, ties included
    x = rng.integers(-3, 4, size=(3, 6, 8, 5)).astype(dtype)  # small integers: many ties
    out, cache = L.maxpool_forward(x)
    np.testing.assert_array_equal(out, R.maxpool_forward(x))
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(L.maxpool_backward(dout, cache), R.maxpool_backward(dout, x))
    eval_out, _ = L.maxpool_forward(x, train=False)
    np.testing.assert_array_equal(eval_out, out)


def test_plain_maxpool_sends_each_window_gradient_once(rng):
    # in the plain version too, each window's gradient lands on exactly one input
    x = rng.integers(0, 2, size=(2, 4, 4, 3)).astype(np.float64)
    dx = R.maxpool_backward(np.ones((2, 2, 2, 3)), x)
    assert dx.sum() == 2 * 2 * 2 * 3 and set(np.unique(dx)) <= {0.0, 1.0}


@pytest.mark.parametrize("pad,k,bias", [(0, 5, False), (1, 3, True), (2, 5, True)])
def test_conv_im2col_matches_the_direct_sum(rng, pad, k, bias):
    # im2col + one matrix product equals the sum over the kernel, one output pixel at a time
    x = rng.standard_normal((2, 9, 7, 3))
    w = rng.standard_normal((k, k, 3, 4))
    b = rng.standard_normal(4) if bias else None
    np.testing.assert_allclose(L.conv2d_forward(x, w, b, pad)[0], R.conv2d_forward(x, w, b, pad),
                               rtol=1e-12, atol=1e-12)


def _run(name, plain, steps=25, n=50, n_decay=30, wd=0.0, lr=1e-2, seed=0):
    """`steps` steps of the fast optimizer and of its plain twin on the same gradients."""
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(n).astype(np.float32)
    opt = Optimizer(name, n, n_decay, weight_decay=wd)
    fast = theta0.copy()
    slow, state = theta0.astype(np.float64), {}
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 1e2], n)).astype(np.float32)
        opt.step(fast, g.copy(), lr)
        slow, state = plain(slow, g.astype(np.float64), state, t, lr, wd, n_decay)
    return fast, slow


def _adam(decoupled):
    def plain(theta, g, state, t, lr, wd, n_decay):
        m, v = state.get("m", np.zeros_like(theta)), state.get("v", np.zeros_like(theta))
        theta, m, v = R.adam_step(theta, g, m, v, t, lr, weight_decay=wd, decoupled=decoupled,
                                  n_decay=n_decay)
        return theta, {"m": m, "v": v}
    return plain


@pytest.mark.parametrize("name,decoupled,wd", [("adam", False, 0.0), ("adam", False, 0.1),
                                               ("adamw", True, 0.1)])
def test_fused_adam_matches_the_textbook_adam(name, decoupled, wd):
    # the in-place Adam/AdamW with folded bias corrections follows the textbook formulas,
    # weight decay on the first n_decay entries only, over gradients of very different scales
    fast, slow = _run(name, _adam(decoupled), wd=wd)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


def test_adam_and_adamw_differ_when_decay_is_on():
    # coupled L2 and decoupled decay are different updates (the comparison above can tell them)
    a, _ = _run("adam", _adam(False), wd=0.1)
    w, _ = _run("adamw", _adam(True), wd=0.1)
    assert np.abs(a - w).max() > 1e-3


def test_momentum_and_sgd_match_the_plain_steps():
    # momentum (PyTorch form, v <- mu v + g) and plain SGD follow their one-line formulas
    def plain_momentum(theta, g, state, t, lr, wd, n_decay):
        theta, v = R.momentum_step(theta, g, state.get("v", np.zeros_like(theta)), lr)
        return theta, {"v": v}

    def plain_sgd(theta, g, state, t, lr, wd, n_decay):
        return R.sgd_step(theta, g, lr), state

    for name, plain in (("momentum", plain_momentum), ("sgd", plain_sgd)):
        fast, slow = _run(name, plain, lr=1e-3)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
