"""Each named model overfits one small batch; models save/load without pickle, pickle for
joblib, and bad files raise a ModelFileError that says what to do."""

import pickle

import numpy as np
import pytest

from pipeline.config import UserError
from pipeline.nn import DEFAULTS, Model, ModelFileError, load_extra, load_models, save_models
from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from pipeline.nn.models import build_spec
from pipeline.nn.optim import Optimizer


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 28, 28, 1)).astype(np.float32), rng.permutation(np.arange(n) % 10)


def hp(name, **kw):
    return {**DEFAULTS[name], "model": name, **kw}


@pytest.mark.parametrize(
    "name,opt,lr,steps",
    [("mlp", "adam", 1e-3, 60), ("cnn", "adam", 3e-3, 60), ("seed", "sgd", 0.5, 300)],
)
def test_overfit_one_batch(name, opt, lr, steps):
    # a few steps on one fixed batch of 16 random images drive the loss near zero, accuracy 100%
    x, y = batch()
    rng = np.random.default_rng(0)
    model = Model(
        build_spec(name, hp(name, dropout=0.0, hidden=(32,) if name != "cnn" else ())), rng=rng
    )
    if name == "cnn":
        model = Model(build_spec("cnn", hp("cnn", dropout=0.0, plan="8c5-p-8c5-p-fc32")), rng=rng)
    o = Optimizer(opt, model.theta.size, model.n_decay)
    for _ in range(steps):
        z, caches = model.forward_train(x, rng)
        loss, c = softmax_cross_entropy_forward(z, y)
        model.backward(softmax_cross_entropy_backward(c), caches)
        o.step(model.theta, model.grad, lr)
    assert loss < 0.1, loss
    assert (model.forward(x, train=True, rng=rng).argmax(1) == y).all()
    assert model.theta.dtype == np.float32 and z.dtype == np.float32


def test_model_gradient_matches_finite_differences():
    # the whole CNN's backward (conv, BN, pool, dense, dropout with a fixed mask) agrees with
    # finite differences for every layer's input and every parameter (the `digits gradcheck` check)
    from pipeline.nn.gradcheck import check_model

    x, y = batch(4)
    spec = build_spec("cnn", hp("cnn", dropout=0.3, plan="2c3s-p-3c3-p-fc4"))
    m = Model(spec, rng=np.random.default_rng(1))
    rows = check_model(m, x, y, samples=8)
    names = {f"{r.layer}.{r.tensor}" for r in rows}
    assert {"c1.w", "c3.w", "c1bn.gamma", "c3bn.beta", "fc5.w", "fc5bn.gamma", "out.b",
            "c1.input", "drop5.input"} <= names
    bad = [(r.layer, r.tensor, r.error) for r in rows if not r.ok]
    assert not bad, bad


def test_save_load_round_trip(tmp_path):
    # several models (with BN running stats) and an extra dict survive a save/load without pickle
    a = Model(build_spec("cnn", hp("cnn", plan="4c5-p-4c5-p-fc8")), rng=np.random.default_rng(0))
    a.params["c1bn.mean"][...] = 0.25
    b = Model(build_spec("mlp", hp("mlp", hidden=(16,))), rng=np.random.default_rng(1))
    path = tmp_path / "m.npz"
    save_models(path, [a, b], extra={"normalizer": {"mean": 0.1}})
    with np.load(path, allow_pickle=False) as z:
        assert z["m0/spec"].dtype.kind == "U"
    a2, b2 = load_models(path)
    assert a2.spec == a.spec and b2.spec == b.spec
    for m, m2 in [(a, a2), (b, b2)]:
        for k in m.params:
            np.testing.assert_array_equal(m.params[k], m2.params[k])
            assert m2.params[k].dtype == np.float32
    x, _ = batch(3)
    np.testing.assert_array_equal(a.forward(x), a2.forward(x))
    assert load_extra(path) == {"normalizer": {"mean": 0.1}}


def test_model_pickles_for_joblib():
    # a pickled and restored model predicts the same and still has its flat buffers wired
    m = Model(build_spec("mlp", hp("mlp", hidden=(8,))), rng=np.random.default_rng(0))
    m2 = pickle.loads(pickle.dumps(m))
    x, _ = batch(2)
    np.testing.assert_array_equal(m.forward(x), m2.forward(x))
    m2.theta[:] = 0
    assert not m2.params["fc1.w"].any()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", None])
