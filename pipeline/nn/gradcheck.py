"""The gradient check: backpropagation against central finite differences, layer by layer.

Backpropagation is easy to get subtly wrong and a wrong gradient still trains, only worse. The
check catches it. The whole network runs in float64 on a small batch in training mode; dropout
uses a fixed mask (each layer draws from its own generator, re-seeded on every pass). For every
layer the check compares, on a sample of entries (half the largest, half at random):
- the gradient of the loss with respect to the layer's input, and
- the gradient with respect to each of its trained parameters (not BatchNorm's running stats),

with the central difference (L(theta + h) - L(theta - h)) / 2h, and reports the relative error
||analytic - numeric|| / (||analytic|| + ||numeric||) per tensor. A correct backward gives about
1e-10 here; a dW off by 1% gives 5e-3. An entry whose +-h nudge flips a ReLU or a max-pool
winner sits on a kink of the loss, where the difference quotient means nothing: it is tried
again with h/10 and h/100, then skipped, counted, and another entry is drawn. `digits gradcheck`
prints the table; the tests call the same functions (`numgrad` for single layers, `check_model`
for whole networks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from pipeline.nn.model import BUFFERS, Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.nn.plan import LAYER_KINDS, layer_backward, layer_forward

TOL = 1e-6  # a check passes when its relative error is below this
H = 1e-5  # finite-difference step (float64): rounding noise ~eps*|L|/H, truncation ~H^2
SAMPLES = 12  # entries checked per tensor
BATCH = 4  # images in the batch


def rel_error(a, b) -> float:
    """||a - b|| / (||a|| + ||b||) over all entries; 0 when both are 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / scale) if scale else 0.0


def numgrad(f, x, h=H, index=None):
    """Central differences of the scalar f() with respect to the array x, which f reads and
    which is nudged in place (and restored): g[i] = (f(x + h e_i) - f(x - h e_i)) / 2h.
    `index` (flat indices) limits the entries computed; the others stay 0."""
    g = np.zeros(x.size, dtype=np.float64)  # (x.size,)
    flat = x.reshape(-1)  # a view: writes reach x
    assert np.shares_memory(flat, x), "numgrad needs a contiguous array"
    for i in range(x.size) if index is None else index:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g.reshape(x.shape)


@dataclass(frozen=True)
class Check:
    """One row of the table: the relative error of one gradient tensor."""

    layer: str  # the layer's name, or "loss"
    kind: str  # its type ("dense", "conv", ...)
    tensor: str  # "input" (the gradient passed to the layer below) or a parameter's name
    shape: tuple
    checked: int  # entries compared
    skipped: int  # entries on a kink (a ReLU or max-pool decision flipped), not compared
    error: float  # relative error over the checked entries
    zero: bool = False  # both sides below the finite differences' rounding noise: a zero gradient

    @property
    def ok(self) -> bool:
        return self.checked > 0 and self.error < TOL


# ----------------------------------------------------------------------------------------------
# The network in float64: the model's own layer functions, in order, on float64 copies


