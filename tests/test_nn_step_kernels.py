"""The sped-up pieces of a training step (loss, ReLU, flatten, colsum, the batch gather) give
the very bits of the plain formulas they replaced, written out here as the reference, and Adam's
blocked step gives the same bits for any block size; see tests/test_nn_optim.py for Adam
against its float64 textbook."""


import numpy as np
import pytest

from pipeline.nn import layers as L
from pipeline.nn import optim
from pipeline.nn.batches import Batches
from pipeline.nn.losses import (
    log_softmax,
    row_max,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from pipeline.nn.optim import Optimizer


def bits(a):
    """The raw bytes of an array or scalar: equal only if every bit is (NaN == NaN, -0 != 0)."""
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def plain_loss(z, y, smoothing=0.0):
    """The loss as written before the speed-up: (loss, dz)."""
    N, K = z.shape
    m = z.max(axis=1, keepdims=True)
    zc = z - m
    lse = np.log(np.exp(zc).sum(axis=1, keepdims=True))
    zc -= lse
    nll = -zc[np.arange(N), y]
    if smoothing:
        loss = (1.0 - smoothing) * nll.mean() - smoothing * zc.mean(axis=1).mean()
    else:
        loss = nll.mean()
    dz = np.exp(zc)
    if smoothing:
        dz -= smoothing / K
    dz[np.arange(N), y] -= 1.0 - smoothing
    dz *= 1.0 / N
    return float(loss), dz


def logits(rng, n, k, dtype):
    z = (rng.standard_normal((n, k)) * rng.choice([0.1, 3.0, 30.0])).astype(dtype)
    z[0, :] = z[0, 0]  # a row of ties
    if n > 2 and k > 1:
        z[1, 1] = z[1].max() + 1e3  # a dominant logit: log p of the others far below -100
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_plain_formula_to_the_bit(dtype, smoothing):
    # row max down a transposed copy, add.reduce for sum and mean: the same loss and dz bits
    rng = np.random.default_rng(3)
    for n, k in [(128, 10), (1, 10), (7, 3), (1000, 10), (33, 17), (5, 1)]:
        for _ in range(5):
            z, y = logits(rng, n, k, dtype), rng.integers(0, k, n)
            loss, cache = softmax_cross_entropy_forward(z, y, smoothing)
            want_loss, want_dz = plain_loss(z, y, smoothing)
            assert bits(loss) == bits(want_loss), (n, k)
            assert bits(softmax_cross_entropy_backward(cache)) == bits(want_dz), (n, k)


def test_row_max_is_the_row_max_with_nan_and_inf():
    # row_max equals z.max(axis=1, keepdims=True), NaN and infinities included
    rng = np.random.default_rng(4)
    z = rng.standard_normal((9, 10)).astype(np.float32)
    z[2, 3], z[4, 0], z[5, 9], z[6, :] = np.nan, np.inf, -np.inf, -np.inf
    assert bits(row_max(z)) == bits(z.max(axis=1, keepdims=True))
    with np.errstate(invalid="ignore"):  # inf - inf in the rows with infinities
        zc = z - z.max(axis=1, keepdims=True)
        zc -= np.log(np.exp(zc).sum(axis=1, keepdims=True))
        assert bits(log_softmax(z)) == bits(zc)
    with pytest.raises(ValueError):  # no classes: an error, as z.max(axis=1) gives
        row_max(np.zeros((3, 0), np.float32))


def test_loss_still_refuses_labels_out_of_range():
    # a label >= K is an IndexError, never a silent pick from the next row
    z = np.zeros((4, 10), np.float32)
    with pytest.raises(IndexError):
        softmax_cross_entropy_forward(z, np.array([0, 1, 10, 2]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_the_plain_formula_to_the_bit(dtype):
    # forward against a zero row = np.maximum(x, 0.0); backward via a 0/1 mask = da * (a > 0),
    # signed zeros, NaN and infinities included, for dense (N, D) and conv (N, H, W, C) shapes
    rng = np.random.default_rng(5)
    for shape in [(128, 256), (3, 5), (2, 4, 4, 3), (6, 1), (7,)]:
        x = rng.standard_normal(shape).astype(dtype)
        flat = x.reshape(-1)
        flat[:6] = [-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-45]
        da = rng.standard_normal(shape).astype(np.float32)
        da.reshape(-1)[:3] = [np.inf, -2.0, np.nan]
        a, cache = L.relu_forward(x)
        assert bits(a) == bits(np.maximum(x, 0.0)), shape
        with np.errstate(invalid="ignore"):  # inf * 0, as the plain product gives
            assert bits(L.relu_backward(da, cache)) == bits(da * (np.maximum(x, 0.0) > 0)), shape


def test_flatten_is_a_view_and_colsum_reuses_read_only_ones():
    # flatten copies nothing; colsum's cached ones are read-only and give the plain column sums
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4, 1)
    out, shape = L.flatten_forward(x)
    assert out.shape == (2, 12) and np.shares_memory(out, x) and shape == x.shape
    rng = np.random.default_rng(6)
    big = L.ONES_CACHED + 1  # past the cached lengths: a fresh vector, the same sums
    for m, dtype in [(128, np.float32), (5, np.float64), (128, np.float64), (128, np.float32),
                     (big, np.float32)]:
        x2 = rng.standard_normal((m, 7)).astype(dtype)
        got = L.colsum(x2)
        assert bits(got) == bits(np.ones(m, dtype=dtype) @ x2)
    ones = L._ones(128, np.dtype(np.float32))
    assert not ones.flags.writeable and ones.dtype == np.float32 and (ones == 1).all()
    assert L._ones(128, np.dtype(np.float32)) is ones  # made once


def test_batch_gather_equals_fancy_indexing_in_every_ring_buffer():
    # np.take(mode="clip") into the ring buffers gives x[idx] for each batch, the last one short
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((70, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 70)
    perm = rng.permutation(70)
    got = [(xb.copy(), yb) for xb, yb in Batches(x, y, perm, 16, {}, None, None, False)]
    assert len(got) == 5 and got[-1][0].shape[0] == 6
    for i, (xb, yb) in enumerate(got):
        idx = perm[i * 16:(i + 1) * 16]
        assert bits(xb) == bits(x[idx]) and bits(yb) == bits(y[idx])


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_blocks_change_no_bit_and_the_state_round_trips(monkeypatch, name):
    # the Adam step runs in blocks of ADAM_BLOCK: any block size (here one not dividing n, nor
    # n_decay, the end of the decayed part) gives the same bits as one block; and the state
    # saved mid-run (the textbook m, v) and loaded into a new optimizer continues bit for bit
    rng = np.random.default_rng(8)
    n = 3001
    theta0 = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-6, 2)).astype(np.float32)
             for _ in range(40)]

    def run(block, resume_at=None):
        monkeypatch.setattr(optim, "ADAM_BLOCK", block)
        theta, opt = theta0.copy(), Optimizer(name, n, n_decay=1234, weight_decay=0.05)
        for i, g in enumerate(grads):
            if i == resume_at:
                saved = opt.state_dict()
                opt = Optimizer(name, n, n_decay=1234, weight_decay=0.05)
                opt.load_state_dict(saved)
            opt.step(theta, g.copy(), 1e-3)
        return theta, opt.state_dict()

    whole, state = run(1 << 20)
    for got, got_state in (run(1000), run(1 << 20, resume_at=17)):
        assert bits(got) == bits(whole)
        assert all(bits(got_state[k]) == bits(state[k]) for k in ("M", "V"))
    assert np.abs(whole - theta0).max() > 1e-3  # it moved
