"""How a spec's layers run: the layer kinds (parameter shapes, forward, backward) and the plans,
lists of steps with fused pairs (fused.py) as one step. `Model` (model.py) builds and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from pipeline.nn import conv_winograd as Wi
from pipeline.nn import fused as Fu
from pipeline.nn import fused_first as Ff
from pipeline.nn import input_dense as Id
from pipeline.nn import layers as L
from pipeline.nn import winograd as Wn

# ----------------------------------------------------------------------------------------------
# Layer kinds: name -> Kind(parameter shapes, forward, backward, settings). Every layer of
# `layers.py` has the same two signatures, so one call serves them all (`layer_forward`,
# `layer_backward`); `settings` are the spec keys the forward takes by name. Parameters are
# named "<layer>.<p>".


class Kind(NamedTuple):
    shapes: Callable  # layer spec -> {parameter: shape}
    forward: Callable  # (x, **params, train=, rng=, **settings) -> (out, cache)
    backward: Callable  # (dout, cache, grads, need_dx) -> dx
    settings: tuple = ()


def _dense_shapes(ly):
    return {"w": (ly["in"], ly["out"]), "b": (ly["out"],)}


def _conv_shapes(ly):
    k = ly["k"]
    bias = {"b": (ly["cout"],)} if ly.get("bias", True) else {}  # no bias when BatchNorm follows
    return {"w": (k, k, ly["cin"], ly["cout"]), **bias}


def _bn_shapes(ly):
    c = (ly["c"],)
    return {"gamma": c, "beta": c, "mean": c, "var": c}


def _none(ly):
    return {}


LAYER_KINDS = {
    "dense": Kind(_dense_shapes, L.dense_forward, L.dense_backward),
    "conv": Kind(_conv_shapes, L.conv2d_forward, L.conv2d_backward, ("pad",)),
    "bn": Kind(_bn_shapes, L.batchnorm_forward, L.batchnorm_backward, ("momentum",)),
    "act": Kind(_none, L.activation_forward, L.activation_backward, ("fn",)),
    "pool": Kind(_none, L.maxpool_forward, L.maxpool_backward),
    "dropout": Kind(_none, L.dropout_forward, L.dropout_backward, ("p",)),
    "flatten": Kind(_none, L.flatten_forward, L.flatten_backward),
}


def layer_forward(ly, P, x, train, rng):
    """One layer of a spec on x -> (out, cache); P holds its parameters by short name."""
    kind = LAYER_KINDS[ly["type"]]
    return kind.forward(x, **P, train=train, rng=rng, **_settings(kind, ly))


def layer_backward(ly, P, G, dout, cache, need_dx):
    """The backward of `layer_forward`: fills G (its gradient buffers) -> dx or None."""
    return LAYER_KINDS[ly["type"]].backward(dout, cache, G, need_dx)


def _settings(kind, ly):
    return {k: ly[k] for k in kind.settings if k in ly}


# ----------------------------------------------------------------------------------------------
# Plans: the layers as the model runs them, with fused pairs (fused.py) as one step each


class Step(NamedTuple):
    name: str
    forward: Callable
    backward: Callable
    P: dict  # parameters, by short name
    G: dict  # gradient buffers, by short name
    settings: dict
    first: int  # index of the step's first layer in the spec


FUSED = {  # (kind, kind) -> the fused kernel pair; "act" only for ReLU
    ("conv", "pool"): (Fu.conv_pool_forward, Fu.conv_pool_backward),
    ("bn", "act"): (Fu.bn_relu_forward, Fu.bn_relu_backward),
}
WINOGRAD_MIN_CIN = 16  # convs (with or without a pool after them) by Winograd from this many
# input channels: faster at 16 and up, slower or even at 1, 4 and 8, for 3x3 and 5x5
# (python scripts/bench.py --profile kernels)


def _winograd(ly):
    return ly["cin"] >= WINOGRAD_MIN_CIN and ly["k"] in Wn.KERNELS


def _fused_pair(pair, ly):
    """The kernel pair of a FUSED pair: conv+pool by Winograd (conv_winograd.py) where it pays."""
    if pair == ("conv", "pool") and _winograd(ly):
        return Wi.wino_pool_forward, Wi.wino_pool_backward
    return FUSED[pair]


def conv_inplace_relu_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1,
                              winograd=False, blank=None):
    """conv (Winograd with winograd=True, else im2col) -> ReLU applied in place on the conv's
    output: one array and one pass fewer than the two steps. The inference plan's conv -> ReLU
    (BatchNorm folded into the conv), and a conv -> ReLU without BatchNorm in training. Not
    fused_first.conv_relu_forward: the short-K first layer's step, ReLU written from columns.
    `blank`: where the input is blank, for Winograd's inference (blank.py)."""
    if winograd:
        z, cache = Wi.wino_conv_forward(x, w, b, pad, train, rng, threads, blank)
    else:
        z, cache = L.conv2d_forward(x, w, b, pad, train, rng)
    return _relu_in_place(z, cache, winograd, train)


