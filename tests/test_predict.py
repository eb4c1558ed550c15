"""predict_proba: batched, averaged over ensemble members and test-time shifts."""

import numpy as np
import pytest

from pipeline.nn import DEFAULTS, Model
from pipeline.nn.models import build_spec
from pipeline.predict import predict_labels, predict_proba, shift_images


def models(k):
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "plan": "4c5-p-4c5-p-fc8"})
    return [Model(spec, rng=np.random.default_rng(s)) for s in range(k)]


X = np.random.default_rng(0).normal(size=(25, 28, 28, 1)).astype(np.float32)


def test_batching_does_not_change_probabilities():
    # any batch size gives the same float32 probabilities, rows summing to 1
    ms = models(1)
    a = predict_proba(ms, X, batch_size=1000)
    b = predict_proba(ms, X, batch_size=7)
    assert a.shape == (25, 10) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a.sum(1), 1, atol=1e-5)


def test_ensemble_averages_members():
    # an ensemble's probabilities are the mean of its members'
    ms = models(3)
    mean = np.mean([predict_proba([m], X) for m in ms], axis=0)
    np.testing.assert_allclose(predict_proba(ms, X), mean, atol=1e-6)
    assert (predict_labels(ms, X) == mean.argmax(1)).all()


def test_tta_averages_shifted_copies():
    # TTA averages over the image and its one-pixel shifts, filled with the background
    ms = models(1)
    fill = X.min()
    copies = [X] + [shift_images(X, dr, dc, fill) for dr, dc in [(1, 0), (-1, 0), (0, 1), (0, -1)]]
    mean = np.mean([predict_proba(ms, c) for c in copies], axis=0)
    np.testing.assert_allclose(predict_proba(ms, X, tta=True), mean, atol=1e-6)
    s = shift_images(X, 2, -1, fill)
    np.testing.assert_array_equal(s[:, 2:, :-1], X[:, :-2, 1:])
    assert (s[:, :2] == fill).all() and (s[:, :, -1:] == fill).all()


def test_bad_inputs():
    # no models, bad batch size or bad shape are refused with the bad value
    with pytest.raises(ValueError, match="none"):
        predict_proba([], X)
    with pytest.raises(ValueError, match="0"):
        predict_proba(models(1), X, batch_size=0)
    with pytest.raises(ValueError, match="784"):
        predict_proba(models(1), X.reshape(25, 784))
