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
        return {
            "t": np.array(self.t, dtype=np.int64),
            **{k: v.copy() for k, v in self.state.items()},
        }

    def load_state_dict(self, d):
        self.t = int(d["t"])
        for k, v in self.state.items():
            v[...] = d[k]

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


def _adam_core(opt, theta, g, lr):
    # m <- b1 m + (1-b1) g ; v <- b2 v + (1-b2) g^2 ; theta -= lr * mhat / (sqrt(vhat) + eps)
    # with mhat = m/bc1, vhat = v/bc2, computed as the identical
    # theta -= (lr sqrt(bc2)/bc1) * m / (sqrt(v) + eps sqrt(bc2)): no bias-corrected copies.
    m, v, tmp = opt.state["m"], opt.state["v"], opt.tmp
    b1, b2, t = opt.beta1, opt.beta2, opt.t
    np.subtract(g, m, out=tmp)  # m += (1-b1)(g - m)
    tmp *= 1.0 - b1
    m += tmp
    np.square(g, out=g)  # v += (1-b2)(g^2 - v); g is scratch from here on (square: g*g, faster)
    g -= v
    g *= 1.0 - b2
    v += g
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    np.sqrt(v, out=tmp)
    tmp += opt.eps * math.sqrt(bc2)
    np.divide(m, tmp, out=tmp)
    tmp *= lr * math.sqrt(bc2) / bc1
    theta -= tmp


def _adam(opt, theta, g, lr):
    opt._l2(theta, g)
    _adam_core(opt, theta, g, lr)


def _adamw(opt, theta, g, lr):
    # theta <- theta * (1 - lr*wd) on the decayed part, then the Adam step
    if opt.weight_decay:
        theta[: opt.n_decay] *= 1.0 - lr * opt.weight_decay
    _adam_core(opt, theta, g, lr)


# name -> (update function, names of its state buffers)
OPTIMIZERS = {
    "sgd": (_sgd, ()),
    "momentum": (_momentum, ("v",)),
    "nesterov": (_nesterov, ("v",)),
    "adam": (_adam, ("m", "v")),
    "adamw": (_adamw, ("m", "v")),
}