def conv_inplace_relu_backward(da, cache, grads=None, need_dx=True):
    return _through_relu(da, cache, grads, need_dx, L.conv2d_backward, Wi.wino_conv_backward)


def conv_pool_inplace_relu_forward(x, w, b=None, pad=0, train=True, rng=None, threads=1,
                                   winograd=False, blank=None):
    """conv -> 2x2 max pool (Winograd with winograd=True, else fused.conv_pool_*) -> ReLU in
    place on the pooled output: the inference plan's conv -> pool -> ReLU once the BatchNorm
    after the pool is folded into the conv (model.Model._eval_plan), one step and no new
    array for the ReLU. `blank` as conv_inplace_relu_forward's."""
    if winograd:
        out, cache = Wi.wino_pool_forward(x, w, b, pad, train, rng, threads, blank)
    else:
        out, cache = Fu.conv_pool_forward(x, w, b, pad, train, rng, threads)
    return _relu_in_place(out, cache, winograd, train)


def conv_pool_inplace_relu_backward(da, cache, grads=None, need_dx=True):
    return _through_relu(da, cache, grads, need_dx, Fu.conv_pool_backward, Wi.wino_pool_backward)


def _relu_in_place(z, cache, winograd, train):
    """The ReLU of the two steps above, on their output z in place -> (z, their cache)."""
    Fu.relu_inplace(z)
    return z, ((winograd, cache, z) if train else None)


def _through_relu(da, cache, grads, need_dx, direct_backward, winograd_backward):
    """The backward of the two steps above: da through the ReLU, then the kernel's own."""
    winograd, inner, a = cache
    backward = winograd_backward if winograd else direct_backward
    return backward(da * (a > 0), inner, grads, need_dx)


def _is_relu(ly):
    return ly is not None and ly["type"] == "act" and ly["fn"] == "relu"


def make_plan(layers, P, G, fuse=True, threads=1):
    """-> [Step] running `layers` (with parameters P[i], gradient buffers G[i]); fuse=True
    merges each pair of FUSED into one step (a ReLU for ("bn", "act")); conv+pool steps split
    their images over `threads` threads (the same result for any count)."""
    plan, i = [], 0
    while i < len(layers):
        ly = layers[i]
        kind = LAYER_KINDS[ly["type"]]
        n = Ff.fused_length(layers[i : i + 3]) if fuse else 0  # conv [-> bn] -> relu, short K
        if n:  # one step of fused_first.py (the ReLU has no settings or parameters)
            settings = {"threads": threads}
            for lay in layers[i : i + n - 1]:
                settings.update(_settings(LAYER_KINDS[lay["type"]], lay))
            plan.append(Step("+".join(lay["name"] for lay in layers[i : i + n]), *Ff.STEPS[n],
                             {k: v for p in P[i : i + n] for k, v in p.items()},
                             {k: v for g in G[i : i + n] for k, v in g.items()}, settings, i))
            i += n
            continue
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        third = layers[i + 2] if i + 2 < len(layers) else None
        pair = (ly["type"], nxt["type"]) if nxt else None
        if fuse and pair == ("conv", "pool") and _is_relu(third):
            fwd, bwd = conv_pool_inplace_relu_forward, conv_pool_inplace_relu_backward
            name, n = "+".join(lay["name"] for lay in (ly, nxt, third)), 3
        elif fuse and pair in FUSED and (pair[1] != "act" or nxt["fn"] == "relu"):
            fwd, bwd = _fused_pair(pair, ly)
            name, n = f"{ly['name']}+{nxt['name']}", 2
        elif fuse and pair == ("conv", "act") and nxt["fn"] == "relu":
            fwd, bwd = conv_inplace_relu_forward, conv_inplace_relu_backward
            name, n = f"{ly['name']}+{nxt['name']}", 2
        elif fuse and ly["type"] == "dense" and all(lay["type"] == "flatten" for lay in layers[:i]):
            fwd, bwd, name, n = Id.input_dense_forward, Id.input_dense_backward, ly["name"], 1
        elif fuse and ly["type"] == "conv" and _winograd(ly):
            fwd, bwd, name, n = Wi.wino_conv_forward, Wi.wino_conv_backward, ly["name"], 1
        else:
            fwd, bwd, name, n = kind.forward, kind.backward, ly["name"], 1
        settings = _settings(kind, ly)
        if fwd in (Fu.conv_pool_forward, Wi.wino_pool_forward, Wi.wino_conv_forward,
                   Fu.bn_relu_forward):
            settings["threads"] = threads
        if fwd in (conv_inplace_relu_forward, conv_pool_inplace_relu_forward):
            settings.update(threads=threads, winograd=_winograd(ly))
        plan.append(Step(name, fwd, bwd, P[i], G[i], settings, i))
        i += n
    return plan


def run_forward(plan, x, train, rng=None):
    """x through every step -> (out, caches)."""
    caches = []
    for st in plan:
        x, cache = st.forward(x, **st.P, train=train, rng=rng, **st.settings)
        caches.append(cache)
    return x, caches
