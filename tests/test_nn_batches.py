"""The prefetching batch iterator gives exactly the batches of the plain loop, in order, with or
without its thread; train() gives the same model with or without the thread and on one or two
step threads; errors and early exits in the iterator neither hang nor vanish."""

import threading

import numpy as np
import pytest

from pipeline.nn.augment import augment_batch, parse_augment
from pipeline.nn.batches import Batches, epoch_aug_rng


def data(n=50):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("prefetch", [False, True])
def test_batches_are_the_plain_loop(prefetch):
    # gather perm[i*B:(i+1)*B] and augment from the epoch's own generator, batch after batch
    x, y = data()
    aug = parse_augment("default")
    perm = np.random.default_rng(1).permutation(len(x))
    got = [(xb.copy(), yb) for xb, yb in
           Batches(x, y, perm, 16, aug, np.random.default_rng(2), -1.0, prefetch)]
    ref_rng = np.random.default_rng(2)
    assert len(got) == 4 and got[-1][0].shape == (2, 28, 28, 1)
    for i, (xb, yb) in enumerate(got):
        idx = perm[i * 16:(i + 1) * 16]
        np.testing.assert_array_equal(xb, augment_batch(x[idx], aug, ref_rng, -1.0))
        np.testing.assert_array_equal(yb, y[idx])


def test_no_augmentation_draws_nothing_and_full_batch_is_the_data():
    # without augmentation the main generator is not advanced; no permutation = the whole set
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    assert epoch_aug_rng(rng, parse_augment("none")) is None
    assert rng.bit_generator.state == before
    x, y = data(10)
    (xb, yb), = list(Batches(x, y, None, 10, parse_augment("none"), None, 0.0, True))
    assert xb is x or np.shares_memory(xb, x)


def test_worker_error_reaches_the_caller_and_early_exit_stops_the_worker():
    x, y = data()
    bad = Batches(x, y, np.arange(len(x)), 16, parse_augment("default"), "not a generator", 0.0)
    with pytest.raises(AttributeError):
        list(bad)
    it = iter(Batches(x, y, np.arange(len(x)), 4, parse_augment("none"), None, 0.0, True))
    next(it)
    it.close()  # the caller stops after one batch: the worker is joined, not left blocked
    assert not any(t.name == "batches" for t in threading.enumerate())


def test_train_same_result_with_or_without_threads(monkeypatch):
    # the same seed gives bit-identical parameters with the prefetch thread and two step
    # threads as with neither (a small cnn, with augmentation and dropout)
    from pipeline import train as T
    from pipeline.params import TrainConfig

    x, y = data(96)
    cfg = TrainConfig(model="cnn", epochs=2, batch_size=32, seed=3, augment="default",
                      plan="4c5-p-4c5-p-fc8")
    results = []
    for prefetch, threads in ((False, 1), (True, 2)):
        monkeypatch.setattr(T, "PREFETCH", prefetch)
        monkeypatch.setattr(T, "STEP_THREADS", threads)
        results.append(T.train(cfg, x, y, progress=False).model.theta.copy())
    np.testing.assert_array_equal(results[0], results[1])
