"""Inference that skips blank work (pipeline/nn/blank.py, winograd_inference's listed tiles): the
mask arithmetic equals brute force, a pixel the mask calls blank really has the all-background
image's activation there, the Winograd convs given a mask equal the plain ones for any blank
pattern, padding, pool, chunking and thread count, and Model.forward gives the plain plan's
logits for MNIST-like images, odd backgrounds, NaNs and single rows."""

import numpy as np
import pytest

from pipeline.nn import blank as Bl
from pipeline.nn import conv_winograd as Wi
from pipeline.nn import winograd as Wn
from pipeline.nn import winograd_inference as Wf
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import run_forward

BACKGROUND = -0.42


def inked(rng, n, side, c=1, background=BACKGROUND, share=0.5):
    """(n, side, side, c) images at `background` but for a random rectangle of ink each."""
    x = np.full((n, side, side, c), background)
    for img in x:
        h, w = (max(1, int(side * share * rng.uniform(0.5, 1.5))) for _ in range(2))
        r, q = rng.integers(0, side - min(h, side) + 1), rng.integers(0, side - min(w, side) + 1)
        img[r : r + h, q : q + w] = rng.normal(size=(min(h, side - r), min(w, side - q), c))
    return x


def brute_window_all(mask, k):
    N, H, W = mask.shape
    return np.array([[[mask[i, a : a + k, b : b + k].all() for b in range(W - k + 1)]
                      for a in range(H - k + 1)] for i in range(N)], dtype=bool).reshape(
        N, H - k + 1, W - k + 1)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_window_all_equals_brute_force(k):
    rng = np.random.default_rng(k)
    mask = rng.random((3, 9, 11)) < 0.8
    assert np.array_equal(Wf.window_all(mask, k), brute_window_all(mask, k))


def test_the_mask_through_layers():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 8, 8)) < 0.85
    conv = {"type": "conv", "k": 3, "pad": 1}
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    assert np.array_equal(Bl.passed(mask, [conv]), brute_window_all(padded, 3))
    pooled = Bl.passed(mask, [{"type": "pool"}, {"type": "act"}, {"type": "bn"}])
    assert np.array_equal(pooled, mask.reshape(2, 4, 2, 4, 2).all(axis=(2, 4)))
    assert Bl.passed(mask, [{"type": "flatten"}]) is None
    assert Bl.passed(mask, [{"type": "dense"}]) is None


