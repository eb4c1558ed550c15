"""The gradient check itself (`pipeline/nn/gradcheck.py`, `digits gradcheck`): it passes on
every architecture, and it fails, at the right layer, on a broken backward."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.nn import gradcheck as gc
from pipeline.nn import layers as L
from pipeline.nn import model as M
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec

SMALL = {"mlp": {"hidden": (16, 8)}, "cnn": {"plan": "4c3s-p-4c3-p-fc8"}, "seed": {}}


def small(name, **hp):
    spec = build_spec(name, {**DEFAULTS[name], "model": name, **SMALL[name], **hp})
    return Model(spec, rng=np.random.default_rng(0))


def data(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 28, 28, 1)), rng.integers(0, 10, n)


def failing(rows):
    return [f"{r.layer}.{r.tensor}" for r in rows if not r.ok]


@pytest.mark.parametrize("name", ["seed", "mlp", "cnn"])
def test_every_architecture_passes_with_every_tensor_checked(name):
    # each layer's input gradient and every trained parameter is checked, all below 1e-6
    m = small(name)
    rows = gc.check_model(m, *data(), samples=6)
    trained = {k for k in m.params if not k.endswith((".mean", ".var"))}
    assert trained <= {f"{r.layer}.{r.tensor}" for r in rows}
    assert {f"{ly['name']}.input" for ly in m.spec["layers"]} <= {
        f"{r.layer}.{r.tensor}" for r in rows}
    assert all(r.checked > 0 for r in rows) and not failing(rows), gc.table(rows)


def test_check_leaves_the_model_unchanged():
    # the check works on float64 copies: the model's parameters and running stats are untouched
    m = small("cnn")
    before = {k: v.copy() for k, v in m.params.items()}
    gc.check_model(m, *data(), samples=2)
    for k, v in m.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_a_wrong_weight_gradient_fails_that_tensor_only(monkeypatch):
    # dW off by 1% in one dense layer: its w fails, every input gradient still passes
    dense = M.LAYER_KINDS["dense"]

    def bwd(ly, P, G, dout, cache, need_dx):
        dx = dense[2](ly, P, G, dout, cache, need_dx)
        if ly["name"] == "fc1":
            G["w"] *= 1.01
        return dx

    monkeypatch.setitem(M.LAYER_KINDS, "dense", (dense[0], dense[1], bwd))
    assert failing(gc.check_model(small("mlp"), *data(), samples=6)) == ["fc1.w"]


def test_a_wrong_maxpool_backward_is_located_at_the_pool(monkeypatch):
    # a max-pool that sends the gradient to all four inputs: the rows above the pool pass, the
    # pool's input gradient fails, and so does everything that receives it
    pool = M.LAYER_KINDS["pool"]

    def bwd(ly, P, G, dout, cache, need_dx):
        return np.repeat(np.repeat(dout, 2, axis=1), 2, axis=2) / 4

    monkeypatch.setitem(M.LAYER_KINDS, "pool", (pool[0], pool[1], bwd))
    m = small("cnn")
    rows = gc.check_model(m, *data(), samples=6)
    names = [ly["name"] for ly in m.spec["layers"]]
    last_pool = max(i for i, ly in enumerate(m.spec["layers"]) if ly["type"] == "pool")
    after = [r for r in rows if r.layer in names[last_pool + 1:] or r.layer == "loss"]
    assert after and all(r.ok for r in after)
    assert f"{names[last_pool]}.input" in failing(rows) and "c1.w" in failing(rows)


def test_batchnorm_backward_without_its_mean_term_fails(monkeypatch):
    # the BatchNorm input gradient without the -mean(dy) term is caught at the BatchNorm layer
    bn = M.LAYER_KINDS["bn"]

    def bwd(ly, P, G, dout, cache, need_dx):
        xhat, gamma, rstd, shape = cache
        dy = dout.reshape(xhat.shape)
        G["beta"][...] = dy.sum(0)
        G["gamma"][...] = (dy * xhat).sum(0)
        dx = (dy - xhat * G["gamma"] / len(dy)) * gamma * rstd
        return dx.reshape(shape)

    monkeypatch.setitem(M.LAYER_KINDS, "bn", (bn[0], bn[1], bwd))
    bad = failing(gc.check_model(small("cnn"), *data(), samples=6))
    assert "fc5bn.input" in bad and "fc5bn.gamma" not in bad and "out.w" not in bad


def test_kinks_are_skipped_not_failed(monkeypatch):
    # ReLU pre-activations within h of 0: those nudges flip a unit, so they are skipped (and
    # counted); comparing them anyway would fail the check on a correct backward
    m = small("mlp", dropout=0.0, hidden=(8,))
    x, y = data()
    z = x.reshape(len(x), -1) @ m.params["fc1.w"]
    m.params["fc1.b"][:4] = -z[0, :4] + 1e-7  # sample 0 sits on the kink of units 0-3
    rows = gc.check_model(m, x, y, samples=8)
    assert sum(r.skipped for r in rows) > 0 and not failing(rows)
    monkeypatch.setattr(gc, "_kinks", lambda ly, x: None)
    assert failing(gc.check_model(m, x, y, samples=8))


def test_a_zero_gradient_passes_but_a_wrong_nonzero_one_fails(monkeypatch):
    # a bias right before BatchNorm has a zero gradient (BatchNorm cancels it): reported as zero
    # and passing; a backward that invents a gradient there fails
    m = small("cnn")
    rows = {f"{r.layer}.{r.tensor}": r for r in gc.check_model(m, *data(), samples=6)}
    assert rows["fc5.b"].zero and rows["fc5.b"].ok and not rows["out.b"].zero
    dense = M.LAYER_KINDS["dense"]

    def bwd(ly, P, G, dout, cache, need_dx):
        dx = dense[2](ly, P, G, dout, cache, need_dx)
        G["b"] += 1e-4
        return dx

    monkeypatch.setitem(M.LAYER_KINDS, "dense", (dense[0], dense[1], bwd))
    assert "fc5.b" in failing(gc.check_model(m, *data(), samples=6))


def test_numgrad_is_the_central_difference():
    # numgrad of sum(x^3) is 3x^2 + h^2 (exactly, for the central difference), x restored
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    g = gc.numgrad(lambda: float(np.sum(x ** 3)), x, h=1e-3)
    np.testing.assert_allclose(g, 3 * x ** 2 + 1e-6, rtol=1e-9)
    np.testing.assert_array_equal(x, [[0.5, -1.0], [2.0, 3.0]])
    only = gc.numgrad(lambda: float(np.sum(x ** 3)), x, index=[3])
    assert only[0, 0] == 0 and abs(only[1, 1] - 27) < 1e-6


def test_rel_error():
    # ||a-b|| / (||a|| + ||b||): 0 for equal tensors and for two zeros, 1 for opposite ones
    assert gc.rel_error([1.0, 2.0], [1.0, 2.0]) == 0 and gc.rel_error([0.0], [0.0]) == 0
    assert gc.rel_error([1.0, 2.0], [-1.0, -2.0]) == 1.0


def test_cli_prints_the_table_and_exits_0():
    # `digits gradcheck --model seed` prints one row per gradient and the verdict line
    result = CliRunner().invoke(cli, ["gradcheck", "--model", "seed", "--samples", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "fc1    dense" in result.output and "all 9 gradients agree" in result.output


def test_cli_exits_1_naming_the_failing_layer(monkeypatch):
    # a broken backward: exit 1 and one error line naming the tensor, no traceback
    act = M.LAYER_KINDS["act"]
    monkeypatch.setitem(M.LAYER_KINDS, "act", (act[0], act[1],
                                               lambda ly, P, G, d, c, n: d * (1 - c)))
    result = CliRunner().invoke(cli, ["gradcheck", "--model", "seed", "--samples", "4"])
    assert result.exit_code == 1 and "FAIL" in result.output
    assert "digits: error: gradient check failed: the backward of layer a1 (act)" in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_batch_too_small_for_batchnorm():
    # --batch below 4 is a usage error naming the option
    result = CliRunner().invoke(cli, ["gradcheck", "--batch", "2"])
    assert result.exit_code == 2 and "--batch" in result.output


def test_layers_used_by_the_check_are_the_models():
    # the check runs the model's own layer functions (so it checks the code that trains)
    assert gc.LAYER_KINDS is M.LAYER_KINDS and L.dense_backward.__module__ == L.__name__
