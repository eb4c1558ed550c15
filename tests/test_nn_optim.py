"""Each optimizer against its textbook update on a tiny quadratic, and the schedules' shapes."""

import math

import numpy as np
import pytest

from pipeline.nn.optim import Optimizer
from pipeline.nn.schedules import make_schedule

A = np.array([1.0, 3.0, 0.5], np.float64)  # loss = 0.5 * sum(A * theta^2), grad = A * theta
THETA0 = np.array([1.0, -2.0, 0.5])


def run(name, steps=3, lr=0.1, **kw):
    opt = Optimizer(name, 3, n_decay=2, **kw)
    theta = THETA0.astype(np.float32)
    for _ in range(steps):
        opt.step(theta, (A * theta).astype(np.float32), lr)
    return theta


def expected(name, steps=3, lr=0.1, wd=0.0, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """Hand-written textbook updates in float64; decay applies to the first 2 entries."""
    th = THETA0.copy()
    decay = np.array([1.0, 1.0, 0.0]) * wd
    v = np.zeros(3)
    m = np.zeros(3)
    s = np.zeros(3)
    for t in range(1, steps + 1):
        g = A * th
        if name != "adamw":
            g = g + decay * th
        if name == "sgd":
            th = th - lr * g
        elif name == "momentum":
            v = mu * v + g
            th = th - lr * v
        elif name == "nesterov":
            v = mu * v + g
            th = th - lr * (g + mu * v)
        else:
            if name == "adamw":
                th = th * (1 - lr * decay)
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            mhat, shat = m / (1 - b1**t), s / (1 - b2**t)
            th = th - lr * mhat / (np.sqrt(shat) + eps)
    return th


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_optimizer_matches_textbook(name, wd):
    # the fused in-place step equals the textbook formula (with L2 or decoupled decay)
    got = run(name, weight_decay=wd)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected(name, wd=wd), rtol=1e-5, atol=1e-6)


def test_optimizer_descends_quadratic():
    # every optimizer drives the quadratic's loss down over many steps
    for name in ["sgd", "momentum", "nesterov", "adam", "adamw"]:
        th = run(name, steps=200, lr=0.05)
        assert 0.5 * np.sum(A * th**2) < 1e-2, name


def test_optimizer_rejects_bad_names():
    # unknown optimizer names and negative decay are refused with the bad value in the message
    with pytest.raises(ValueError, match="'rmsprop'"):
        Optimizer("rmsprop", 3)
    with pytest.raises(ValueError, match="-1"):
        Optimizer("adam", 3, weight_decay=-1)


def test_schedules_shapes():
    # constant is flat; step drops by 10x; cosine falls monotonically to 0; one-cycle peaks at 25%
    n = 100
    c = make_schedule("constant", 0.1, n)
    assert all(c(s) == 0.1 for s in range(n))
    st = make_schedule("step", 0.1, n)
    assert math.isclose(st(0), 0.1) and math.isclose(st(30), 0.01) and st(99) < 1e-3
    co = [make_schedule("cosine", 0.1, n)(s) for s in range(n)]
    assert (
        math.isclose(co[0], 0.1) and abs(co[-1]) < 1e-12 and all(a >= b for a, b in zip(co, co[1:]))
    )
    oc = [make_schedule("onecycle", 0.1, n)(s) for s in range(n)]
    assert int(np.argmax(oc)) == 25 and math.isclose(oc[25], 0.1)
    assert math.isclose(oc[0], 0.1 / 25) and oc[-1] < 1e-4
    assert all(a <= b for a, b in zip(oc[:25], oc[1:26])) and all(
        a >= b for a, b in zip(oc[25:], oc[26:])
    )
    with pytest.raises(ValueError, match="'linear'"):
        make_schedule("linear", 0.1, n)


def textbook_adam(theta0, grads, lr, wd, n_decay, decoupled, t0=0, m0=None, v0=None,
                  b1=0.9, b2=0.999, eps=1e-8):
    """Adam/AdamW in float64 as the papers write it, from step t0 + 1 and state (m0, v0)."""
    th = theta0.astype(np.float64)
    m = np.zeros_like(th) if m0 is None else m0.astype(np.float64)
    v = np.zeros_like(th) if v0 is None else v0.astype(np.float64)
    decay = np.zeros_like(th)
    decay[:n_decay] = wd
    for t, g in enumerate(grads, start=t0 + 1):
        g = g.astype(np.float64)
        if decoupled:
            th = th * (1.0 - lr * decay)
        else:
            g = g + decay * th
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        th = th - lr * (m / (1.0 - b1**t)) / (np.sqrt(v / (1.0 - b2**t)) + eps)
    return th


def gradient_run(rng, n, steps):
    """Gradients at many scales, the last 100 coordinates tiny (there eps matters) and one
    coordinate always zero."""
    scale = 10.0 ** rng.uniform(-3, 1, n)
    scale[-100:] = 1e-7
    scale[0] = 0.0
    return [(rng.standard_normal(n) * scale).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.05])
@pytest.mark.parametrize("t0", [0, 10**6])
def test_adam_many_steps_within_float32_rounding_of_float64_textbook(name, wd, t0):
    # 300 float32 steps (from t = 1, or from t = 10^6 with a random state: bias corrections at
    # both ends) stay within a rounding bound of the float64 textbook; a wrong bias correction,
    # eps or decay misses it by orders of magnitude
    rng = np.random.default_rng(11)
    n, steps, lr = 5000, 300, 1e-3
    theta = rng.standard_normal(n).astype(np.float32)
    theta0 = theta.copy()
    grads = gradient_run(rng, n, steps)
    opt = Optimizer(name, n, n_decay=3000, weight_decay=wd)
    m0 = v0 = None
    if t0:
        m0 = (rng.standard_normal(n) * 1e-2).astype(np.float32)
        v0 = (rng.uniform(0, 1e-4, n)).astype(np.float32)
        opt.load_state_dict({"t": t0, "m": m0, "v": v0})
    for g in grads:
        opt.step(theta, g.copy(), lr)
    want = textbook_adam(theta0, grads, lr, wd, 3000, name == "adamw", t0, m0, v0)
    # per step: half an ulp of theta plus a few float32 roundings of an update of size <= ~lr
    bound = steps * (2.0**-24 * np.abs(want) + 1e-5 * lr)
    err = np.abs(theta - want)
    assert (err <= bound).all(), f"worst {err.max():.3g} vs bound {bound[err.argmax()]:.3g}"
    assert opt.t == t0 + steps


def test_adam_first_step_is_lr_times_sign():
    # t = 1: mhat = g, vhat = g^2, so the step is lr * g / (|g| + eps): about lr * sign(g)
    rng = np.random.default_rng(12)
    theta = rng.standard_normal(1000).astype(np.float32)
    g = (rng.standard_normal(1000) * 10.0 ** rng.uniform(-4, 2, 1000)).astype(np.float32)
    want = theta.astype(np.float64) - 0.01 * g / (np.abs(g.astype(np.float64)) + 1e-8)
    Optimizer("adam", 1000).step(theta, g.copy(), 0.01)
    np.testing.assert_allclose(theta, want, rtol=0, atol=2e-7)
