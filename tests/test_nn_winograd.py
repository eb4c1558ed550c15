"""Winograd conv -> max pool and Winograd conv alone (pipeline/nn/conv_winograd.py, on the matrices
of pipeline/nn/winograd.py): its matrices compute the 1-D correlation, the pair equals the
direct conv+pool of fused.py (and so conv then pool) and the conv alone equals layers.conv2d
forward and backward in float64, their gradients match finite differences and the plain
reference convolution, float32 stays within float32 rounding of float64, and a Model runs them
on one or two threads with the same bytes."""

import numpy as np
import pytest

from pipeline.nn import conv_winograd as Wi
from pipeline.nn import fused as Fu
from pipeline.nn import fused_first as Ff
from pipeline.nn import layers as L
from pipeline.nn import reference as R
from pipeline.nn import winograd as Wn
from pipeline.nn.gradcheck import numgrad, rel_error
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import (
    WINOGRAD_MIN_CIN,
    conv_inplace_relu_backward,
    conv_inplace_relu_forward,
    conv_pool_inplace_relu_backward,
    conv_pool_inplace_relu_forward,
    layer_backward,
    make_plan,
    run_forward,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("k,m", [(3, 2), (5, 2), (3, 4)])
def test_matrices_compute_the_correlation(rng, k, m):
    # AT ((G g) * (BT d)) is y_i = sum_j d_{i+j} g_j for i = 0..m-1, for random d and g
    AT, G, BT = Wn.winograd_matrices(k, m)
    n = m + k - 1
    assert AT.shape == (m, n) and G.shape == (n, k) and BT.shape == (n, n)
    for _ in range(5):
        d, g = rng.normal(size=n), rng.normal(size=k)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), [d[i:i + k] @ g for i in range(m)],
                                   rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("k,m", [(7, 2), (5, 4), (3, 3)])
def test_unsupported_sizes_are_refused(k, m):
    # only the sizes with matrices here (at most 6 points); others are a programmer's error
    with pytest.raises(ValueError, match="k in"):
        Wn.winograd_matrices(k, m)


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def tile(request, monkeypatch):
    """Run a test with 3x3 kernels on 2x2 and on 4x4 output tiles (where the output allows)."""
    monkeypatch.setitem(Wn.TILE, 3, request.param)
    return request.param


def test_tile_side_follows_the_output():
    # 4x4 tiles for 3x3 where the output side is a multiple of 4, else 2x2; 5x5 always 2x2
    assert Wn.tile_side(3, 24, 24) == 4 and Wn.tile_side(3, 8, 8) == 4
    assert Wn.tile_side(3, 10, 10) == 2 and Wn.tile_side(3, 24, 10) == 2
    assert Wn.tile_side(5, 8, 8) == 2


