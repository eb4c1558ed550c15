"""train(): learns a separable toy problem, validates hyperparameters, early-stops, refits,
and a resumed run equals an uninterrupted one."""

import numpy as np
import pytest

from pipeline.nn.models import DEFAULTS
from pipeline.params import TrainConfig
from pipeline.train import hyperparameters, train


def toy(n, seed):
    """Ten classes, each a bright 6x6 square at its own place on a dark background."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = np.full((n, 28, 28, 1), -0.4, np.float32)
    for i, c in enumerate(y):
        r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
        x[i, r : r + 6, col : col + 6] = 2.0
    x += rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    return x, y


FAST = TrainConfig(model="mlp", epochs=3, batch_size=32, hidden=(32,), augment="shift=1", lr=3e-3)


def test_mlp_learns_toy_problem():
    # a small MLP reaches 100% dev accuracy on the toy data; history and dev_proba are filled
    x, y = toy(200, 0)
    xd, yd = toy(50, 1)
    r = train(FAST, x, y, xd, yd, progress=False)
    assert r.dev_accuracy == 1.0 and len(r.history) == 3 and 1 <= r.best_epoch <= 3
    assert r.dev_proba.shape == (50, 10) and r.dev_proba.dtype == np.float32
    assert np.allclose(r.dev_proba.sum(1), 1, atol=1e-5)
    assert set(r.history[0]) >= {
        "epoch",
        "train_loss",
        "train_acc",
        "dev_loss",
        "dev_acc",
        "lr",
        "seconds",
    }


def test_cnn_and_seed_train_without_dev():
    # cnn and seed models train one epoch with no dev set (dev figures are None)
    x, y = toy(64, 0)
    for cfg in [
        TrainConfig(model="cnn", epochs=1, batch_size=32),
        TrainConfig(model="seed", epochs=5),
    ]:
        r = train(cfg, x, y, None, None, progress=False)
        assert r.dev_accuracy is None and r.dev_proba is None and r.best_epoch == len(r.history)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("lr", -0.1, "lr .*got -0.1"),
        ("epochs", -2, "-2"),
        ("batch_size", -1, "-1"),
        ("optimizer", "rmsprop", "'rmsprop'"),
        ("schedule", "linear", "'linear'"),
        ("activation", "swish", "'swish'"),
        ("dropout", 1.0, "1.0"),
        ("label_smoothing", 1.5, "1.5"),
        ("hidden", (0,), "hidden"),
        ("augment", "spin=1", "spin"),
        ("model", "resnet", "'resnet'"),
        ("patience", -1, "-1"),
    ],
)
def test_bad_hyperparameters_are_named(field, value, msg):
    # each bad hyperparameter raises ValueError naming the bad value, before any training
    with pytest.raises(ValueError, match=msg):
        hyperparameters(TrainConfig().replace(**{field: value}))


def test_bad_arrays_are_named():
    # wrong image shapes and out-of-range labels are refused with the bad shape/value
    x, y = toy(20, 0)
    with pytest.raises(ValueError, match=r"\(20, 784\)"):
        train(FAST, x.reshape(20, 784), y, None, None, progress=False)
    with pytest.raises(ValueError, match="got 1..10"):
        train(FAST, x, y + 1, None, None, progress=False)


def test_defaults_are_overridden_only_when_set():
    # zero/empty/negative config fields keep the model defaults; set fields win
    hp = hyperparameters(TrainConfig(model="mlp"))
    assert hp["hidden"] == DEFAULTS["mlp"]["hidden"] and hp["lr"] > 0
    hp = hyperparameters(TrainConfig(model="mlp", lr=0.5, hidden=(7,), dropout=0.0))
    assert hp["lr"] == 0.5 and hp["hidden"] == (7,) and hp["dropout"] == 0.0


def test_early_stopping_keeps_best_epoch():
    # with patience 1 and a learning rate that ruins the model, training stops and keeps the best
    x, y = toy(100, 0)
    xd, yd = toy(50, 1)
    cfg = FAST.replace(epochs=8, patience=1, lr=2e-3, schedule="constant")
    r = train(cfg, x, y, xd, yd, progress=False)
    accs = [h["dev_acc"] for h in r.history]
    assert r.dev_accuracy == max(accs) and r.best_epoch == 1 + int(np.argmax(accs))
    assert len(r.history) <= 8


def test_refit_trains_on_all_rows_for_best_epochs():
    # refit returns a model trained on train+dev for the dev-selected number of epochs
    x, y = toy(100, 0)
    xd, yd = toy(50, 1)
    r = train(FAST.replace(refit=True), x, y, xd, yd, progress=False)
    assert len(r.refit_history) == r.best_epoch and r.dev_accuracy == 1.0


@pytest.mark.parametrize("refit", [False, True])
def test_resume_equals_uninterrupted(tmp_path, refit):
    # a run stopped after each epoch and resumed from its checkpoint ends with identical
    # parameters and history (timings aside) to one uninterrupted run with the same seed
    x, y = toy(96, 0)
    xd, yd = toy(40, 1)
    cfg = TrainConfig(
        model="cnn",
        epochs=2,
        batch_size=32,
        refit=refit,
        dropout=0.2,
        augment="shift=1,rotate=5,elastic=1",
    )
    whole = train(cfg, x, y, xd, yd, progress=False)
    ck = tmp_path / "ck.npz"
    import pipeline.train as T

    real = T.fit

    def one_epoch_then_crash(*a, **k):  # simulate an interruption after every epoch
        *args, save = a

        def save_and_stop(state):
            save(state)
            raise KeyboardInterrupt

        return real(*args, save_and_stop, **k)

    T.fit = one_epoch_then_crash
    crashes = 0
    try:
        for _ in range(10):
            try:
                parts = train(cfg, x, y, xd, yd, progress=False, checkpoint=ck, resume=True)
                break
            except KeyboardInterrupt:
                crashes += 1
    finally:
        T.fit = real
    assert crashes == 2 + (len(whole.refit_history) if refit else 0)
    for k in whole.model.params:
        np.testing.assert_array_equal(whole.model.params[k], parts.model.params[k])

    def strip(h):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in h]

    assert strip(whole.history) == strip(parts.history)
    assert strip(whole.refit_history) == strip(parts.refit_history)
    np.testing.assert_array_equal(whole.dev_proba, parts.dev_proba)


def test_resume_after_early_stop_does_not_train_on(tmp_path):
    # a checkpoint written when early stopping fired resumes to the same stopped result
    x, y = toy(100, 0)
    xd, yd = toy(50, 1)
    cfg = FAST.replace(epochs=8, patience=1, lr=2e-3, schedule="constant")
    ck = tmp_path / "ck.npz"
    first = train(cfg, x, y, xd, yd, progress=False, checkpoint=ck)
    assert len(first.history) < 8
    again = train(cfg, x, y, xd, yd, progress=False, checkpoint=ck, resume=True)
    assert len(again.history) == len(first.history) and again.best_epoch == first.best_epoch
    for k in first.model.params:
        np.testing.assert_array_equal(first.model.params[k], again.model.params[k])


def test_resume_refuses_other_config(tmp_path):
    # a checkpoint written for other settings is not silently resumed
    x, y = toy(40, 0)
    ck = tmp_path / "ck.npz"
    train(FAST.replace(epochs=1), x, y, None, None, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="different configuration"):
        train(
            FAST.replace(epochs=1, lr=0.1),
            x,
            y,
            None,
            None,
            progress=False,
            checkpoint=ck,
            resume=True,
        )
