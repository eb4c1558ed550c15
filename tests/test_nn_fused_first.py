"""conv -> BatchNorm -> ReLU as one step (pipeline/nn/fused_first.py) computes what the three
layers of layers.py compute: forward, running statistics, the gradients of w, gamma, beta and
(when asked) x, in float64 to rounding and in float32 at least as accurately as the unfused
layers, for inputs with a large mean too; finite differences agree; two threads give the
one-thread bytes; make_plan uses it exactly where it applies, and a whole training step of the
default cnn matches its unfused plan. The same for conv -> ReLU, the inference plan's first
step."""

import numpy as np
import pytest

from pipeline.nn import fused_first as Ff
from pipeline.nn import layers as L
from pipeline.nn.gradcheck import numgrad, rel_error
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import layer_backward, make_plan, run_forward

KEYS = ("out", "mean", "var", "w", "gamma", "beta", "dx")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unfused(x, w, gamma, beta, R, pad=0, momentum=0.1, need_dx=True, stats=None):
    """The three layers of layers.py, forward and backward -> dict of KEYS."""
    mean, var = (np.array(s, dtype=x.dtype) for s in stats or (np.zeros(w.shape[-1]),
                                                                 np.ones(w.shape[-1])))
    z, c1 = L.conv2d_forward(x, w, None, pad)
    y, c2 = L.batchnorm_forward(z, gamma, beta, mean, var, True, momentum=momentum)
    a, c3 = L.relu_forward(y)
    g = {}
    dx = L.conv2d_backward(L.batchnorm_backward(L.relu_backward(R, c3), c2, g), c1, g, need_dx)
    return {"out": a, "mean": mean, "var": var, "dx": dx, **g}


def fused(x, w, gamma, beta, R, pad=0, momentum=0.1, need_dx=True, stats=None, threads=1):
    """The fused step, forward and backward -> dict of KEYS."""
    mean, var = (np.array(s, dtype=x.dtype) for s in stats or (np.zeros(w.shape[-1]),
                                                                 np.ones(w.shape[-1])))
    a, cache = Ff.conv_bn_relu_forward(x, w, gamma, beta, mean, var, pad, True,
                                       momentum=momentum, threads=threads)
    g = {}
    dx = Ff.conv_bn_relu_backward(R, cache, g, need_dx)
    return {"out": a, "mean": mean, "var": var, "dx": dx, **g}


def case(rng, n, side, c, k, pad, f, dtype=np.float64, scale=1.0, offset=0.0):
    """Random x, w, gamma, beta, upstream gradient R of one conv -> bn -> relu."""
    x = (rng.normal(size=(n, side, side, c)) * scale + offset).astype(dtype)
    w = rng.uniform(-1, 1, size=(k, k, c, f)).astype(dtype) / np.sqrt(k * k * c)
    gamma = rng.uniform(0.5, 1.5, size=f).astype(dtype)
    beta = (rng.normal(size=f) * 0.3).astype(dtype)
    so = side + 2 * pad - k + 1
    R = rng.normal(size=(n, so, so, f)).astype(dtype)
    return x, w, gamma, beta, R