def test_even_chunks_cover_a_part_in_the_fewest_even_chunks():
    for s0 in (0, 7):
        for size in range(1, 70):
            for nb in (1, 3, 12, 56, 100):
                chunks = Wn.even_chunks(s0, s0 + size, nb)
                assert chunks[0][0] == s0 and chunks[-1][1] == s0 + size
                assert all(e == s for (_, e), (s, _) in zip(chunks, chunks[1:]))  # contiguous
                sizes = [e - s for s, e in chunks]
                assert min(sizes) >= 1 and max(sizes) <= nb and max(sizes) - min(sizes) <= 1
                assert len(chunks) == -(-size // nb)  # the fewest of at most nb
        assert Wn.even_chunks(s0, s0, 12) == []


@pytest.mark.parametrize("n,size,pad,k,c,bias", [(5, 12, 0, 5, 3, True), (4, 8, 1, 3, 2, False),
                                                 (3, 10, 2, 5, 4, True), (1, 8, 0, 3, 9, False),
                                                 (37, 12, 0, 5, 8, False), (3, 10, 0, 3, 4, True),
                                                 (6, 18, 1, 3, 5, False)])
def test_equals_direct_conv_pool(rng, tile, n, size, pad, k, c, bias):
    # output, dx, dw, db equal the direct fused conv+pool (float64, to 1e-11), with and without
    # padding and bias, for odd sizes of the two parts (37 and 1 images), eval mode too
    x = rng.normal(size=(n, size, size, c))
    w, b = rng.normal(size=(k, k, c, 6)), (rng.normal(size=6) if bias else None)
    assert_same_kernel((Wi.wino_pool_forward, Wi.wino_pool_backward),
                       (Fu.conv_pool_forward, Fu.conv_pool_backward), x, w, b, pad, rng)


def assert_same_kernel(kernel, reference, x, w, b, pad, rng):
    """The (forward, backward) pair `kernel` gives the output (train and eval), dx and the
    parameter gradients of `reference` to 1e-11 in float64, and no dx when none is asked."""
    (fwd, bwd), (rfwd, rbwd) = kernel, reference
    ref, rcache = rfwd(x, w, b, pad)
    out, cache = fwd(x, w, b, pad)
    dout = rng.normal(size=ref.shape)
    rg, g = {}, {}
    rdx = rbwd(dout, rcache, rg)
    dx = bwd(dout, cache, g)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dx, rdx, rtol=1e-11, atol=1e-11)
    assert g.keys() == rg.keys()
    for key in g:
        np.testing.assert_allclose(g[key], rg[key], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(fwd(x, w, b, pad, train=False)[0], ref, rtol=1e-11, atol=1e-11)
    assert bwd(dout, cache, {}, need_dx=False) is None
    return cache


@pytest.mark.parametrize("k,size", [(5, 8), (3, 8)])
def test_gradients_match_finite_differences_and_the_reference_conv(rng, k, size):
    # d/dx and d/dw of sum(R * pool(conv(x, w))) by central differences (float64), and the
    # forward against the plain one-pixel-at-a-time convolution of reference.py (5x5 on 2x2
    # tiles, 3x3 on 4x4 tiles)
    x, w = rng.normal(size=(2, size, size, 3)), rng.normal(size=(k, k, 3, 2))
    side = (size + 2 - k + 1) // 2
    Rw = rng.normal(size=(2, side, side, 2))
    out, cache = Wi.wino_pool_forward(x, w, None, 1)
    np.testing.assert_allclose(out, R.maxpool_forward(R.conv2d_forward(x, w, None, 1)),
                               rtol=1e-11, atol=1e-11)
    g = {}
    dx = Wi.wino_pool_backward(Rw, cache, g)

    def loss():
        return float((Wi.wino_pool_forward(x, w, None, 1, train=False)[0] * Rw).sum())

    assert rel_error(dx, numgrad(loss, x)) < 1e-7
    assert rel_error(g["w"], numgrad(loss, w)) < 1e-7


@pytest.mark.parametrize("k,size", [(5, 12), (3, 10), (3, 26)])
def test_float32_within_rounding(rng, k, size):
    # in float32 the result stays within float32 rounding of the float64 one: output and
    # gradients within 2e-5 of their scale (the direct products: ~1e-6), dtype kept; for 5x5
    # on 2x2 tiles and 3x3 on 4x4 tiles (8x8 and 24x24 outputs), the six-point transforms
    x = rng.normal(size=(16, size, size, 32))
    w = rng.normal(size=(k, k, 32, 16)) * 0.05
    assert Wn.tile_side(k, size - k + 1, size - k + 1) == (2 if k == 5 else 4)
    out64, c64 = Wi.wino_pool_forward(x, w)
    dout = rng.normal(size=out64.shape)
    g64 = {}
    dx64 = Wi.wino_pool_backward(dout, c64, g64)
    f = np.float32
    out, cache = Wi.wino_pool_forward(x.astype(f), w.astype(f))
    g = {}
    dx = Wi.wino_pool_backward(dout.astype(f), cache, g)
    assert out.dtype == dx.dtype == g["w"].dtype == np.float32
    for a, b in ((out, out64), (dx, dx64), (g["w"], g64["w"])):
        assert np.abs(a - b).max() < 2e-5 * np.abs(b).max()


def test_model_uses_it_where_it_pays_and_two_threads_give_the_same_bytes(rng):
    # the default cnn runs each conv+pool with >= WINOGRAD_MIN_CIN input channels by Winograd,
    # the others directly; a training step on two threads gives exactly the one-thread logits and
    # gradients, and the fused plan's gradients match the layer-by-layer ones
    model = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}))
    by_name = {ly["name"]: ly for ly in model.spec["layers"]}
    pooled = [st for st in model.plan if st.name.split("+")[-1].startswith("p")]
    assert pooled  # the default has conv+pool steps
    for st in pooled:  # Winograd exactly where the input has enough channels, else direct
        conv = by_name[st.name.split("+")[0]]
        wants = conv["cin"] >= WINOGRAD_MIN_CIN and conv["k"] in Wn.KERNELS
        assert st.forward is (Wi.wino_pool_forward if wants else Fu.conv_pool_forward), st.name
    assert any(st.forward is Wi.wino_pool_forward for st in pooled)
    c = WINOGRAD_MIN_CIN
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "dropout": 0.0, "plan": f"{c}c5-p-6c5-p-fc16"})
    x = rng.normal(size=(33, 28, 28, 1)).astype(np.float32)
    dz = rng.normal(size=(33, 10)).astype(np.float32)
    out = []
    for threads in (1, 2):
        m = Model(spec, rng=np.random.default_rng(3))
        m.threads = threads
        assert m.plan[2].forward is Wi.wino_pool_forward
        z, caches = m.forward_train(x, np.random.default_rng(4))
        m.backward(dz, caches)
        out.append((z, m.grad.copy()))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
    ref = Model(spec, params=m.params)
    plain = make_plan(spec["layers"], ref._P, ref._G, fuse=False)
    _, caches = run_forward(plain, x, True)
    for i in range(len(plain) - 1, -1, -1):
        dz = layer_backward(spec["layers"][i], ref._P[i], ref._G[i], dz, caches[i], i > 0)
    # float32: a near-tie of the max pool may go the other way in one of the two (a few
    # entries), so the whole gradient is compared (a wrong backward gives an error near 1)
    assert rel_error(out[0][1], ref.grad) < 1e-4


