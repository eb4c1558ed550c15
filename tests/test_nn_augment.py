"""Augmentation keeps shapes and labels, identity parameters give the identity, shifts move
content by whole pixels, fill is the background, and the augment string parses."""

import numpy as np
import pytest

from pipeline.nn.augment import affine, augment_batch, parse_augment


def digit_like(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = np.full((n, 28, 28, 1), -0.5, np.float32)
    x[:, 8:20, 10:18] = np.abs(rng.normal(size=(n, 12, 8, 1))).astype(np.float32) + 1
    return x


def test_identity_parameters_give_identity():
    # zero rotation, unit scale, zero shift reproduce the input exactly
    x = digit_like()
    n = len(x)
    out = affine(x, np.zeros(n), np.ones(n), np.zeros(n), np.zeros(n), fill=-0.5)
    np.testing.assert_allclose(out, x, atol=1e-5)
    assert augment_batch(x, parse_augment("none"), np.random.default_rng(0)) is x


@pytest.mark.parametrize("k", [1, 2, -3])
def test_shift_by_k_moves_content_by_k(k):
    # an integer shift moves every pixel k rows down and k columns right; vacated pixels are fill
    x = digit_like()
    n = len(x)
    out = affine(x, np.zeros(n), np.ones(n), np.full(n, k), np.full(n, k), fill=-0.5)
    ref = np.roll(x, (k, k), axis=(1, 2))
    inner = (slice(None), slice(max(k, 0), 28 + min(k, 0)), slice(max(k, 0), 28 + min(k, 0)))
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-5)
    if k > 0:
        assert np.all(out[:, :k] == -0.5)


def test_random_augmentation_keeps_shape_dtype_and_background():
    # random shift/rotate/zoom/elastic keep (N,28,28,1) float32; empty borders stay background
    x = digit_like(16)
    aug = parse_augment("shift=2,rotate=15,zoom=0.1,elastic=2")
    out = augment_batch(x, aug, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.allclose(out[:, 0, :], -0.5) and np.allclose(out[:, :, 0], -0.5)
    assert not np.allclose(out, x)
    assert out.max() <= x.max() + 1e-5 and out.min() >= x.min() - 1e-5  # bilinear never overshoots


def test_augmentation_is_seeded():
    # the same generator seed gives the same augmented batch
    x = digit_like()
    aug = parse_augment("default")
    a = augment_batch(x, aug, np.random.default_rng(3))
    b = augment_batch(x, aug, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_augmentation_keeps_labels_via_train(tmp_path):
    # augmenting a batch changes pixels only: a rotation of 10 degrees keeps the digit's class
    # (the labels array is never touched by augment_batch, which takes images only)
    x = digit_like()
    out = augment_batch(x, parse_augment("rotate=10"), np.random.default_rng(0))
    assert len(out) == len(x)


def test_parse_augment():
    # parsing: none/default/key=value, and errors naming the bad part
    assert parse_augment("none") == {"shift": 0, "rotate": 0, "zoom": 0, "elastic": 0}
    assert parse_augment("default")["rotate"] == 10
    assert parse_augment("shift=3,elastic=1.5") == {
        "shift": 3,
        "rotate": 0,
        "zoom": 0,
        "elastic": 1.5,
    }
    for bad, msg in [("spin=3", "spin"), ("shift=x", "'x'"), ("shift=-1", "-1"), ("zoom=1", "1")]:
        with pytest.raises(ValueError, match=msg):
            parse_augment(bad)


def reference_bilinear(x, src_r, src_c, fill):
    """Pixel by pixel, in float64: the four corners around each source point, weighted by
    distance; a corner outside the image (or a NaN source) counts as `fill`."""
    N, H, W, _ = x.shape
    out = np.empty((N, H, W))
    for i, r_, c_ in np.ndindex(N, H, W):
        r, c = float(src_r[i, r_, c_]), float(src_c[i, r_, c_])
        if np.isnan(r) or np.isnan(c):
            out[i, r_, c_] = fill
            continue
        r0, c0 = int(np.floor(r)), int(np.floor(c))
        total = 0.0
        for rr, wr in ((r0, 1 - (r - r0)), (r0 + 1, r - r0)):
            for cc, wc in ((c0, 1 - (c - c0)), (c0 + 1, c - c0)):
                inside = 0 <= rr < H and 0 <= cc < W
                total += wr * wc * (float(x[i, rr, cc, 0]) if inside else fill)
        out[i, r_, c_] = total
    return out[..., None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bilinear_sample_matches_a_pixel_by_pixel_reference(seed):
    # sources inside, on the border, one pixel out, far out, on whole pixels, and NaN: every
    # output is the distance-weighted sum of its four corners, corners outside counting as fill
    from pipeline.nn.augment import bilinear_sample
    rng = np.random.default_rng(seed)
    N, H, W = 3, 9, 7
    x = rng.normal(size=(N, H, W, 1)).astype(np.float32)
    src_r = rng.uniform(-4, H + 4, size=(N, H, W)).astype(np.float32)
    src_c = rng.uniform(-4, W + 4, size=(N, H, W)).astype(np.float32)
    whole = rng.random((N, H, W)) < 0.2
    src_r[whole] = np.round(src_r[whole])
    src_c[whole] = np.round(src_c[whole])
    src_r[0, 0, :3] = [-1, H - 1, H]
    src_c[0, 1, :3] = [-1, W - 1, W]
    src_r[1, 2, 2] = np.nan
    out = bilinear_sample(x, src_r, src_c, -0.75)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_bilinear(x, src_r, src_c, -0.75), atol=2e-6)
    assert out[1, 2, 2, 0] == np.float32(-0.75)
