"""The gradient check itself (`pipeline/nn/gradcheck.py`, `digits gradcheck`): it passes on
every architecture, and it fails, at the right layer, on a broken backward."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.nn import gradcheck as gc
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


def broken(monkeypatch, kind, fault):
    """Make the check's backward of every `kind` layer go through fault(ly, G, dout, dx) -> dx."""
    original = gc.layer_backward

    def backward(ly, P, G, dout, cache, need_dx):
        dx = original(ly, P, G, dout, cache, need_dx)
        return fault(ly, G, dout, dx) if ly["type"] == kind else dx

    monkeypatch.setattr(gc, "layer_backward", backward)


def test_a_wrong_weight_gradient_fails_that_tensor_only(monkeypatch):
    # dW off by 1% in one dense layer: its w fails, every input gradient still passes
    def fault(ly, G, dout, dx):
        if ly["name"] == "fc1":
            G["w"] *= 1.01
        return dx

    broken(monkeypatch, "dense", fault)
    assert failing(gc.check_model(small("mlp"), *data(), samples=6)) == ["fc1.w"]


def test_a_wrong_maxpool_backward_is_located_at_the_pool(monkeypatch):
    # a max-pool that sends the gradient to all four inputs: the rows above the pool pass, the
    # pool's input gradient fails, and so does everything that receives it; culprit names it
    broken(monkeypatch, "pool",
           lambda ly, G, dout, dx: np.repeat(np.repeat(dout, 2, axis=1), 2, axis=2) / 4)
    m = small("cnn")
    rows = gc.check_model(m, *data(), samples=6)
    names = [ly["name"] for ly in m.spec["layers"]]
    last_pool = max(i for i, ly in enumerate(m.spec["layers"]) if ly["type"] == "pool")
    after = [r for r in rows if r.layer in names[last_pool + 1:] or r.layer == "loss"]
    assert after and all(r.ok for r in after)
    assert f"{names[last_pool]}.input" in failing(rows) and "c1.w" in failing(rows)
    assert gc.culprit(rows).startswith(f"the backward of layer {names[last_pool]} (pool)")


def test_batchnorm_backward_without_its_mean_term_fails(monkeypatch):
    # a BatchNorm input gradient off by a per-channel constant (what dropping the -mean(dy)
    # term does) fails at that BatchNorm, while its gamma and beta and the layers above pass
    def fault(ly, G, dout, dx):
        return dx + dout.reshape(-1, dout.shape[-1]).mean(axis=0)

    broken(monkeypatch, "bn", fault)
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

    def fault(ly, G, dout, dx):
        G["b"] += 1e-4
        return dx

    broken(monkeypatch, "dense", fault)
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
    # an activation backward that forgets g'(z): exit 1, one error line naming that layer
    broken(monkeypatch, "act", lambda ly, G, dout, dx: dout)
    result = CliRunner().invoke(cli, ["gradcheck", "--model", "seed", "--samples", "4"])
    assert result.exit_code == 1 and "FAIL" in result.output
    assert "digits: error: gradient check failed: the backward of layer a1 (act)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("activation", ["sigmoid", "leaky_relu"])
def test_cli_checks_another_activation(activation):
    # --activation swaps the hidden activation, and the check still passes
    result = CliRunner().invoke(cli, ["gradcheck", "--model", "mlp", "--activation", activation,
                                      "--samples", "3"], catch_exceptions=False)
    assert result.exit_code == 0 and "all 15 gradients agree" in result.output


def test_cli_refuses_a_batch_too_small_for_batchnorm():
    # --batch below 4 is a usage error naming the option
    result = CliRunner().invoke(cli, ["gradcheck", "--batch", "2"])
    assert result.exit_code == 2 and "--batch" in result.output


def test_the_check_runs_the_network_the_model_runs():
    # the check's float64 pass gives the model's own training-mode logits (float32 rounding)
    for name in ("mlp", "cnn"):
        m = small(name, dropout=0.0)
        x, _ = data()
        logits64 = gc._Net64(m, seed=0).forward(x)[0]
        logits32, _ = m.forward_train(x.astype(np.float32), np.random.default_rng(0))
        np.testing.assert_allclose(logits64, logits32, rtol=1e-3, atol=1e-4)
