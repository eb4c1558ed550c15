"""Optimizers over one flat float32 parameter vector: SGD, momentum, Nesterov, Adam, AdamW.

The model keeps all its trainable parameters as views into one flat vector `theta` (and its
gradients into one flat `grad`), with the weight matrices first: `theta[:n_decay]` is what weight
decay applies to (biases and BatchNorm parameters are not decayed). So one step is a handful of
in-place vector operations over preallocated state buffers, whatever the number of layers.

Weight decay: for sgd/momentum/nesterov/adam it is L2 regularization (wd*theta added to the
gradient, as PyTorch's `weight_decay`); for adamw it is decoupled (theta *= 1 - lr*wd, Loshchilov &
Hutter 2019). Learning rates come from `schedules.py`; this module only applies them.
"""

from __future__ import annotations

import math

import numpy as np


class Optimizer:
    """`step(theta, grad, lr)` updates `theta` in place. `grad` is used as scratch (clobbered)."""

    def __init__(
        self, name, n, n_decay=None, weight_decay=0.0, momentum=0.9, betas=(0.9, 0.999), eps=1e-8
    ):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.name = name
        self.n_decay = n if n_decay is None else n_decay
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.t = 0  # steps taken
        self.state = {k: np.zeros(n, dtype=np.float32) for k in OPTIMIZERS[name][1]}
        self.tmp = np.empty(n, dtype=np.float32)  # scratch, never read across steps

    def step(self, theta, grad, lr):
        self.t += 1
        OPTIMIZERS[self.name][0](self, theta, grad, float(lr))

    def state_dict(self):
        """{"t", each state buffer}: as stored, so that loading it continues bit for bit (Adam's
        under "M" and "V", its scaled m and v: `_adam_core`)."""
        return {"t": np.array(self.t, dtype=np.int64),
                **{self._stored(k): v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, d):
        """From state_dict(), or with Adam's textbook m and v under "m" and "v" (converted)."""
        self.t = int(d["t"])
        for k, v in self.state.items():
            if self._stored(k) in d:
                v[...] = d[self._stored(k)]
            else:
                np.divide(d[k], self._scale(k), out=v, casting="unsafe")

    def _stored(self, key):
        return key.upper() if self.name in ("adam", "adamw") else key

    def _scale(self, key):
        """textbook buffer / stored buffer: Adam keeps m/(1-b1) and v/(1-b2) (`_adam_core`)."""
        if self.name in ("adam", "adamw"):
            return np.float32(1.0 - (self.beta1 if key == "m" else self.beta2))
        return np.float32(1.0)

    # helpers ----------------------------------------------------------------------------------
    def _l2(self, theta, grad):
        """grad[:n_decay] += wd * theta[:n_decay] (coupled L2)."""
        if self.weight_decay:
            d = self.n_decay
            np.multiply(theta[:d], self.weight_decay, out=self.tmp[:d])
            grad[:d] += self.tmp[:d]


def _sgd(opt, theta, g, lr):
    # theta <- theta - lr * (g + wd*theta)
    opt._l2(theta, g)
    g *= lr
    theta -= g


def _momentum(opt, theta, g, lr):
    # v <- mu*v + g ; theta <- theta - lr*v   (PyTorch form, dampening 0)
    opt._l2(theta, g)
    v = opt.state["v"]
    v *= opt.momentum
    v += g
    np.multiply(v, lr, out=g)
    theta -= g


def _nesterov(opt, theta, g, lr):
    # v <- mu*v + g ; theta <- theta - lr*(g + mu*v)
    opt._l2(theta, g)
    v = opt.state["v"]
    v *= opt.momentum
    v += g
    np.multiply(v, opt.momentum, out=opt.tmp)
    g += opt.tmp
    g *= lr
    theta -= g


ADAM_BLOCK = 1 << 17  # elements per block of the Adam step: the blocks of its five arrays
# (2.6 MB) stay in cache from one pass to the next: 2^17 beat 2^15, 2^16 and whole arrays on
# the Intel machine with 2 MB of L2 (python scripts/experiments/adam_step.py, 2026-12-02 16:58
# UTC); on the Zen 4 machine with 1 MB, whole arrays were fastest, 0.395 ms against 0.440 (20:28)


def _adam_core(opt, theta, g, lr, decay=1.0):
    # textbook: m <- b1 m + (1-b1) g ; v <- b2 v + (1-b2) g^2 ;
    # theta -= lr * mhat / (sqrt(vhat) + eps), mhat = m/bc1, vhat = v/bc2.
    # The state is kept scaled, M = m/(1-b1) and V = v/(1-b2), so that each update is a scale
    # and an add (M <- b1 M + g, V <- b2 V + g^2), and all the constants go into two scalars:
    # theta -= s * M / (sqrt(V) + e), r = sqrt((1-b2)/bc2), s = lr (1-b1) / (bc1 r), e = eps/r.
    # Ten passes instead of twelve, in blocks of ADAM_BLOCK; `decay` (AdamW's 1 - lr*wd) is
    # applied to theta[:n_decay] block by block first.
    M, V, tmp = opt.state["m"], opt.state["v"], opt.tmp
    b1, b2, t = opt.beta1, opt.beta2, opt.t
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    r = math.sqrt((1.0 - b2) / bc2)
    e, step = opt.eps / r, lr * (1.0 - b1) / (bc1 * r)
    d = opt.n_decay if decay != 1.0 else 0
    for i in range(0, theta.size, ADAM_BLOCK):
        j = min(i + ADAM_BLOCK, theta.size)
        th, gb, mb, vb, tb = theta[i:j], g[i:j], M[i:j], V[i:j], tmp[i:j]
        if i < d:
            th[: d - i] *= decay
        mb *= b1
        mb += gb
        vb *= b2
        np.square(gb, out=gb)  # g is scratch from here on (square: g*g, faster)
        vb += gb
        np.sqrt(vb, out=tb)
        tb += e
        np.divide(mb, tb, out=tb)
        tb *= step
        th -= tb


def _adam(opt, theta, g, lr):
    opt._l2(theta, g)
    _adam_core(opt, theta, g, lr)


def _adamw(opt, theta, g, lr):
    # theta <- theta * (1 - lr*wd) on the decayed part, then the Adam step
    _adam_core(opt, theta, g, lr, 1.0 - lr * opt.weight_decay)


# name -> (update function, names of its state buffers)
OPTIMIZERS = {
    "sgd": (_sgd, ()),
    "momentum": (_momentum, ("v",)),
    "nesterov": (_nesterov, ("v",)),
    "adam": (_adam, ("m", "v")),
    "adamw": (_adamw, ("m", "v")),
}