@pytest.mark.parametrize("need_dx", [True, False])
def test_chunks_of_images_change_nothing_but_rounding(rng, monkeypatch, need_dx):
    # parts run in chunks of images (3 images here, a ragged last chunk in each part of 11 and
    # 12 images): the same outputs and gradients as in one chunk, for the Winograd and the
    # direct conv+pool (whose backward chunks when no dx is needed)
    x = rng.normal(size=(23, 12, 12, 8))
    w = rng.normal(size=(5, 5, 8, 4))
    dout = rng.normal(size=(23, 4, 4, 4))
    for mod, fwd, bwd, per_image in (
            (Wi, Wi.wino_pool_forward, Wi.wino_pool_backward, 36 * 16 * 8 * 8),
            (Fu, Fu.conv_pool_forward, Fu.conv_pool_backward, 4 * 16 * 200 * 8)):
        results = []
        for chunk_bytes in (1 << 40, 3 * per_image):
            monkeypatch.setattr(mod, "CHUNK_BYTES", chunk_bytes)
            out, cache = fwd(x, w)
            g = {}
            dx = bwd(dout, cache, g, need_dx)
            results.append((out, dx, g["w"]))
        for one, chunked in zip(*results):
            if one is None:
                assert chunked is None
            else:
                np.testing.assert_allclose(chunked, one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,size,pad,k,c,bias", [(5, 12, 0, 3, 32, False), (4, 8, 1, 3, 2, True),
                                                 (3, 10, 2, 5, 4, True), (1, 10, 0, 5, 3, False),
                                                 (37, 6, 0, 3, 5, True), (2, 14, 2, 3, 3, True)])
def test_conv_alone_equals_the_direct_conv(rng, tile, n, size, pad, k, c, bias):
    # without a pool: output, dx, dw, db equal layers.conv2d (float64, to 1e-11) with and
    # without padding and bias, for 1 and 37 images (odd parts), eval mode too; no dx asked, none
    x = rng.normal(size=(n, size, size, c))
    w, b = rng.normal(size=(k, k, c, 7)), (rng.normal(size=7) if bias else None)
    cache = assert_same_kernel((Wi.wino_conv_forward, Wi.wino_conv_backward),
                               (L.conv2d_forward, L.conv2d_backward), x, w, b, pad, rng)
    assert cache[0] != "direct"


def test_conv_alone_with_an_odd_output_runs_directly(rng):
    # an odd output side has no 2x2 tiling: the direct conv, forward and backward, same results
    x, w = rng.normal(size=(3, 11, 11, 16)), rng.normal(size=(3, 3, 16, 4))
    out, cache = Wi.wino_conv_forward(x, w)
    ref, rcache = L.conv2d_forward(x, w)
    assert out.shape == (3, 9, 9, 4) and cache[0] == "direct"
    np.testing.assert_array_equal(out, ref)
    dz = rng.normal(size=out.shape)
    g, rg = {}, {}
    np.testing.assert_array_equal(Wi.wino_conv_backward(dz, cache, g),
                                  L.conv2d_backward(dz, rcache, rg))
    np.testing.assert_array_equal(g["w"], rg["w"])


