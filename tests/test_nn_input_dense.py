"""The input dense layer (pipeline/nn/input_dense.py) computes what layers.dense_* compute, for
any mix of constant and varying input columns, forward and backward; inference and batches with
too few constant columns take the plain product; a Model's MLP runs its first layer through it,
and its gradients on MNIST-like inputs (blank borders) equal the layer-by-layer pass."""

import numpy as np
import pytest

from pipeline.nn import input_dense as Id
from pipeline.nn import layers as L
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import layer_backward, make_plan, run_forward


def batch(rng, n, d, share, dtype=np.float64):
    """(n, d) normal rows whose columns are, with probability `share`, one value down the batch."""
    x = rng.normal(size=(n, d))
    constant = rng.random(d) < share
    x[:, constant] = rng.normal(size=constant.sum())
    return x.astype(dtype)


def plain(x, w, b, dz, need_dx):
    z, cache = L.dense_forward(x, w, b)
    g = {}
    return z, L.dense_backward(dz, cache, g, need_dx), g


@pytest.mark.parametrize("n", [1, 2, 3, 37, 128])
@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("need_dx", [True, False])
def test_input_dense_equals_dense(n, share, need_dx):
    rng = np.random.default_rng(n * 100 + int(share * 10))
    x = batch(rng, n, 61, share)
    w, b, dz = rng.normal(size=(61, 7)), rng.normal(size=7), rng.normal(size=(n, 7))
    z, dx, g = plain(x, w, b, dz, need_dx)
    for grads in ({}, {"w": np.full_like(w, np.nan), "b": np.full_like(b, np.nan)}):
        fz, cache = Id.input_dense_forward(x, w, b)
        fdx = Id.input_dense_backward(dz, cache, grads, need_dx)
        np.testing.assert_allclose(fz, z, rtol=1e-12, atol=1e-12)
        assert grads.keys() == g.keys()
        for key in g:
            np.testing.assert_allclose(grads[key], g[key], rtol=1e-12, atol=1e-12)
        if need_dx:
            np.testing.assert_allclose(fdx, dx, rtol=1e-12, atol=1e-12)
        else:
            assert fdx is None
    # without a gradient dict the forward and the input gradient are still right
    fz, cache = Id.input_dense_forward(x, w, b)
    assert Id.input_dense_backward(dz, cache, None, False) is None


def test_input_dense_float32_and_the_split_it_takes():
    rng = np.random.default_rng(5)
    x = batch(rng, 128, 784, 0.33, np.float32)
    w = rng.normal(size=(784, 32)).astype(np.float32)
    b, dz = np.zeros(32, np.float32), rng.normal(size=(128, 32)).astype(np.float32)
    z, _, g = plain(x, w, b, dz, False)
    fz, cache = Id.input_dense_forward(x, w, b)
    assert fz.dtype == np.float32
    xk, _, (keep, const, c) = cache
    constant = (x == x[0]).all(axis=0)
    assert np.array_equal(keep, np.flatnonzero(~constant))  # only the varying columns multiply
    assert np.array_equal(const, np.flatnonzero(constant)) and xk.shape == (128, keep.size)
    grads = {}
    Id.input_dense_backward(dz, cache, grads, False)
    np.testing.assert_allclose(fz, z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["w"], g["w"], rtol=1e-4, atol=1e-3)


def test_plain_product_for_inference_and_for_few_constant_columns():
    rng = np.random.default_rng(1)
    x = batch(rng, 50, 40, 0.5)
    w, b = rng.normal(size=(40, 3)), rng.normal(size=3)
    z = L.dense_forward(x, w, b)[0]
    assert np.array_equal(Id.input_dense_forward(x, w, b, train=False)[0], z)  # bit for bit
    few = rng.normal(size=(50, 40))
    few[:, :2] = 1.0  # 2 of 40 columns: under MIN_CONSTANT
    assert 2 / 40 < Id.MIN_CONSTANT
    out, cache = Id.input_dense_forward(few, w, b)
    assert cache[2] is None and np.array_equal(out, L.dense_forward(few, w, b)[0])


def test_nan_and_inf_inputs_come_out_as_in_the_plain_product():
    # a NaN never equals itself, so its column counts as varying and reaches the product; an
    # infinite column is constant: its share of z is inf * w as in the product
    rng = np.random.default_rng(2)
    x = batch(rng, 20, 30, 0.6)
    x[3, 4] = np.nan
    x[:, 5] = np.inf
    w, b = np.abs(rng.normal(size=(30, 4))), rng.normal(size=4)
    z = L.dense_forward(x, w, b)[0]
    fz = Id.input_dense_forward(x, w, b)[0]
    assert np.array_equal(np.isnan(fz), np.isnan(z)) and np.array_equal(np.isinf(fz), np.isinf(z))


def test_the_mlp_plan_uses_it_for_the_first_layer_only():
    spec = build_spec("mlp", {**DEFAULTS["mlp"], "dropout": 0.0})
    m = Model(spec, rng=np.random.default_rng(0))
    dense = [st for st in m.plan if st.forward in (L.dense_forward, Id.input_dense_forward)]
    assert [st.forward for st in dense] == [Id.input_dense_forward] + [L.dense_forward] * (
        len(dense) - 1)
    cnn = Model(build_spec("cnn", {**DEFAULTS["cnn"], "plan": "4c3-p-fc8"}))
    assert all(st.forward is not Id.input_dense_forward for st in cnn.plan)


def test_mlp_gradients_on_blank_bordered_images_match_layer_by_layer():
    # images with a blank border (a constant after normalizing), as MNIST's: one training step of
    # the model's plan gives the gradients of the layer-by-layer pass
    rng = np.random.default_rng(4)
    spec = build_spec("mlp", {**DEFAULTS["mlp"], "dropout": 0.0})
    m = Model(spec, rng=np.random.default_rng(3))
    x = np.full((16, 28, 28, 1), -0.42, np.float32)
    x[:, 5:22, 6:20] = rng.normal(size=(16, 17, 14, 1))
    dz = rng.normal(size=(16, 10)).astype(np.float32)
    _, caches = m.forward_train(x, np.random.default_rng(0))
    m.backward(dz, caches)
    assert caches[[st.forward for st in m.plan].index(Id.input_dense_forward)][2] is not None
    fast = m.grad.copy()
    ref = Model(spec, params=m.params)
    steps = make_plan(spec["layers"], ref._P, ref._G, fuse=False)
    _, caches = run_forward(steps, x, True, np.random.default_rng(0))
    for i in range(len(steps) - 1, -1, -1):
        dz = layer_backward(spec["layers"][i], ref._P[i], ref._G[i], dz, caches[i], i > 0)
    np.testing.assert_allclose(fast, ref.grad, rtol=2e-4, atol=2e-5)
