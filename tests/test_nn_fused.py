"""The fused kernels (pipeline/nn/fused.py) compute what the unfused layers of layers.py compute,
forward and backward, in float64 (exactly, up to rounding) and in float32 (to float32
rounding); a Model's fused training plan gives the gradients of its plain layer-by-layer pass;
inference on two threads gives the one-thread result."""

import threading

import numpy as np
import pytest

from pipeline.nn import fused as Fu
from pipeline.nn import fused_first as Ff
from pipeline.nn import layers as L
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import layer_backward, make_plan, run_forward


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unfused_conv_pool(x, w, b, pad, R):
    z, c1 = L.conv2d_forward(x, w, b, pad)
    out, c2 = L.maxpool_forward(z)
    g = {}
    dx = L.conv2d_backward(L.maxpool_backward(R, c2), c1, g)
    return out, dx, g


@pytest.mark.parametrize("n,pad,k,c,bias", [(3, 0, 3, 2, True), (5, 1, 3, 3, False),
                                              (2, 2, 5, 1, True), (37, 0, 5, 4, False)])
def test_conv_pool_equals_conv_then_pool(rng, n, pad, k, c, bias):
    # conv -> pool fused: output, dx, dw and db equal the two layers (float64: to 1e-12), with
    # and without padding and bias, and over a ragged last chunk (37 images)
    size = 5 - 2 * pad + k  # a 6x6 conv output
    x = rng.normal(size=(n, size, size, c))
    w, b = rng.normal(size=(k, k, c, 4)), (rng.normal(size=4) if bias else None)
    R = rng.normal(size=(n, 3, 3, 4))
    out, dx, g = unfused_conv_pool(x, w, b, pad, R)
    fo, cache = Fu.conv_pool_forward(x, w, b, pad)
    fg = {}
    fdx = Fu.conv_pool_backward(R, cache, fg)
    np.testing.assert_allclose(fo, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fdx, dx, rtol=1e-12, atol=1e-12)
    assert fg.keys() == g.keys()
    for key in g:
        np.testing.assert_allclose(fg[key], g[key], rtol=1e-10, atol=1e-10)
    eval_out, none = Fu.conv_pool_forward(x, w, b, pad, train=False)  # one channel: windows
    assert none is None
    np.testing.assert_allclose(eval_out, out, rtol=1e-12, atol=1e-12)


def test_conv_pool_ties_and_buffers():
    # an all-equal window sends its gradient to the first offset, as layers.maxpool does; the
    # gradient lands in the caller's buffer; no input gradient when not asked for
    x, w = np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1))
    out, cache = Fu.conv_pool_forward(x, w, None)
    buf = {"w": np.full((2, 2, 1, 1), np.nan)}
    dx = Fu.conv_pool_backward(np.ones_like(out), cache, buf, need_dx=True)
    _, dx_ref, g = unfused_conv_pool(x, w, None, 0, np.ones_like(out))
    assert np.array_equal(dx, dx_ref) and np.array_equal(buf["w"], g["w"])
    assert Fu.conv_pool_backward(np.ones_like(out), cache, {}, need_dx=False) is None


@pytest.mark.parametrize("c", [1, 8])
def test_conv_pool_float32_matches_to_rounding(rng, c):
    # in float32 the fused pair differs from the unfused only by rounding (training and
    # inference forms; one input channel has its own inference form)
    x = rng.normal(size=(20, 12, 12, c)).astype(np.float32)
    w = (rng.normal(size=(5, 5, c, 16)) * 0.1).astype(np.float32)
    R = rng.normal(size=(20, 4, 4, 16)).astype(np.float32)
    out, dx, g = unfused_conv_pool(x, w, None, 0, R)
    fo, cache = Fu.conv_pool_forward(x, w, None)
    fg = {}
    fdx = Fu.conv_pool_backward(R, cache, fg)
    assert fo.dtype == fdx.dtype == fg["w"].dtype == np.float32
    np.testing.assert_allclose(fo, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fdx, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fg["w"], g["w"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(Fu.conv_pool_forward(x, w, None, train=False)[0], out,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 4, 2), (1, 3), (7, 5)])
def test_bn_relu_equals_bn_then_relu(rng, shape):
    # BatchNorm -> ReLU fused: output, running stats, dx, dgamma, dbeta equal the two layers
    # (its rows in two parts, a single row in one)
    C = shape[-1]
    x, gamma, beta = rng.normal(size=shape), rng.normal(size=C), rng.normal(size=C)
    R = rng.normal(size=shape)
    m1, v1, m2, v2 = np.zeros(C), np.ones(C), np.zeros(C), np.ones(C)
    y, c1 = L.batchnorm_forward(x, gamma, beta, m1, v1, True, momentum=0.3)
    a, c2 = L.relu_forward(y)
    g = {}
    dx = L.batchnorm_backward(L.relu_backward(R, c2), c1, g)
    fa, fc = Fu.bn_relu_forward(x, gamma, beta, m2, v2, True, momentum=0.3)
    fg = {}
    fdx = Fu.bn_relu_backward(R, fc, fg)
    for got, want in ((fa, a), (m2, m1), (v2, v1), (fdx, dx), (fg["gamma"], g["gamma"]),
                      (fg["beta"], g["beta"])):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    ye, _ = L.batchnorm_forward(x, gamma, beta, m1, v1, False)
    np.testing.assert_allclose(Fu.bn_relu_forward(x, gamma, beta, m2, v2, False)[0],
                               np.maximum(ye, 0), rtol=1e-12, atol=1e-12)


