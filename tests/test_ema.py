"""EMA of the weights (pipeline/nn/averaging.py, used by pipeline/train.py): the update rule, the
recomputed BatchNorm statistics, what train() returns with ema, resume, ema=0 leaving training
as it was, the option on the command line, make and the experiment harness."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline.train as T
from pipeline import paramfile
from pipeline.cli import cli
from pipeline.nn import averaging as A
from pipeline.nn.averaging import WeightEMA, recompute_bn, warmup_decay
from pipeline.nn.layers import BN_EPS
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.nn.plan import layer_forward
from pipeline.params import ParamError, TrainConfig, resolve
from pipeline.train import evaluate, train
from tests.conftest import REPO
from tests.test_params import make, scratch  # noqa: F401 (a fixture)
from tests.test_train import toy

SMALL_CNN = dict(model="cnn", epochs=2, batch_size=32, plan="8c5-p-fc16", dropout=0.2,
                 augment="shift=1")


# ------------------------------------------------------------------------------ the update rule


def test_warmup_decay_follows_the_formula():
    # d_t = min(decay, (1+t)/(10+t)): 0.1 at the first step, then the decay once it is reached
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.5, 7) == pytest.approx(8 / 17)
    assert [warmup_decay(0.5, t) for t in (8, 9, 100)] == [0.5, 0.5, 0.5]
    assert warmup_decay(0.999, 10**6) == 0.999


def test_update_matches_a_hand_computation():
    # from init [0, 10]: theta [1, 0] with d=0.1 gives [0.9, 1.0]; then [2, 2] with d=2/11
    # gives [(1.8 + 18)/11, (2 + 18)/11] = [1.8, 1.8182]
    ema = WeightEMA(np.array([0.0, 10.0], np.float32), 0.999)
    ema.update(np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(ema.theta, [0.9, 1.0], rtol=1e-6)
    ema.update(np.array([2.0, 2.0], np.float32))
    np.testing.assert_allclose(ema.theta, [1.8, 20 / 11], rtol=1e-6)
    assert ema.steps == 2 and ema.theta.dtype == np.float32


def test_update_matches_a_float64_loop_over_a_long_sequence():
    # 300 steps of a random walk: the in-place float32 update equals the formula in float64
    rng = np.random.default_rng(0)
    init = rng.normal(size=50).astype(np.float32)
    walk = np.cumsum(rng.normal(size=(300, 50)), axis=0).astype(np.float32)
    ema, ref = WeightEMA(init, 0.9), init.astype(np.float64)
    for t, theta in enumerate(walk):
        ema.update(theta)
        d = min(0.9, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * theta
    np.testing.assert_allclose(ema.theta, ref, rtol=1e-5, atol=1e-5)


def test_ema_keeps_a_copy_and_refuses_a_bad_decay():
    # the average is its own float32 copy (the model's theta moves on); decay must be in (0, 1)
    theta = np.ones(4, np.float32)
    ema = WeightEMA(theta, 0.5)
    theta += 1
    assert (ema.theta == 1).all()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay"):
            WeightEMA(theta, bad)


def test_training_averages_the_weights_after_every_step(monkeypatch):
    # train() with ema updates the average once per optimizer step, from the weights after the
    # step, starting from the initial weights: the returned MLP (no BatchNorm) is exactly that
    seen = []
    real = T.train_step

    def recording(model, *a, **k):
        if not seen:
            seen.append(model.theta.astype(np.float64))  # the initialization
        out = real(model, *a, **k)
        seen.append(model.theta.astype(np.float64))
        return out

    monkeypatch.setattr(T, "train_step", recording)
    x, y = toy(100, 0)
    cfg = TrainConfig(model="mlp", epochs=2, batch_size=32, hidden=(16,), ema=0.8)
    r = train(cfg, x, y, progress=False)
    ref = seen[0]
    for t, theta in enumerate(seen[1:]):
        d = min(0.8, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * theta
    assert len(seen) == 1 + 2 * 4  # 100 rows in batches of 32: 4 steps per epoch
    np.testing.assert_allclose(r.model.theta, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(r.model.theta, seen[-1], atol=1e-4)  # not the last weights


# ------------------------------------------------------------------ BatchNorm statistics


def bn_reference(model, x):
    """Each BatchNorm layer's mean and unbiased variance of its input over all of x, layer by
    layer with plain unfused eval-mode layers (earlier BatchNorms using the statistics found)."""
    P = {ly["name"]: {k.split(".", 1)[1]: v.copy() for k, v in model.params.items()
                      if k.split(".", 1)[0] == ly["name"]} for ly in model.spec["layers"]}
    z, stats = x, {}
    for ly in model.spec["layers"]:
        if ly["type"] == "bn":
            flat = z.reshape(-1, ly["c"]).astype(np.float64)
            P[ly["name"]]["mean"] = flat.mean(axis=0).astype(np.float32)
            P[ly["name"]]["var"] = flat.var(axis=0, ddof=1).astype(np.float32)
            stats[ly["name"]] = (flat.mean(axis=0), flat.var(axis=0, ddof=1))
        z, _ = layer_forward(ly, P[ly["name"]], z, False, None)
    return stats


def random_cnn(plan="8c5-p-16c3-p-fc16", seed=0):
    model = Model(build_spec("cnn", {**hyper("cnn"), "plan": plan}),
                  rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for k, v in model.params.items():  # trained-looking gamma/beta, stale running stats
        if k.endswith((".gamma", ".beta", ".mean")):
            v[...] = rng.normal(size=v.shape)
        elif k.endswith(".var"):
            v[...] = rng.uniform(0.1, 5, size=v.shape)
    return model


def hyper(model):
    return T.hyperparameters(TrainConfig(model=model))


def test_recomputed_statistics_equal_numpy_statistics_over_the_rows():
    # three BatchNorm layers, rows in uneven batches of 7: each mean and variance equals numpy's
    # over all 60 rows of that layer's input (the network before it in eval mode)
    model = random_cnn()
    x = np.random.default_rng(2).normal(size=(60, 28, 28, 1)).astype(np.float32)
    ref = bn_reference(model, x)
    assert len(ref) == 3
    recompute_bn(model, x, batch=7)
    for name, (mean, var) in ref.items():
        np.testing.assert_allclose(model.params[f"{name}.mean"], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.params[f"{name}.var"], var, rtol=1e-4, atol=1e-6)


def test_recomputed_statistics_normalize_each_batchnorm_input():
    # after recomputing, every BatchNorm's eval-mode output over the rows has per-channel mean
    # beta and variance gamma^2 var/(var+eps): its input is normalized exactly
    model = random_cnn(seed=3)
    x = np.random.default_rng(4).normal(size=(40, 28, 28, 1)).astype(np.float32)
    recompute_bn(model, x, batch=16)
    layers = model.spec["layers"]
    for k, ly in enumerate(layers):
        if ly["type"] != "bn":
            continue
        z = A._prefix(model, k + 1).forward(x).reshape(-1, ly["c"]).astype(np.float64)
        g, b = model.params[f"{ly['name']}.gamma"], model.params[f"{ly['name']}.beta"]
        v = model.params[f"{ly['name']}.var"]
        n = z.shape[0]
        np.testing.assert_allclose(z.mean(axis=0), b, atol=1e-4)
        np.testing.assert_allclose(z.var(axis=0), g**2 * v / (v + BN_EPS) * (n - 1) / n,
                                   rtol=1e-3, atol=1e-5)


def test_recomputed_statistics_do_not_depend_on_the_batch_size_and_skip_no_bn_models():
    # batches of 5 or of all rows give the same statistics; an MLP (no BatchNorm) is unchanged
    x = np.random.default_rng(5).normal(size=(30, 28, 28, 1)).astype(np.float32)
    a, b = random_cnn(seed=6), random_cnn(seed=6)
    recompute_bn(a, x, batch=5)
    recompute_bn(b, x, batch=1000)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-5, atol=1e-6)
    mlp = Model(build_spec("mlp", {**hyper("mlp"), "hidden": (8,)}))
    before = {k: v.copy() for k, v in mlp.params.items()}
    recompute_bn(mlp, x)
    assert all((mlp.params[k] == before[k]).all() for k in before)


# ------------------------------------------------------------------ what train() returns


def test_ema_returns_the_average_with_recomputed_bn_at_the_last_epoch():
    # with a dev set the kept model is the end-of-run average (best_epoch = last), its BatchNorm
    # statistics those of the train rows, and dev_accuracy/dev_proba are its own figures
    x, y = toy(120, 0)
    xd, yd = toy(40, 1)
    r = train(TrainConfig(**SMALL_CNN, ema=0.9), x, y, xd, yd, progress=False)
    assert r.best_epoch == 2 and len(r.history) == 2 and r.hyperparameters["ema"] == 0.9
    check = Model(r.model.spec, {k: v.copy() for k, v in r.model.params.items()})
    recompute_bn(check, x)
    for k in check.params:
        np.testing.assert_allclose(r.model.params[k], check.params[k], rtol=1e-6, atol=1e-7)
    _, acc, proba = evaluate(r.model, xd, yd)  # (train's ran on one BLAS thread: not bytes)
    assert r.dev_accuracy == acc
    np.testing.assert_allclose(r.dev_proba, proba, rtol=1e-5, atol=1e-7)


def test_ema_with_refit_averages_the_refit_over_every_row():
    # refit with ema: the second fit runs the full epochs and its average gets BatchNorm
    # statistics of train+dev rows
    x, y = toy(80, 0)
    xd, yd = toy(40, 1)
    r = train(TrainConfig(**SMALL_CNN, ema=0.9, refit=True), x, y, xd, yd, progress=False)
    assert len(r.refit_history) == 2 and r.best_epoch == 2
    check = Model(r.model.spec, {k: v.copy() for k, v in r.model.params.items()})
    recompute_bn(check, np.concatenate([x, xd]))
    for k in check.params:
        np.testing.assert_allclose(r.model.params[k], check.params[k], rtol=1e-6, atol=1e-7)


def test_ema_zero_trains_exactly_as_without_it(monkeypatch):
    # ema=0 (or unset) keeps no average, never calls the update, and gives the same bytes, the
    # dev-picked best epoch included
    def never(*a, **k):
        raise AssertionError("the EMA update ran with ema=0")

    monkeypatch.setattr(WeightEMA, "update", never)
    x, y = toy(100, 0)
    xd, yd = toy(40, 1)
    cfg = TrainConfig(**SMALL_CNN)
    plain = train(cfg, x, y, xd, yd, progress=False)
    zero = train(cfg.replace(ema=0.0), x, y, xd, yd, progress=False)
    assert zero.hyperparameters["ema"] == 0.0
    for k in plain.model.params:
        assert plain.model.params[k].tobytes() == zero.model.params[k].tobytes(), k
    assert plain.best_epoch == zero.best_epoch and plain.dev_accuracy == zero.dev_accuracy


def test_ema_changes_the_model():
    # the same run with ema on ends with other weights (the test above could not pass by luck)
    x, y = toy(100, 0)
    a = train(TrainConfig(**SMALL_CNN), x, y, progress=False)
    b = train(TrainConfig(**SMALL_CNN, ema=0.9), x, y, progress=False)
    assert not np.array_equal(a.model.theta, b.model.theta)


@pytest.mark.parametrize("refit", [False, True])
def test_resume_with_ema_equals_uninterrupted(tmp_path, monkeypatch, refit):
    # stopped after every epoch and resumed from its checkpoint, an ema run ends with the bytes
    # of an uninterrupted one: the average and its step count are in the checkpoint
    x, y = toy(96, 0)
    xd, yd = toy(40, 1)
    cfg = TrainConfig(**SMALL_CNN, ema=0.9, refit=refit)
    whole = train(cfg, x, y, xd, yd, progress=False)
    ck = tmp_path / "ck.npz"
    real = T.fit
    stored = []

    def one_epoch_then_crash(*a, **k):
        *args, save = a

        def save_and_stop(state):
            save(state)
            with np.load(ck) as z:
                stored.append((int(z["ema/steps"]), state.ema.steps))
            raise KeyboardInterrupt

        return real(*args, save_and_stop, **k)

    monkeypatch.setattr(T, "fit", one_epoch_then_crash)
    for _ in range(10):
        try:
            parts = train(cfg, x, y, xd, yd, progress=False, checkpoint=ck, resume=True)
            break
        except KeyboardInterrupt:
            pass
    # 96 rows in batches of 32: 3 steps an epoch; the refit's 136 rows: 5
    assert stored == [(3, 3), (6, 6)] + ([(5, 5), (10, 10)] if refit else [])
    for k in whole.model.params:
        assert whole.model.params[k].tobytes() == parts.model.params[k].tobytes(), k
    assert whole.dev_proba.tobytes() == parts.dev_proba.tobytes()


def test_checkpoint_without_the_average_is_refused(tmp_path):
    # a checkpoint of an ema config that lost its average is not resumed as if it had none
    x, y = toy(64, 0)
    cfg = TrainConfig(**{**SMALL_CNN, "epochs": 1}, ema=0.9)
    ck = tmp_path / "ck.npz"
    train(cfg, x, y, progress=False, checkpoint=ck)
    with np.load(ck) as z:
        kept = {k: z[k] for k in z.files if not k.startswith("ema/")}
    with open(ck, "wb") as f:
        np.savez(f, **kept)
    with pytest.raises(ValueError, match="weight average"):
        train(cfg, x, y, progress=False, checkpoint=ck, resume=True)


# ------------------------------------------------------------------ the option


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--root", str(root), *args])


def test_ema_is_validated_and_refused_with_patience():
    # the library refuses a decay outside [0, 1) and ema with early stopping, by name
    with pytest.raises(ParamError, match=r"ema .*\[0, 1\)"):
        resolve(TrainConfig(model="cnn", ema=1.0))
    with pytest.raises(ParamError, match="--patience 3"):
        resolve(TrainConfig(model="cnn", ema=0.99, patience=3))
    with pytest.raises(ParamError, match="does not apply"):
        resolve(TrainConfig(model="seed", ema=0.99))
    assert resolve(TrainConfig(model="mlp", ema=0.99, refit=True))["ema"] == 0.99


@pytest.mark.parametrize("args,words", [
    (["--ema", "1.5"], ["--ema", "[0, 1)"]),
    (["--ema", "-0.1"], ["--ema", "[0, 1)"]),
    (["--ema", "x"], ["--ema"]),
    (["--ema", "0.99", "--patience", "2"], ["--ema 0.99", "--patience 2", "set one"]),
    (["--model", "seed", "--ema", "0.99"], ["--ema", "does not apply"]),
])
def test_bad_ema_options_are_one_line_usage_errors(tmp_path, args, words):
    # a bad value or combination: exit 2, naming the options, nothing trained or saved
    result = invoke(tmp_path, "train", *args)
    assert result.exit_code == 2, result.output
    assert all(w in result.output for w in words), result.output
    assert "Traceback" not in result.output and not (tmp_path / "params.toml").exists()


def test_patience_in_params_file_with_ema_given_is_refused(tmp_path):
    # a patience that sticks in params.toml meets --ema on the command line: still refused
    assert invoke(tmp_path, "params", "--patience", "2").exit_code == 0
    before = (tmp_path / "params.toml").read_text()
    result = invoke(tmp_path, "train", "--ema", "0.999")
    assert result.exit_code == 2 and "--patience 2" in result.output
    assert (tmp_path / "params.toml").read_text() == before


def test_ema_sticks_in_params_toml_and_shows_in_help(tmp_path):
    # --ema is in --help with its default, and a set value is stored in the model's table
    assert "--ema" in invoke(tmp_path, "train", "--help").output
    assert invoke(tmp_path, "params", "--ema", "0.999").exit_code == 0
    values = paramfile.load(tmp_path / "params.toml")
    assert values["cnn"]["ema"] == 0.999
    _, cfg, _ = paramfile.configs(values)
    assert T.hyperparameters(cfg)["ema"] == 0.999


def test_make_variable_ema(scratch):  # noqa: F811
    # `make params EMA=0.999` sets it, `make params EMA=1.5` is refused with one line
    root, _ = scratch
    out = make(root, "params", "EMA=0.999")
    assert out.returncode == 0, out.stderr
    assert "ema = 0.999" in (root / "params.toml").read_text()
    out = make(root, "params", "EMA=1.5")
    assert out.returncode != 0 and "ema" in out.stderr and "[0, 1)" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ the experiment harness


def test_cvexp_set_ema_scores_the_average(tmp_path, monkeypatch):
    # scripts/experiments/cvexp.py NAME --set ema=0.9 trains with the average and scores the
    # model train() returned (not the checkpoint's last raw weights)
    spec = importlib.util.spec_from_file_location("cvexp", REPO / "scripts/experiments/cvexp.py")
    cvexp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cvexp)
    x, y = toy(150, 0)
    x8 = np.clip((x.reshape(150, 784) + 0.4) * 100, 0, 255).astype(np.uint8)
    monkeypatch.setattr(cvexp, "load", lambda: (x8, y.astype(np.int64)))
    monkeypatch.setattr(cvexp, "RESULTS", tmp_path)
    monkeypatch.setitem(cvexp.M.DEFAULTS, "cnn", dict(cvexp.M.DEFAULTS["cnn"]))
    monkeypatch.setattr(T, "STEP_THREADS", T.STEP_THREADS)
    returned, scored = [], []
    real_train, real_predict = T.train, cvexp.predict_proba

    def train_spy(*a, **k):
        r = real_train(*a, **k)
        returned.append({k: v.copy() for k, v in r.model.params.items()})
        return r

    def predict_spy(models, x, **k):
        scored.append({k: v.copy() for k, v in models[0].params.items()})
        return real_predict(models, x, **k)

    monkeypatch.setattr(T, "train", train_spy)
    monkeypatch.setattr(cvexp, "predict_proba", predict_spy)
    cvexp.main(["tiny", "--set", "ema=0.9", "epochs=1", "plan=8c5-p-fc16", "batch_size=32"])
    row = json.loads((tmp_path / "tiny.jsonl").read_text())
    assert row["hp"]["ema"] == 0.9 and row["hp"]["epochs"] == 1
    for k in returned[0]:
        np.testing.assert_array_equal(scored[0][k], returned[0][k])


def test_digits_run_with_ema_end_to_end(tmp_path):
    # `digits run --ema 0.9` (a tiny cnn, what `make submit EMA=0.9` runs) trains the average,
    # records ema in metrics.json, and the report says the model is the average
    from pipeline.config import Paths
    from pipeline.nn import load_models
    from tests.conftest import make_competition_zip
    src = make_competition_zip(tmp_path / "src" / "digit-recognizer.zip", n_train=200, n_test=40)
    root = tmp_path / "p"
    args = ["--model", "cnn", "--epochs", "2", "--batch-size", "32", "--plan", "8c5-p-fc16",
            "--ensemble", "1", "--augment", "none", "--ema", "0.9"]
    runner = CliRunner()
    result = runner.invoke(cli, ["--root", str(root), "run", "--mirror", str(src.parent), *args],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    paths = Paths(root)
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["hyperparameters"]["ema"] == 0.9
    assert paramfile.load(paths.params)["cnn"]["ema"] == 0.9  # it sticks
    model = load_models(paths.model)[0]
    assert any(k.endswith(".var") for k in model.params)
    result = runner.invoke(cli, ["--root", str(root), "report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (root / "data" / "reports" / "latest" / "report.md").read_text()
    assert "moving average of its weights (ema 0.9)" in text


def test_sweep_grid_takes_ema():
    # GRID="ema=0,0.999" sweeps it like any parameter; a bad value is named
    from pipeline.cv import parse_grid
    points = parse_grid("ema=0,0.999 lr=1e-3", TrainConfig(model="cnn"))
    assert [p["ema"] for p in points] == [0.0, 0.999]
    with pytest.raises(ValueError, match="ema=0.5,1"):
        parse_grid("ema=0.5,1", TrainConfig(model="cnn"))