def _kinks(ly, x):
    """The discrete decisions a layer makes on its input x: which ReLU units are on, which
    element of each 2x2 window a max-pool picks. None for smooth layers."""
    if ly["type"] == "act" and ly["fn"] in ("relu", "leaky_relu"):
        return x > 0
    if ly["type"] == "pool":
        N, H, W, C = x.shape
        windows = x.reshape(N, H // 2, 2, W // 2, 2, C).transpose(0, 1, 3, 5, 2, 4)
        return windows.reshape(N, H // 2, W // 2, C, 4).argmax(axis=-1)
    return None


class _Net64:
    """A float64 copy of a model's parameters, run layer by layer in training mode with the
    model's own layer functions (each layer alone: a fused pair runs as its two layers)."""

    def __init__(self, model: Model, seed: int):
        self.layers = model.spec["layers"]
        self.P = [
            {p: np.array(model.params[f"{ly['name']}.{p}"], dtype=np.float64)
             for p in LAYER_KINDS[ly["type"]][0](ly)}
            for ly in self.layers
        ]
        self.seed = seed

    def forward(self, h, start=0):
        """Layers start.. on h -> (logits, inputs of each layer, caches, kink patterns)."""
        inputs, caches, kinks = [], [], []
        for i in range(start, len(self.layers)):
            ly = self.layers[i]
            rng = np.random.default_rng([self.seed, i])  # the same dropout mask on every pass
            inputs.append(h)
            kinks.append(_kinks(ly, h))
            h, cache = layer_forward(ly, self.P[i], h, True, rng)
            caches.append(cache)
        return h, inputs, caches, kinks

    def backward(self, dlogits, caches):
        """-> the gradient reaching each layer's input, and each layer's parameter gradients."""
        G = [{p: np.zeros_like(v) for p, v in P.items()} for P in self.P]
        d, dinputs = dlogits, [None] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            ly = self.layers[i]
            d = layer_backward(ly, self.P[i], G[i], d, caches[i], True)
            dinputs[i] = d
        return dinputs, G


def _same(a, b):
    return all(x is None or np.array_equal(x, y) for x, y in zip(a, b))


def _entries(analytic, samples, rng):
    """Which entries to nudge, in order of preference: half of them those with the largest
    backprop gradient (where a mistake matters most, and far above rounding noise), the rest
    at random (which catches gradient sent where none belongs, such as a max-pool loser)."""
    a = np.abs(analytic.reshape(-1))
    top = min(a.size, 4 * max(1, samples // 2))  # spares for entries on a kink
    big = np.argpartition(-a, top - 1)[:top] if top < a.size else np.arange(a.size)
    big = big[np.argsort(-a[big], kind="stable")]
    return [(big, max(1, samples // 2)), (rng.permutation(a.size), samples)]


def _compare(f, x, analytic, base_kinks, samples, h, rng):
    """Nudge entries of x (read by f) and compare with `analytic`; skip kinks.
    f() -> (loss, kink patterns). -> (checked, skipped, relative error, zero).

    A gradient that is truly zero (a bias just before BatchNorm, which cancels it) leaves both
    sides at rounding noise, whose ratio means nothing: when both norms are below the noise of
    the difference quotient (about eps*|L|/h per entry) the tensor counts as zero, error 0."""
    flat = x.reshape(-1)
    num, ana, done, skipped, loss, smallest = [], [], set(), 0, 0.0, h
    for order, quota in _entries(analytic, samples, rng):
        for j in order:
            if len(num) >= min(quota, flat.size) or skipped >= 4 * samples:
                break
            if j in done:
                continue
            done.add(j)
            old = flat[j]
            for step in (h, h / 10, h / 100):  # a nudge too big for a nearby kink: try smaller
                flat[j] = old + step
                fp, kp = f()
                flat[j] = old - step
                fm, km = f()
                flat[j] = old
                if _same(base_kinks, kp) and _same(base_kinks, km):
                    break
            else:
                skipped += 1
                continue
            num.append((fp - fm) / (2 * step))
            ana.append(analytic.reshape(-1)[j])
            loss, smallest = max(loss, abs(fp)), min(smallest, step)
    noise = 10 * np.finfo(np.float64).eps * max(1.0, loss) / smallest * np.sqrt(max(1, len(num)))
    if num and np.linalg.norm(ana) < noise and np.linalg.norm(num) < noise:
        return len(num), skipped, 0.0, True
    return len(num), skipped, rel_error(ana, num), False


def check_model(model: Model, x, y, *, samples=SAMPLES, h=H, seed=0, smoothing=0.0):
    """Backprop vs finite differences for every layer of `model` on the batch (x, y).

    x (N, 28, 28, 1), y (N,) int labels. The model itself is not changed. -> [Check], in layer
    order, ending with the loss's own gradient dL/dz = (softmax(z) - onehot(y)) / N."""
    net = _Net64(model, seed)
    y = np.asarray(y)
    logits, inputs, caches, kinks = net.forward(np.array(x, dtype=np.float64))
    _, lcache = softmax_cross_entropy_forward(logits, y, smoothing)
    dinputs, G = net.backward(softmax_cross_entropy_backward(lcache), caches)
    rng = np.random.default_rng(seed)
    rows = []
    for i, ly in enumerate(net.layers):
        targets = [("input", inputs[i].copy(), dinputs[i])]
        targets += [(p, v, G[i][p]) for p, v in net.P[i].items() if p not in BUFFERS]
        for tensor, arr, analytic in targets:
            if tensor == "input":
                def f(arr=arr, i=i):
                    out, _, _, k = net.forward(arr, start=i)
                    return softmax_cross_entropy_forward(out, y, smoothing)[0], k
            else:
                def f(i=i):
                    out, _, _, k = net.forward(inputs[i], start=i)
                    return softmax_cross_entropy_forward(out, y, smoothing)[0], k
            n, skipped, err, zero = _compare(f, arr, analytic, kinks[i:], samples, h, rng)
            rows.append(Check(ly["name"], ly["type"], tensor, arr.shape, n, skipped, err, zero))
    z = logits.copy()
    analytic = softmax_cross_entropy_backward(softmax_cross_entropy_forward(z, y, smoothing)[1])
    n, _, err, zero = _compare(lambda: (softmax_cross_entropy_forward(z, y, smoothing)[0], []), z,
                         analytic, [], z.size, h, rng)
    rows.append(Check("loss", "softmax-xent", "logits", z.shape, n, 0, err, zero))
    return rows


def check_architecture(name, *, batch=BATCH, samples=SAMPLES, seed=0, **hp):
    """check_model on a fresh `name` model (mlp, cnn, seed) with its default hyperparameters
    (`hp` overrides them) and a seeded random batch of `batch` images."""
    spec = build_spec(name, {**DEFAULTS[name], "model": name, **hp})
    model = Model(spec, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, *spec["input_shape"]))  # (N, 28, 28, 1)
    y = rng.integers(0, 10, batch)  # (N,)
    return check_model(model, x, y, samples=samples, seed=seed)


def culprit(rows) -> str | None:
    """Which layer's backward is wrong, or None when every check passed. A wrong gradient flows
    down to every layer below, so the failing row nearest the output points at the culprit."""
    bad = [r for r in rows if not r.ok]
    if not bad:
        return None
    r = bad[-1]
    what = (f"the backward of layer {r.layer} ({r.kind})" if r.layer != "loss"
            else "the loss gradient")
    why = (f"relative error {r.error:.1e}" if r.checked else "every entry tried sits on a kink")
    below = ", ".join(f"{b.layer}.{b.tensor}" for b in bad[:-1])
    return (f"{what} disagrees with finite differences ({r.layer}.{r.tensor}: {why})"
            + (f"; failing with it below: {below}" if below else "") + ".")


def table(rows) -> str:
    """The checks as a text table, one line per tensor, and a verdict line."""
    head = ("layer", "type", "gradient of", "shape", "checked", "kinks", "rel. error", "")
    lines = [head] + [
        (r.layer, r.kind, r.tensor, "x".join(map(str, r.shape)), str(r.checked), str(r.skipped),
         "0 (zero)" if r.zero else f"{r.error:.1e}", "ok" if r.ok else "FAIL")
        for r in rows
    ]
    widths = [max(len(line[k]) for line in lines) for k in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    bad = sum(not r.ok for r in rows)
    worst = max(r.error for r in rows)
    verdict = (f"all {len(rows)} gradients agree with finite differences (worst {worst:.1e} "
               f"< {TOL:.0e})" if not bad else f"{bad} of {len(rows)} gradients FAIL "
               f"(relative error >= {TOL:.0e}, or no entry off a kink)")
    if any(r.zero for r in rows):
        verdict += ("\n(zero): the gradient is 0 on both sides, within the rounding noise of the "
                    "finite differences (e.g. a bias just before BatchNorm, which cancels it)")
    return "\n".join(text + [verdict])


__all__ = ["BATCH", "Check", "H", "SAMPLES", "TOL", "check_architecture", "check_model",
           "culprit", "numgrad", "rel_error", "table"]
