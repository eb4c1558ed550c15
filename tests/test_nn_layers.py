"""Gradient checks (float64 central differences, `pipeline.nn.gradcheck.numgrad`) for every
layer and the loss, plus the train/eval behaviour of BatchNorm and Dropout."""

import numpy as np
import pytest

from pipeline.nn import layers as L
from pipeline.nn.gradcheck import TOL, numgrad, rel_error
from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward


def close(a, b, tol=TOL):
    err = rel_error(a, b)
    assert err < tol, f"relative error {err}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dense_gradients(rng):
    # Dense: dx, dw, db match finite differences of sum(out * R)
    x, w, b = rng.normal(size=(4, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)
    R = rng.normal(size=(4, 3))

    def f():
        return np.sum(L.dense_forward(x, w, b)[0] * R)

    out, cache = L.dense_forward(x, w, b)
    g = {}
    dx = L.dense_backward(R, cache, g)
    close(dx, numgrad(f, x))
    close(g["w"], numgrad(f, w))
    close(g["b"], numgrad(f, b))


@pytest.mark.parametrize("pad,k", [(0, 3), (1, 3), (2, 5)])
def test_conv2d_gradients(rng, pad, k):
    # Conv2D (NHWC, im2col): dx, dw, db match finite differences, with and without padding
    x, w, b = rng.normal(size=(2, 6, 6, 2)), rng.normal(size=(k, k, 2, 3)), rng.normal(size=3)
    out, cache = L.conv2d_forward(x, w, b, pad)
    R = rng.normal(size=out.shape)

    def f():
        return np.sum(L.conv2d_forward(x, w, b, pad)[0] * R)

    g = {}
    dx = L.conv2d_backward(R, cache, g)
    close(dx, numgrad(f, x))
    close(g["w"], numgrad(f, w))
    close(g["b"], numgrad(f, b))


def test_conv2d_matches_direct_convolution(rng):
    # Conv2D forward equals a direct loop-over-pixels cross-correlation
    x, w, b = rng.normal(size=(1, 5, 5, 2)), rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)
    out, _ = L.conv2d_forward(x, w, b, pad=1)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.array(
        [
            [np.einsum("ijc,ijcf->f", xp[0, r : r + 3, c : c + 3], w) + b for c in range(5)]
            for r in range(5)
        ]
    )
    close(out[0], ref, 1e-12)


def test_maxpool_gradients(rng):
    # MaxPool 2x2: gradient goes to the max of each window (finite differences agree)
    x = rng.normal(size=(2, 4, 6, 3))
    out, cache = L.maxpool_forward(x)
    assert out.shape == (2, 2, 3, 3)
    R = rng.normal(size=out.shape)

    def f():
        return np.sum(L.maxpool_forward(x)[0] * R)

    close(L.maxpool_backward(R, cache), numgrad(f, x))


def test_maxpool_ties_send_gradient_once():
    # MaxPool on an all-equal window passes the gradient to one element only
    x = np.zeros((1, 2, 2, 1))
    _, cache = L.maxpool_forward(x)
    assert L.maxpool_backward(np.ones((1, 1, 1, 1)), cache).sum() == 1.0


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 4, 2)])
def test_batchnorm_gradients(rng, shape):
    # BatchNorm (dense and conv layouts): dx, dgamma, dbeta match finite differences
    C = shape[-1]
    x, gamma, beta = rng.normal(size=shape) * 3 + 1, rng.normal(size=C), rng.normal(size=C)
    R = rng.normal(size=shape)

    def f():
        return np.sum(L.batchnorm_forward(x, gamma, beta, np.zeros(C), np.ones(C), True)[0] * R)

    _, cache = L.batchnorm_forward(x, gamma, beta, np.zeros(C), np.ones(C), True)
    g = {}
    dx = L.batchnorm_backward(R, cache, g)
    close(dx, numgrad(f, x))
    close(g["gamma"], numgrad(f, gamma))
    close(g["beta"], numgrad(f, beta))