def test_load_bad_file_raises_user_error(tmp_path, content):
    # missing, empty, garbage and foreign .npz files give a ModelFileError, which the CLI shows
    # as one line like a UserError
    path = tmp_path / "m.npz"
    if content is None:
        np.savez(path, w=np.zeros(3))
    elif content:
        path.write_bytes(content)
    else:
        path = tmp_path / "missing.npz"
    with pytest.raises(ModelFileError) as e:
        load_models(path)
    assert str(path) in str(e.value)
    from pipeline.cli import nn_user_errors

    assert isinstance(e.value, nn_user_errors()) and not isinstance(e.value, UserError)


def test_load_incompatible_shapes(tmp_path):
    # a file whose arrays do not match its spec is reported as incompatible
    m = Model(build_spec("mlp", hp("mlp", hidden=(8,))), rng=np.random.default_rng(0))
    path = tmp_path / "m.npz"
    save_models(path, [m])
    with np.load(path) as z:
        d = dict(z)
    d["m0/fc1.w"] = np.zeros((3, 3), np.float32)
    np.savez(path, **d)
    with pytest.raises(ModelFileError, match="incompatible"):
        load_models(path)


def test_bad_spec_names_the_value():
    # unknown model, layer type and activation names are reported with the bad value
    with pytest.raises(ValueError, match="'resnet'"):
        build_spec("resnet", {})
    with pytest.raises(ValueError, match="'swish'"):
        Model({"layers": [{"type": "act", "name": "a", "fn": "swish"}]})


def test_eval_folds_batchnorm_exactly():
    # inference with BatchNorm folded into the conv/dense weights equals the layer-by-layer pass
    from pipeline.nn.plan import layer_forward

    m = Model(build_spec("cnn", hp("cnn", plan="4c5-p-4c5-p-fc8")), rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for k, v in m.params.items():
        if k.endswith((".mean", ".beta")):
            v[...] = rng.normal(size=v.shape)
        if k.endswith((".var", ".gamma")):
            v[...] = rng.uniform(0.5, 2, size=v.shape)
    x, _ = batch(300)
    h = x
    for ly, P in zip(m.spec["layers"], m._P):
        h, _ = layer_forward(ly, P, h, False, None)
    np.testing.assert_allclose(m.forward(x), h, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn", "seed"])
def test_float32_end_to_end(name):
    # no silent float64: every activation and input gradient of a training step stays float32
    from pipeline.nn.plan import layer_backward, layer_forward

    rng = np.random.default_rng(0)
    m = Model(build_spec(name, hp(name, plan="4c5-p-4c5-p-fc8")), rng=rng)
    x, y = batch(8)
    h, caches = x, []
    for ly, P in zip(m.spec["layers"], m._P):
        h, c = layer_forward(ly, P, h, True, rng)
        caches.append(c)
        assert h.dtype == np.float32, ly
    _, lc = softmax_cross_entropy_forward(h, y, 0.1)
    d = softmax_cross_entropy_backward(lc)
    for i in range(len(m.spec["layers"]) - 1, 0, -1):
        ly = m.spec["layers"][i]
        d = layer_backward(ly, m._P[i], m._G[i], d, caches[i], True)
        assert d.dtype == np.float32, ly
    assert m.grad.dtype == np.float32 and np.isfinite(m.grad).all()


def test_nn_imports_nothing_from_the_rest_of_the_package():
    # pipeline.nn stands alone: importing all of it loads no other pipeline module, and its
    # input constants agree with pipeline.config's
    import subprocess
    import sys

    code = ("import pkgutil, importlib, sys, pipeline.nn as nn\n"
            "for m in pkgutil.walk_packages(nn.__path__, 'pipeline.nn.'):\n"
            "    importlib.import_module(m.name)\n"
            "other = sorted(k for k in sys.modules if k.startswith('pipeline.')\n"
            "               and not k.startswith('pipeline.nn'))\n"
            "assert not other, other\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from pipeline import config
    from pipeline.nn import models

    assert (models.IMAGE_SIDE, models.N_PIXELS, models.N_CLASSES) == (
        config.IMAGE_SIDE, config.N_PIXELS, config.N_CLASSES)