def rel(got, want):
    """max |got - want| / max |want|."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("n,side,c,k,pad,f", [(5, 8, 1, 3, 0, 4), (1, 6, 1, 3, 0, 3),
                                              (2, 7, 2, 3, 1, 6), (37, 6, 3, 2, 2, 5),
                                              (3, 9, 1, 5, 2, 7)])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_equals_the_three_layers_float64(rng, monkeypatch, n, side, c, k, pad, f, small_chunks):
    # float64: output, running stats (momentum 0.3, non-trivial start) and every gradient equal
    # conv2d -> batchnorm -> relu to 1e-10, over batches of 1, 2 and odd sizes, padding, and
    # (small_chunks) ragged chunks of 2 images within each part
    if small_chunks:
        monkeypatch.setattr(Ff, "_chunk", lambda per_image_bytes: 2)
    x, w, gamma, beta, R = case(rng, n, side, c, k, pad, f)
    stats = (rng.normal(size=f), rng.uniform(0.5, 2, size=f))
    want = unfused(x, w, gamma, beta, R, pad, 0.3, stats=stats)
    got = fused(x, w, gamma, beta, R, pad, 0.3, stats=stats)
    for key in KEYS:
        assert got[key].shape == want[key].shape, key
        assert rel(got[key], want[key]) < 1e-10, (key, rel(got[key], want[key]))


def test_gradients_into_buffers_and_no_dx(rng):
    # the gradients land in the caller's arrays (the model's flat grad vector); no input
    # gradient when not asked for, and the parameter gradients do not depend on asking
    x, w, gamma, beta, R = case(rng, 4, 7, 1, 3, 0, 5)
    _, cache = Ff.conv_bn_relu_forward(x, w, gamma, beta, np.zeros(5), np.ones(5))
    buf = {"w": np.full(w.shape, np.nan), "gamma": np.full(5, np.nan), "beta": np.full(5, np.nan)}
    held = dict(buf)
    assert Ff.conv_bn_relu_backward(R, cache, buf, need_dx=False) is None
    want = unfused(x, w, gamma, beta, R)
    for key in ("w", "gamma", "beta"):
        assert buf[key] is held[key]
        assert rel(buf[key], want[key]) < 1e-10


def test_eval_mode_uses_the_running_stats(rng):
    # train=False: relu(batchnorm with the running stats (conv(x))), stats untouched, no cache
    x, w, gamma, beta, _ = case(rng, 3, 8, 2, 3, 1, 4)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    m0, v0 = mean.copy(), var.copy()
    z, _ = L.conv2d_forward(x, w, None, 1)
    y, _ = L.batchnorm_forward(z, gamma, beta, mean, var, False)
    out, cache = Ff.conv_bn_relu_forward(x, w, gamma, beta, mean, var, 1, train=False)
    assert cache is None and np.array_equal(mean, m0) and np.array_equal(var, v0)
    assert rel(out, np.maximum(y, 0)) < 1e-12


@pytest.mark.parametrize("need_dx", [False, True])
def test_finite_differences(rng, need_dx):
    # float64 central differences of sum(out * R) agree with the backward pass for w, gamma,
    # beta and (need_dx) the input, with padding and two input channels
    x, w, gamma, beta, R = case(rng, 3, 6, 2, 3, 1, 4)

    def f():
        out, _ = Ff.conv_bn_relu_forward(x, w, gamma, beta, np.zeros(4), np.ones(4), 1)
        return float(np.sum(out * R))

    _, cache = Ff.conv_bn_relu_forward(x, w, gamma, beta, np.zeros(4), np.ones(4), 1)
    g = {}
    dx = Ff.conv_bn_relu_backward(R, cache, g, need_dx)
    for name, arr in (("w", w), ("gamma", gamma), ("beta", beta)):
        assert rel_error(g[name], numgrad(f, arr)) < 1e-7, name
    if need_dx:
        assert rel_error(dx, numgrad(f, x)) < 1e-7
    else:
        assert dx is None


def inputs(rng, kind, shape):
    """Image batches: normalized, raw 0..255 pixels (mostly background), or a large offset."""
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "raw pixels":
        return np.where(rng.random(shape) < 0.2, rng.integers(0, 256, shape), 0).astype(float)
    return 1000.0 + rng.normal(size=shape)


@pytest.mark.parametrize("kind", ["normal", "raw pixels", "offset 1000"])
def test_float32_as_accurate_as_the_layers(rng, kind):
    # float32 against a float64 reference of the three layers on the same (rounded) numbers:
    # the fused step's error is within twice the unfused float32 layers' (or 1e-5 of the
    # scale), for inputs with a large mean too: its statistics come from centred columns
    shape = (48, 28, 28, 1)
    x = inputs(rng, kind, shape).astype(np.float32)
    _, w, gamma, beta, R = case(rng, 48, 28, 1, 3, 0, 32, np.float32)
    ref = unfused(*(a.astype(np.float64) for a in (x, w, gamma, beta, R)))
    ours = unfused(x, w, gamma, beta, R)
    got = fused(x, w, gamma, beta, R)
    for key in KEYS:
        assert got[key].dtype == np.float32, key
        bound = max(2 * rel(ours[key], ref[key]), 1e-5)
        assert rel(got[key], ref[key]) < bound, (key, rel(got[key], ref[key]), bound)


def test_large_mean_statistics(rng):
    # with a mean 1e4 times the spread, the float32 batch variance (the running var after
    # momentum 1) and the normalized output keep float32 accuracy: the column moments
    # are taken about the input's mean, not about zero (that would lose every digit)
    x = (1e4 + rng.normal(size=(16, 10, 10, 1))).astype(np.float32)
    _, w, gamma, beta, R = case(rng, 16, 10, 1, 3, 0, 8, np.float32)
    ref = unfused(*(a.astype(np.float64) for a in (x, w, gamma, beta, R)), momentum=1.0)
    got = fused(x, w, gamma, beta, R, momentum=1.0)
    for key in ("out", "var", "mean", "w", "gamma", "beta"):
        assert rel(got[key], ref[key]) < 1e-5, (key, rel(got[key], ref[key]))


def test_two_threads_give_the_same_bytes(rng):
    # the parts, the chunks and the order of the partial sums do not depend on the thread
    # count: two threads give exactly the one-thread output, stats and gradients (33 images
    # of the first layer's size: several chunks per part, the last one ragged)
    x, w, gamma, beta, R = case(rng, 33, 28, 2, 3, 1, 32, np.float32)
    one = fused(x, w, gamma, beta, R, 1, threads=1)
    two = fused(x, w, gamma, beta, R, 1, threads=2)
    for key in KEYS:
        assert np.array_equal(one[key], two[key]), key


def conv_block(name, cin, cout, k, bias=False, fn="relu"):
    return [{"type": "conv", "name": name, "cin": cin, "cout": cout, "k": k, "pad": 0,
             "bias": bias},
            {"type": "bn", "name": f"{name}bn", "c": cout},
            {"type": "act", "name": f"{name}a", "fn": fn}]


def test_fused_length_exactly_where_it_applies():
    # 3 for a conv without bias -> bn -> relu, 2 for a conv -> relu, each with k*k*cin <=
    # K_MAX; 0 for anything else
    assert Ff.fused_length(conv_block("c", 1, 32, 3)) == 3
    cin_max = Ff.K_MAX // 9
    assert Ff.fused_length(conv_block("c", cin_max, 8, 3)) == 3  # K = 9 * cin_max <= K_MAX
    assert Ff.fused_length(conv_block("c", cin_max + 1, 8, 3)) == 0  # K above K_MAX
    assert Ff.fused_length(conv_block("c", 1, 8, 3, bias=True)) == 0
    assert Ff.fused_length(conv_block("c", 1, 8, 3, fn="tanh")) == 0
    assert Ff.fused_length(conv_block("c", 1, 8, 3)[:2]) == 0
    blk = conv_block("c", 1, 8, 3)
    assert Ff.fused_length([blk[0], {"type": "pool", "name": "p"}, blk[1]]) == 0
    for bias in (False, True):
        assert Ff.fused_length([conv_block("c", 1, 8, 3, bias)[0], blk[2]]) == 2
        assert Ff.fused_length([conv_block("c", cin_max + 1, 8, 3, bias)[0], blk[2]]) == 0
    assert Ff.fused_length([blk[0], conv_block("c", 1, 8, 3, fn="tanh")[2]]) == 0
    assert Ff.fused_length([blk[1], blk[2]]) == 0 and Ff.fused_length([]) == 0


def test_plan_runs_the_default_cnn_first_layer_fused():
    # the default cnn's training plan has c1+c1bn+c1a as its first step, on the model's own
    # parameter and gradient arrays; its K = 288 second conv is not fused; fuse=False and the
    # eval plan (BatchNorm folded into the conv, which then has a bias) have no such step
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}))
    st = m.plan[0]
    assert st.name == "c1+c1bn+c1a" and st.first == 0
    assert st.forward is Ff.conv_bn_relu_forward and st.backward is Ff.conv_bn_relu_backward
    assert st.P.keys() == {"w", "gamma", "beta", "mean", "var"}
    assert st.G.keys() == {"w", "gamma", "beta"}
    for name, arr in st.P.items():
        assert arr is m.params[f"{'c1' if name == 'w' else 'c1bn'}.{name}"]
    for name, arr in st.G.items():
        assert arr is m.grads[f"{'c1' if name == 'w' else 'c1bn'}.{name}"]
    fused_steps = [s for s in m.plan if s.forward is Ff.conv_bn_relu_forward]
    assert fused_steps == [st]
    layers = m.spec["layers"]
    plain = make_plan(layers, m._P, m._G, fuse=False)
    assert all(s.forward is not Ff.conv_bn_relu_forward for s in plain)
    assert all(s.forward is not Ff.conv_bn_relu_forward for s in m._eval_plan())
    m.threads = 2
    assert m.plan[0].settings["threads"] == 2


def test_plan_selection_in_a_spec():
    # in a hand-written spec the step replaces exactly the fusable triples: the bias conv and
    # the K = 36 conv keep their unfused steps; the momentum reaches the fused step
    layers = (conv_block("a", 1, 4, 3) + conv_block("b", 4, 4, 3) + conv_block("c", 4, 4, 1)
              + conv_block("d", 4, 4, 1, bias=True))
    layers[1]["momentum"] = 0.25
    P = [{} for _ in layers]
    plan = make_plan(layers, P, P)
    names = [s.name for s in plan]
    assert names == ["a+abn+aa", "b", "bbn+ba", "c+cbn+ca", "d", "dbn+da"]
    assert plan[0].settings == {"pad": 0, "momentum": 0.25, "threads": 1}
    bare = [blk[0] for blk in (layers[0:3], layers[6:9])] + [layers[2]]  # conv, conv, relu
    assert [s.name for s in make_plan(bare, P, P)] == ["a", "c+aa"]
    assert make_plan(bare, P, P)[1].forward is Ff.conv_relu_forward


@pytest.mark.parametrize("plan,batch", [("32c3-32c3-p-64c3-64c3-p-fc128", 6),
                                        ("2c3-3c3-fc8", 5)])
def test_training_step_matches_the_unfused_plan(rng, plan, batch):
    # one training step of a model (the default cnn; and one whose second conv, K = 18, is
    # fused too and so needs its input gradient): logits, gradients and running stats of the
    # fused plan match the layer-by-layer plan (fuse=False) to float32 rounding
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn", "dropout": 0.0, "plan": plan})
    m = Model(spec, rng=np.random.default_rng(3))
    assert sum(s.forward is Ff.conv_bn_relu_forward for s in m.plan) == (2 if plan[0] == "2"
                                                                          else 1)
    ref = Model(spec, params=m.params)
    x = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
    dz = rng.normal(size=(batch, 10)).astype(np.float32)
    z, caches = m.forward_train(x, None)
    m.backward(dz, caches)
    plain = make_plan(spec["layers"], ref._P, ref._G, fuse=False)
    z_ref, caches = run_forward(plain, x, True)
    for i in range(len(plain) - 1, -1, -1):
        dz = layer_backward(spec["layers"][i], ref._P[i], ref._G[i], dz, caches[i], i > 0)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
    scale = np.linalg.norm(ref.grad)  # a bias before BatchNorm has a zero gradient: noise
    errors = {k: rel_error(g, ref.grads[k]) for k, g in m.grads.items()
              if np.linalg.norm(ref.grads[k]) > 1e-3 * scale}
    assert "c1.w" in errors and "c1bn.gamma" in errors
    assert max(errors.values()) < 2e-5, errors  # per tensor: |a - b| / (|a| + |b|)
    for k in ("c1.w", "c1bn.gamma", "c1bn.beta"):  # the fused step's own, entry by entry
        assert np.abs(m.grads[k] - ref.grads[k]).max() < 1e-4 * np.abs(ref.grads[k]).max(), k
    for name in m.params:
        np.testing.assert_allclose(m.params[name], ref.params[name], rtol=1e-5, atol=1e-6)


def unfused_conv_relu(x, w, b, R, pad, need_dx=True):
    z, c1 = L.conv2d_forward(x, w, b, pad)
    a, c2 = L.relu_forward(z)
    g = {}
    dx = L.conv2d_backward(L.relu_backward(R, c2), c1, g, need_dx)
    return {"out": a, "dx": dx, **g}


def fused_conv_relu(x, w, b, R, pad, need_dx=True, threads=1):
    a, cache = Ff.conv_relu_forward(x, w, b, pad, threads=threads)
    g = {}
    dx = Ff.conv_relu_backward(R, cache, g, need_dx)
    return {"out": a, "dx": dx, **g}


@pytest.mark.parametrize("n,side,c,k,pad,f,bias", [(5, 8, 1, 3, 0, 4, True),
                                                   (1, 6, 2, 3, 1, 3, False),
                                                   (37, 6, 3, 2, 2, 5, True)])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_conv_relu_equals_the_two_layers(rng, monkeypatch, n, side, c, k, pad, f, bias,
                                         small_chunks):
    # conv -> relu fused: output, dw, db and dx equal conv2d -> relu (float64, 1e-12), with and
    # without bias and padding, over ragged chunks; no dx when not asked; inference form alike
    if small_chunks:
        monkeypatch.setattr(Ff, "_chunk", lambda per_image_bytes: 2)
    x, w, _, beta, R = case(rng, n, side, c, k, pad, f)
    b = beta if bias else None
    want, got = unfused_conv_relu(x, w, b, R, pad), fused_conv_relu(x, w, b, R, pad)
    assert got.keys() == want.keys()
    for key in want:
        assert rel(got[key], want[key]) < 1e-12, key
    _, cache = Ff.conv_relu_forward(x, w, b, pad)
    assert Ff.conv_relu_backward(R, cache, {}, need_dx=False) is None
    out, none = Ff.conv_relu_forward(x, w, b, pad, train=False)
    assert none is None and rel(out, want["out"]) < 1e-12


def test_conv_relu_finite_differences_and_threads(rng):
    # conv -> relu: central differences agree for w, b and x; float32 on two threads gives
    # the one-thread bytes
    x, w, _, b, R = case(rng, 3, 6, 2, 3, 1, 4)

    def f():
        return float(np.sum(Ff.conv_relu_forward(x, w, b, 1)[0] * R))

    got = fused_conv_relu(x, w, b, R, 1)
    for name, arr in (("w", w), ("b", b), ("dx", x)):
        assert rel_error(got[name], numgrad(f, arr)) < 1e-7, name
    x, w, _, b, R = case(rng, 33, 28, 1, 3, 0, 32, np.float32)
    one, two = fused_conv_relu(x, w, b, R, 0), fused_conv_relu(x, w, b, R, 0, threads=2)
    for key in one:
        assert np.array_equal(one[key], two[key]), key


def test_inference_plan_runs_conv_relu(rng):
    # the default cnn's inference plan (BatchNorm folded into the convs) runs its first conv
    # and ReLU as one conv_relu step, and gives the logits of the unfused layers in eval mode
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}), rng=np.random.default_rng(2))
    x = rng.normal(size=(40, 28, 28, 1)).astype(np.float32)
    m.forward_train(x, np.random.default_rng(0))  # running stats away from their start
    plan = m._eval_plan()
    assert plan[0].name == "c1+c1a" and plan[0].forward is Ff.conv_relu_forward
    assert sum(s.forward is Ff.conv_relu_forward for s in plan) == 1  # K = 288 convs: not
    plain = make_plan(m.spec["layers"], m._P, m._G, fuse=False)
    np.testing.assert_allclose(m.forward(x), run_forward(plain, x, False)[0], rtol=1e-4,
                               atol=1e-4)