def test_conv_alone_gradients_match_finite_differences(rng, tile):
    # d/dx, d/dw and d/db of sum(R * conv(x, w) + b) by central differences (float64), and the
    # forward against the one-pixel-at-a-time reference convolution
    x, w, b = rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(3, 3, 3, 2)), rng.normal(size=2)
    Rw = rng.normal(size=(2, 8, 8, 2))
    out, cache = Wi.wino_conv_forward(x, w, b, 1)
    np.testing.assert_allclose(out, R.conv2d_forward(x, w, b, 1), rtol=1e-11, atol=1e-11)
    g = {}
    dx = Wi.wino_conv_backward(Rw, cache, g)

    def loss():
        return float((Wi.wino_conv_forward(x, w, b, 1, train=False)[0] * Rw).sum())

    for got, arr in ((dx, x), (g["w"], w), (g["b"], b)):
        assert rel_error(got, numgrad(loss, arr)) < 1e-7


def test_conv_alone_float32_threads_and_chunks(rng, monkeypatch, tile):
    # float32 within 2e-5 of the float64 scale; two threads give the one-thread bytes; chunks
    # of 3 images (ragged parts of 11 and 12) change nothing but rounding
    x = rng.normal(size=(23, 14, 14, 32))
    w = rng.normal(size=(3, 3, 32, 16)) * 0.05
    dz = rng.normal(size=(23, 12, 12, 16))
    out64, c64 = Wi.wino_conv_forward(x, w)
    g64 = {}
    dx64 = Wi.wino_conv_backward(dz, c64, g64)
    f = np.float32
    runs = []
    n, a = tile + 2, 12 // tile  # points per tile side, tiles per image side
    for threads, chunk in ((1, 1 << 40), (2, 1 << 40), (1, 3 * n * n * a * a * 32 * 8)):
        monkeypatch.setattr(Wi, "CHUNK_BYTES", chunk)
        out, cache = Wi.wino_conv_forward(x.astype(f), w.astype(f), threads=threads)
        g = {}
        dx = Wi.wino_conv_backward(dz.astype(f), cache, g)
        assert out.dtype == dx.dtype == g["w"].dtype == np.float32
        for a, b in ((out, out64), (dx, dx64), (g["w"], g64["w"])):
            assert np.abs(a - b).max() < 2e-5 * np.abs(b).max()
        runs.append((out, dx, g["w"]))
    for one, two in zip(runs[0], runs[1]):
        assert np.array_equal(one, two)
    for one, chunked in zip(runs[0], runs[2]):
        np.testing.assert_allclose(chunked, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())


def test_the_default_runs_its_unpooled_wide_convs_by_winograd():
    # every conv step of the default cnn without a pool after it: Winograd from WINOGRAD_MIN_CIN
    # input channels (the 10x10x64 c4), not below (the one-channel c1); in inference each such
    # conv (BatchNorm folded in) runs with its ReLU as one step
    model = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}))
    by_name = {ly["name"]: ly for ly in model.spec["layers"]}
    c4 = [st for st in model.plan if st.name == "c4"]
    assert c4 and c4[0].forward is Wi.wino_conv_forward
    evals = {st.name: st for st in model._eval_plan()}
    assert by_name["c4"]["cin"] >= WINOGRAD_MIN_CIN > by_name["c1"]["cin"]
    assert evals["c4+c4a"].forward is conv_inplace_relu_forward
    assert evals["c4+c4a"].settings["winograd"]
    assert evals["c1+c1a"].forward is Ff.conv_relu_forward  # K = 9: fused_first.py's step