def test_batchnorm_train_vs_eval(rng):
    # BatchNorm normalizes with batch stats in train mode, updates running stats, uses them in eval
    x = (rng.normal(size=(500, 3)) * 2 + 5).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, _ = L.batchnorm_forward(x, g, b, rm, rv, train=True, momentum=1.0)
    assert np.allclose(y.mean(0), 0, atol=1e-4) and np.allclose(y.std(0), 1, atol=1e-3)
    assert np.allclose(rm, x.mean(0), atol=1e-4) and np.allclose(rv, x.var(0, ddof=1), rtol=1e-4)
    ye, _ = L.batchnorm_forward(x[:5], g, b, rm, rv, train=False)
    assert np.allclose(ye, (x[:5] - rm) / np.sqrt(rv + 1e-5), atol=1e-5)
    assert ye.dtype == np.float32


def test_dropout_fixed_mask_gradient(rng):
    # Dropout with a fixed mask: gradient is the mask (finite differences agree)
    x = rng.normal(size=(4, 5))
    mask = (rng.random((4, 5)) > 0.5) / 0.5
    R = rng.normal(size=x.shape)

    def f():
        return np.sum(L.dropout_forward(x, 0.5, True, mask=mask)[0] * R)

    _, m = L.dropout_forward(x, 0.5, True, mask=mask)
    close(L.dropout_backward(R, m), numgrad(f, x))


def test_dropout_train_vs_eval(rng):
    # Dropout zeroes about p of the units and keeps the mean in train mode; identity in eval
    x = np.ones((200, 100), np.float32)
    y, _ = L.dropout_forward(x, 0.3, True, rng)
    assert abs((y == 0).mean() - 0.3) < 0.02 and abs(y.mean() - 1) < 0.03 and y.dtype == np.float32
    ye, cache = L.dropout_forward(x, 0.3, False, rng)
    assert ye is x and L.dropout_backward(x, cache) is x


def test_flatten_gradient(rng):
    # Flatten: backward reshapes the gradient back (finite differences agree)
    x = rng.normal(size=(2, 3, 3, 2))
    R = rng.normal(size=(2, 18))

    def f():
        return np.sum(L.flatten_forward(x)[0] * R)

    _, shape = L.flatten_forward(x)
    close(L.flatten_backward(R, shape), numgrad(f, x))


@pytest.mark.parametrize("name", sorted(L.ACTIVATIONS))
def test_activation_gradients(rng, name):
    # each activation's backward matches finite differences (away from ReLU's kink)
    fwd, bwd = L.ACTIVATIONS[name]
    x = rng.normal(size=(4, 6))
    x[np.abs(x) < 1e-3] = 0.5
    R = rng.normal(size=x.shape)

    def f():
        return np.sum(fwd(x)[0] * R)

    _, cache = fwd(x)
    close(bwd(R, cache), numgrad(f, x))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_gradient(rng, smoothing):
    # softmax cross-entropy (with and without label smoothing): dz matches finite differences
    z, y = rng.normal(size=(5, 10)) * 3, rng.integers(0, 10, 5)

    def f():
        return softmax_cross_entropy_forward(z, y, smoothing)[0]

    _, cache = softmax_cross_entropy_forward(z, y, smoothing)
    close(softmax_cross_entropy_backward(cache), numgrad(f, z))


def test_softmax_cross_entropy_is_stable_and_correct():
    # log-sum-exp: huge logits give a finite loss; uniform logits give log(10)
    loss, _ = softmax_cross_entropy_forward(np.array([[1e4, 0.0] + [0.0] * 8]), np.array([1]))
    assert np.isfinite(loss) and abs(loss - 1e4) < 1e-6
    loss, _ = softmax_cross_entropy_forward(np.zeros((3, 10)), np.array([0, 1, 2]))
    assert abs(loss - np.log(10)) < 1e-12
