"""Averaged weights: an exponential moving average (EMA) of a model's flat parameter vector
`theta`, and the BatchNorm statistics recomputed for weights the running statistics were not
measured with.

The EMA is one vectorized float32 update per optimizer step,

    ema_t = d_t * ema_{t-1} + (1 - d_t) * theta_t,   d_t = min(decay, (1 + t) / (10 + t)),

t the number of updates before this one and ema_{-1} the initial weights; the warm-up d_t keeps
the first steps from being dominated by the initialization (TensorFlow's num_updates rule).
Only `theta` (every trained parameter) is averaged. BatchNorm running means and variances are
state, not weights: an average of them describes none of the averaged networks, so
`recompute_bn` measures them afresh for the weights in the model. When and on which rows is the
training loop's business (pipeline/train.py).
"""

from __future__ import annotations

import numpy as np

from pipeline.nn.model import Model

BN_BATCH = 1000  # rows per inference pass of recompute_bn (memory only: the result is the same)


def warmup_decay(decay, t):
    """d_t = min(decay, (1 + t) / (10 + t)): the decay of update number t (0-based)."""
    return min(float(decay), (1.0 + t) / (10.0 + t))


class WeightEMA:
    """The running average of a flat parameter vector: `.theta` (n,) float32, `.steps` updates."""

    def __init__(self, theta, decay, steps=0):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.theta = np.array(theta, dtype=np.float32)  # (n,) a copy: ema_{-1} = the init
        self.steps = int(steps)
        self._tmp = np.empty_like(self.theta)  # (n,) scratch, so a step allocates nothing

    def update(self, theta):
        """One step: ema = d_t * ema + (1 - d_t) * theta, in place."""
        d = np.float32(warmup_decay(self.decay, self.steps))
        np.multiply(theta, np.float32(1.0) - d, out=self._tmp)  # (n,) (1 - d) * theta
        self.theta *= d
        self.theta += self._tmp
        self.steps += 1

    def state_dict(self):
        """The arrays a checkpoint stores (the decay comes from the configuration)."""
        return {"theta": self.theta.copy(), "steps": np.array(self.steps, dtype=np.int64)}

    def load_state_dict(self, d):
        if np.shape(d["theta"]) != self.theta.shape:
            raise ValueError(f"ema theta must have shape {self.theta.shape}, got "
                             f"{np.shape(d['theta'])}")
        self.theta[...] = d["theta"]
        self.steps = int(d["steps"])


def recompute_bn(model, x, batch=BN_BATCH, threads=1):
    """Set every BatchNorm layer's running mean and variance to the statistics of its input over
    the rows x (N, 28, 28, 1), as the model runs at inference. Returns the model.

    Layer by layer in order: BatchNorm layer k's input is computed by the network's layers
    before it in eval mode, earlier BatchNorm layers using the statistics just recomputed (so
    no dropout, and nothing depends on how rows fall into batches), and its mean and unbiased
    variance (the convention of the running statistics, as PyTorch) are accumulated over all
    rows, per channel, in float64 (Chan's pairwise merge of per-batch mean and squared
    deviations). Cost: one inference pass over x per BatchNorm layer, of the layers before it.
    A model without BatchNorm is returned unchanged."""
    layers = model.spec["layers"]
    for k, ly in enumerate(layers):
        if ly["type"] != "bn":
            continue
        prefix = _prefix(model, k)
        n, mean, m2 = 0, np.zeros(ly["c"]), np.zeros(ly["c"])  # (C,) float64 each
        for s in range(0, x.shape[0], batch):
            z = prefix.forward(x[s : s + batch], threads=threads).reshape(-1, ly["c"])  # (M, C)
            nb = z.shape[0]
            mb = z.mean(axis=0, dtype=np.float64)  # (C,)
            m2b = np.square(z - mb.astype(np.float32), dtype=np.float64).sum(axis=0)  # (C,)
            delta = mb - mean  # (C,)
            mean += delta * (nb / (n + nb))
            m2 += m2b + delta * delta * (n * nb / (n + nb))
            n += nb
        model.params[f"{ly['name']}.mean"][...] = mean
        model.params[f"{ly['name']}.var"][...] = m2 / max(n - 1, 1)
    return model


def _prefix(model, stop):
    """A Model of the layers [0, stop) of `model` (their parameters copied)."""
    layers = model.spec["layers"][:stop]
    names = {ly["name"] for ly in layers}
    params = {k: v for k, v in model.params.items() if k.rsplit(".", 1)[0] in names}
    return Model({**model.spec, "layers": layers}, params)


def load_average(model, ema, x, threads=1):
    """Put the EMA weights `ema` (a WeightEMA) into `model` and recompute its BatchNorm
    statistics over x: the averaged model, ready for inference. Returns the model."""
    model.theta[...] = ema.theta
    return recompute_bn(model, x, threads=threads)


__all__ = ["BN_BATCH", "WeightEMA", "load_average", "recompute_bn", "warmup_decay"]