@pytest.mark.parametrize("winograd", [True, False])
@pytest.mark.parametrize("pool", [False, True])
def test_conv_relu_steps_equal_their_layers(rng, winograd, pool):
    # the conv -> ReLU and conv -> pool -> ReLU steps: forward (train and eval), dx, dw, db
    # equal layers.conv2d (then layers.maxpool) then layers' ReLU (float64); the ReLU really
    # is applied (negative values reach it)
    fwd, bwd, tol = ((conv_pool_inplace_relu_forward, conv_pool_inplace_relu_backward, 1e-10)
                     if pool else (conv_inplace_relu_forward, conv_inplace_relu_backward, 1e-11))
    x, w, b = rng.normal(size=(5, 10, 10, 16)), rng.normal(size=(3, 3, 16, 6)), rng.normal(size=6)
    z, zc = L.conv2d_forward(x, w, b, 1)
    p, pc = L.maxpool_forward(z) if pool else (z, None)
    a, ac = L.relu_forward(p)
    assert (p < 0).any() and (p > 0).any()
    out, cache = fwd(x, w, b, 1, winograd=winograd)
    np.testing.assert_allclose(out, a, rtol=tol, atol=tol)
    inference = fwd(x, w, b, 1, train=False, winograd=winograd)[0]
    np.testing.assert_allclose(inference, a, rtol=tol, atol=tol)
    da = rng.normal(size=a.shape)
    g, rg = {}, {}
    dx = bwd(da, cache, g)
    dp = L.relu_backward(da, ac)
    rdx = L.conv2d_backward(L.maxpool_backward(dp, pc) if pool else dp, zc, rg)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    for key in ("w", "b"):
        np.testing.assert_allclose(g[key], rg[key], rtol=tol, atol=tol)


@pytest.mark.parametrize("negative", [(), ("c2bn",), ("c2bn", "c5bn", "c4bn")])
def test_inference_plan_equals_the_layers(rng, negative):
    # the default cnn in eval mode (BatchNorm folded, fused steps, Winograd) gives the logits of
    # its layers run one by one with running statistics (float64 parameters and input). A
    # BatchNorm after a pool folds into the conv before the pool only when all its scales are
    # positive: with a negative gamma in the layers `negative` it runs as its own step
    model = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}), rng=rng)
    for k, v in model.params.items():  # non-trivial BatchNorm statistics and scales
        if k.endswith((".mean", ".beta")):
            v[...] = rng.normal(size=v.shape) * 0.1
        elif k.endswith((".var", ".gamma")):
            v[...] = rng.uniform(0.5, 1.5, size=v.shape)
        if k.endswith(".gamma") and k.split(".")[0] in negative:
            v[::3] *= -1.0
    names = [st.name for st in model._eval_plan()]
    assert ("c2+p3+c2a" in names) == ("c2bn" not in negative)
    assert ("c5+p6+c5a" in names) == ("c5bn" not in negative)
    assert "c4+c4a" in names  # no pool between: folded whatever the sign
    x = rng.normal(size=(9, 28, 28, 1)).astype(np.float32)
    got = model.forward(x)
    plain = make_plan(model.spec["layers"], model._P, model._G, fuse=False)
    want = run_forward(plain, x.astype(np.float64), False)[0]
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("pool", [True, False])
def test_reused_working_arrays_leak_nothing_between_calls(rng, pool):
    # the kernels reuse per-thread working arrays across calls and layers: an output, and a
    # cache kept for the backward pass, stay correct after other calls (other shapes, eval and
    # training) have run on the same thread in between
    fwd, bwd = ((Wi.wino_pool_forward, Wi.wino_pool_backward) if pool
                else (Wi.wino_conv_forward, Wi.wino_conv_backward))
    ref_f = ((lambda x, w: Fu.conv_pool_forward(x, w)) if pool
             else (lambda x, w: L.conv2d_forward(x, w)))
    ref_b = Fu.conv_pool_backward if pool else L.conv2d_backward
    x1, w1 = rng.normal(size=(5, 10, 10, 16)), rng.normal(size=(3, 3, 16, 4))
    x2, w2 = rng.normal(size=(7, 14, 14, 16)), rng.normal(size=(5, 5, 16, 8))
    out1, cache1 = fwd(x1, w1)
    kept = out1.copy()
    out2, cache2 = fwd(x2, w2)  # other shapes, in between
    fwd(x2, w2, train=False)
    bwd(rng.normal(size=out2.shape), cache2, {})
    np.testing.assert_array_equal(out1, kept)
    r1, rc1 = ref_f(x1, w1)
    dout = rng.normal(size=out1.shape)
    g, rg = {}, {}
    np.testing.assert_allclose(bwd(dout, cache1, g), ref_b(dout, rc1, rg), rtol=1e-11,
                               atol=1e-11)
    np.testing.assert_allclose(g["w"], rg["w"], rtol=1e-11, atol=1e-11)