def test_bn_relu_on_two_threads_gives_the_same_bytes(rng):
    # the rows' parts on one or two threads: identical output, running stats, gradients, dx;
    # no dx asked, none (float32, the size of a training batch's 12x12x32 map)
    x = rng.normal(size=(128, 12, 12, 32)).astype(np.float32)
    gamma, beta = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    R = rng.normal(size=x.shape).astype(np.float32)
    runs = []
    for threads in (1, 2):
        mean, var = np.zeros(32, np.float32), np.ones(32, np.float32)
        a, cache = Fu.bn_relu_forward(x, gamma, beta, mean, var, True, threads=threads)
        g = {}
        dx = Fu.bn_relu_backward(R, cache, g)
        assert Fu.bn_relu_backward(R, cache, {}, need_dx=False) is None
        runs.append((a, mean, var, dx, g["gamma"], g["beta"]))
    for one, two in zip(*runs):
        assert one.dtype == np.float32 and np.array_equal(one, two)


def test_plan_fuses_the_default_cnn():
    # the default cnn's training plan runs conv+pool and bn+relu pairs as single steps (those
    # after a first-layer conv inside its conv+bn+relu step, tests/test_nn_fused_first.py)
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}))
    names = [st.name for st in m._train_plan]
    layers = m.spec["layers"]
    trios = [i for i in range(len(layers)) if Ff.fused_length(layers[i : i + 3]) == 3]
    inside = {j for i in trios for j in (i + 1, i + 2)}
    pairs = [(a, b) for i, (a, b) in enumerate(zip(layers, layers[1:]))
             if (a["type"], b["type"]) in (("conv", "pool"), ("bn", "act")) and i not in inside]
    assert any(a["type"] == "conv" for a, _ in pairs)  # the default pools after a conv
    for a, b in pairs:  # every such pair of the default's layers runs as one step
        assert f"{a['name']}+{b['name']}" in names, (a["name"], names)
    assert len(names) == len(layers) - len(pairs) - 2 * len(trios)


def test_fused_training_step_matches_layer_by_layer(rng):
    # one training step through the fused plan gives the layer-by-layer loss gradients
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "dropout": 0.0, "plan": "4c5-p-6c3s-p-fc16"})
    m = Model(spec, rng=np.random.default_rng(3))
    x = rng.normal(size=(9, 28, 28, 1)).astype(np.float32)
    dz = rng.normal(size=(9, 10)).astype(np.float32)
    _, caches = m.forward_train(x, None)
    m.backward(dz, caches)
    fused = m.grad.copy()
    ref = Model(spec, params=m.params)
    plain = make_plan(spec["layers"], ref._P, ref._G, fuse=False)
    assert len(plain) == len(spec["layers"])
    _, caches = run_forward(plain, x, True)
    for i in range(len(plain) - 1, -1, -1):
        dz = layer_backward(spec["layers"][i], ref._P[i], ref._G[i], dz, caches[i], i > 0)
    np.testing.assert_allclose(fused, ref.grad, rtol=2e-4, atol=2e-5)


def test_inference_on_two_threads_equals_one(rng):
    # chunks shared out to two threads give exactly the one-thread logits, in order
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "plan": "4c5-p-4c5-p-fc8"}),
              rng=np.random.default_rng(0))
    x = rng.normal(size=(700, 28, 28, 1)).astype(np.float32)
    one = m.forward(x)
    assert np.array_equal(m.forward(x, threads=2), one)
    assert m.forward(x[:0]).shape == (0, 10)


def test_inference_threads_are_kept_between_calls(rng):
    # Model.forward's threads outlive the call (and with them their Winograd working buffers):
    # a second call runs on the same pool and starts no thread, with the same logits
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "plan": "4c3-16c3-p-fc8"}),
              rng=np.random.default_rng(0))
    x = rng.normal(size=(300, 28, 28, 1)).astype(np.float32)
    def eval_threads():
        return {t.ident for t in threading.enumerate() if t.name.startswith("eval")}

    first = m.forward(x, threads=2)
    kept = eval_threads()
    assert 1 <= len(kept) <= 2  # alive after the call
    assert np.array_equal(m.forward(x, threads=2), first)
    assert eval_threads() == kept
    assert np.array_equal(m.forward(x), first)


def test_training_step_on_two_threads_is_bit_identical(rng):
    # a training step whose conv+pool steps run on two threads gives exactly the one-thread
    # logits and gradients (the parts and their summation order do not depend on threads)
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "plan": "4c5-p-6c5-p-fc16"})
    x = rng.normal(size=(33, 28, 28, 1)).astype(np.float32)
    dz = rng.normal(size=(33, 10)).astype(np.float32)
    out = []
    for threads in (1, 2):
        m = Model(spec, rng=np.random.default_rng(3))
        m.threads = threads
        z, caches = m.forward_train(x, np.random.default_rng(4))
        m.backward(dz, caches)
        out.append((z, m.grad.copy()))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])


@pytest.mark.parametrize("shape", [(3,), (5, 7), (2, Fu.ROW + 3), (3, Fu.ROW), (4, 6, 5, 9)])
def test_relu_inplace_is_max_with_zero(rng, shape):
    # relu_inplace in rows of ROW against its row of zeros: max(a, 0) in place for any size
    # (a remainder shorter than ROW, an exact multiple, shorter than one row), float32 and
    # float64; a strided view too, through the plain form
    for dtype in (np.float32, np.float64):
        a = rng.normal(size=shape).astype(dtype)
        want = np.maximum(a, 0)
        Fu.relu_inplace(a)
        assert np.array_equal(a, want) and a.dtype == dtype
    b = rng.normal(size=(6, 8))
    view, want = b[:, ::2], np.maximum(b[:, ::2], 0)
    Fu.relu_inplace(view)
    assert np.array_equal(b[:, ::2], want) and (b[:, 1::2] < 0).any()