@pytest.mark.parametrize("plan", ["8c3-16c3-p-16c3s-p-fc8", "4c5-p-16c3-16c3-p-fc8"])
def test_a_pixel_called_blank_has_the_background_images_activation(plan):
    # the mechanism itself: at every step input, where the tracked mask says blank, the
    # activations equal those of the all-background image (the reference) at that pixel
    rng = np.random.default_rng(1)
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "plan": plan}), rng=rng)
    x = inked(rng, 6, 28).astype(np.float32)
    plan_steps, layers = m._eval_steps()
    run = Bl.BlankRun(plan_steps, layers)
    mask = x[..., 0] == BACKGROUND
    refs = run._reference(x[0, 0, 0], x.shape[1:])
    h = x
    for i, st in enumerate(plan_steps[: run.last + 1]):
        where = np.broadcast_to(mask[..., None], h.shape)
        ref = np.broadcast_to(refs[i][0], h.shape)
        assert where.any()
        np.testing.assert_allclose(h[where], ref[where], rtol=1e-5, atol=1e-5)
        h = st.forward(h, **st.P, train=False, **st.settings)[0]
        mask = Bl.passed(mask, run.layers[i])


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_with_a_mask_equals_the_plain_conv(pool, pad, threads, monkeypatch):
    # any blank pattern (rectangles of ink on a background, 0 to all of a tile blank), float64
    # exactly up to rounding, with chunks of a few tiles (ragged last chunk) and two threads
    rng = np.random.default_rng(2 * pad + pool)
    x = inked(rng, 7, 12, c=16, share=0.4)
    x[3] = BACKGROUND  # an all-blank image
    x[4] = rng.normal(size=x[4].shape)  # and one with no blank pixel
    w, b = rng.normal(size=(3, 3, 16, 8)), rng.normal(size=8)
    forward = Wi.wino_pool_forward if pool else Wi.wino_conv_forward
    want = forward(x, w, b, pad, train=False)[0]
    mask = (x == BACKGROUND).all(axis=-1)
    ref = np.full((1, 12, 12, 16), BACKGROUND)
    monkeypatch.setattr(Wi, "CHUNK_BYTES", 3 * 36 * 16 * 8)  # a few tiles per chunk
    monkeypatch.setattr(Wf, "MIN_BLANK", 0.0)  # listed whatever the share
    got = forward(x, w, b, pad, train=False, threads=threads, blank=(mask, ref))[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    side = 12 + 2 * pad - 2  # the conv's output side
    m = Wn.tile_side(3, side, side)
    skip = Wf.blank_tiles((mask, ref), pad, m, m + 2, side // m, side // m)
    assert skip is not None and skip.any() and not skip.all()  # both kinds of tile ran


def test_few_blank_tiles_keep_the_plain_runner(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 10, 10, 16))
    x[0, :4, :4] = BACKGROUND  # one blank tile (4 x 4 window) of 64
    mask = (x == BACKGROUND).all(axis=-1)
    assert Wf.blank_tiles((mask, None), 0, 2, 4, 4, 4).sum() == 1 and 1 / 64 < Wf.MIN_BLANK
    called = []
    monkeypatch.setattr(Wf, "sparse_inference", lambda *a: called.append(a))
    w = rng.normal(size=(3, 3, 16, 8))
    ref = np.full((1, 10, 10, 16), BACKGROUND)
    got = Wi.wino_pool_forward(x, w, None, train=False, blank=(mask, ref))[0]
    assert not called
    np.testing.assert_allclose(got, Wi.wino_pool_forward(x, w, None, train=False)[0])


def test_a_chunk_with_no_blank_pixel_runs_the_plain_plan(default_cnn, monkeypatch):
    called = []
    monkeypatch.setattr(Wf, "sparse_inference", lambda *a: called.append(a))
    x = np.random.default_rng(3).normal(size=(5, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(default_cnn.forward(x), plain_logits(default_cnn, x), rtol=1e-5,
                               atol=1e-5)
    assert not called


def mnist_like(rng, n, background=BACKGROUND):
    return inked(rng, n, 28, background=background, share=0.6).astype(np.float32)


def plain_logits(m, x):
    plan = m._eval_plan()
    return np.concatenate([run_forward(plan, x[s : s + 128], False)[0]
                           for s in range(0, len(x), 128)])


@pytest.fixture(scope="module")
def default_cnn():
    m = Model(build_spec("cnn", DEFAULTS["cnn"]), rng=np.random.default_rng(0))
    rng = np.random.default_rng(9)
    for P in m._P:  # BatchNorm statistics away from the identity
        if "var" in P:
            P["var"][...] = rng.uniform(0.5, 2.0, P["var"].shape)
            P["mean"][...] = rng.normal(0.0, 0.3, P["mean"].shape)
    return m


def test_model_forward_equals_the_plain_plan_and_skips_blank_tiles(default_cnn, monkeypatch):
    rng = np.random.default_rng(4)
    x = mnist_like(rng, 300)
    x[7, 3, 3, 0] = np.nan  # NaN is not blank: its logits are NaN as in the plain plan
    x[130:256] = mnist_like(rng, 126, background=1.5)  # another background in the second chunk
    x[256] = rng.normal(size=(28, 28, 1))  # the third chunk's first pixel is ink
    want = plain_logits(default_cnn, x)
    listed = []
    sparse = Wf.sparse_inference
    monkeypatch.setattr(Wf, "sparse_inference", lambda *a: listed.append(1) or sparse(*a))
    for threads in (1, 2):
        got = default_cnn.forward(x, threads=threads)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)
        assert np.array_equal(got[ok.all(axis=1)].argmax(1), want[ok.all(axis=1)].argmax(1))
    assert listed  # the blank path ran


@pytest.mark.parametrize("background", [0.0, BACKGROUND])
@pytest.mark.parametrize("n", [1, 2, 130])
def test_images_with_no_ink_at_all_equal_the_plain_plan(default_cnn, background, n):
    # every tile of every conv blank: nothing is listed (pipeline.readers probes a model with
    # such images before it predicts)
    x = np.full((n, 28, 28, 1), background, dtype=np.float32)
    want = plain_logits(default_cnn, x)
    for threads in (1, 2):
        np.testing.assert_allclose(default_cnn.forward(x, threads=threads), want, rtol=1e-4,
                                   atol=1e-4)


def test_a_rows_logits_do_not_depend_on_the_rows_beside_it(default_cnn):
    rng = np.random.default_rng(5)
    x = mnist_like(rng, 40)
    x[20] = rng.normal(size=(28, 28, 1))
    together = default_cnn.forward(x)
    for k in (0, 5, 20, 39):
        np.testing.assert_allclose(default_cnn.forward(x[k : k + 1])[0], together[k],
                                   rtol=1e-4, atol=1e-4)


def test_references_are_kept_per_background_and_bounded(default_cnn):
    run = default_cnn._eval_runner()
    rng = np.random.default_rng(6)
    for i in range(Bl.REFERENCES_KEPT + 3):
        x = mnist_like(rng, 3, background=float(i))
        np.testing.assert_allclose(run.run(x), plain_logits(default_cnn, x), rtol=1e-4,
                                   atol=1e-4)
        assert len(run._refs) <= Bl.REFERENCES_KEPT
