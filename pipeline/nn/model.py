"""A sequential network built from a JSON-able spec, and its .npz file format.

`Model(spec)` turns a list of layer descriptions into parameters and a forward/backward pass over
the functions of `layers.py`. All trainable parameters live as views into one flat float32 vector
`theta` (weights first, then biases and BatchNorm scales) with gradients in a matching `grad`, so
an optimizer step is a few vector operations (see `optim.py`). BatchNorm running statistics are
in `params` too but not in `theta`. `save_models`/`load_models` store any number of models in one
.npz without pickle. Which architectures exist is decided in `models.py`, not here.
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.config import UserError
from pipeline.fileio import atomic_path
from pipeline.nn import layers as L
from pipeline.nn.init import INITS

FORMAT = "digits-nn-v1"
EVAL_CHUNK = 128  # rows per inference pass: measured faster than 256 or 1000 (cache-sized)


class ModelFileError(UserError):
    """A model file that cannot be read: missing, corrupt, or written by an incompatible version."""


# ----------------------------------------------------------------------------------------------
# Layer kinds: name -> (parameter shapes, forward, backward). Parameters are named "<layer>.<p>".
# forward(layer, P, x, train, rng) -> (out, cache)
# backward(layer, P, G, dout, cache, need_dx) -> dx


def _dense_shapes(ly):
    return {"w": (ly["in"], ly["out"]), "b": (ly["out"],)}


def _dense_fwd(ly, P, x, train, rng):
    return L.dense_forward(x, P["w"], P["b"])


def _dense_bwd(ly, P, G, dout, cache, need_dx):
    return L.dense_backward(dout, cache, dw=G["w"], db=G["b"], need_dx=need_dx)[0]


def _conv_shapes(ly):
    k = ly["k"]
    bias = {"b": (ly["cout"],)} if ly.get("bias", True) else {}  # no bias when BatchNorm follows
    return {"w": (k, k, ly["cin"], ly["cout"]), **bias}


def _conv_fwd(ly, P, x, train, rng):
    return L.conv2d_forward(x, P["w"], P.get("b"), pad=ly.get("pad", 0))


def _conv_bwd(ly, P, G, dout, cache, need_dx):
    return L.conv2d_backward(dout, cache, dw=G["w"], db=G.get("b"), need_dx=need_dx)[0]


def _bn_shapes(ly):
    c = (ly["c"],)
    return {"gamma": c, "beta": c, "mean": c, "var": c}


def _bn_fwd(ly, P, x, train, rng):
    return L.batchnorm_forward(
        x, P["gamma"], P["beta"], P["mean"], P["var"], train, momentum=ly.get("momentum", 0.1)
    )


def _bn_bwd(ly, P, G, dout, cache, need_dx):
    return L.batchnorm_backward(dout, cache, dgamma=G["gamma"], dbeta=G["beta"])[0]


def _act_fwd(ly, P, x, train, rng):
    return L.ACTIVATIONS[ly["fn"]][0](x)


def _act_bwd(ly, P, G, dout, cache, need_dx):
    return L.ACTIVATIONS[ly["fn"]][1](dout, cache)


def _pool_fwd(ly, P, x, train, rng):
    return L.maxpool_forward(x, train)


def _pool_bwd(ly, P, G, dout, cache, need_dx):
    return L.maxpool_backward(dout, cache)


def _drop_fwd(ly, P, x, train, rng):
    return L.dropout_forward(x, ly["p"], train, rng)


def _drop_bwd(ly, P, G, dout, cache, need_dx):
    return L.dropout_backward(dout, cache)


def _flat_fwd(ly, P, x, train, rng):
    return L.flatten_forward(x)


def _flat_bwd(ly, P, G, dout, cache, need_dx):
    return L.flatten_backward(dout, cache)


def _none(ly):
    return {}


LAYER_KINDS = {
    "dense": (_dense_shapes, _dense_fwd, _dense_bwd),
    "conv": (_conv_shapes, _conv_fwd, _conv_bwd),
    "bn": (_bn_shapes, _bn_fwd, _bn_bwd),
    "act": (_none, _act_fwd, _act_bwd),
    "pool": (_none, _pool_fwd, _pool_bwd),
    "dropout": (_none, _drop_fwd, _drop_bwd),
    "flatten": (_none, _flat_fwd, _flat_bwd),
}
BUFFERS = ("mean", "var")  # parameters that are state, not trained
DECAYED = ("w",)  # parameters weight decay applies to


def _param_table(spec):
    """-> list of (full name, short name, shape, layer) in flat order: decayed, trained, buffers."""
    rows = []
    for ly in spec["layers"]:
        kind = ly.get("type")
        if kind not in LAYER_KINDS:
            raise ValueError(f"layer type must be one of {sorted(LAYER_KINDS)}, got {kind!r}")
        if kind == "act" and ly.get("fn") not in L.ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(L.ACTIVATIONS)}, got {ly.get('fn')!r}"
            )
        for p, shape in LAYER_KINDS[kind][0](ly).items():
            rows.append((f"{ly['name']}.{p}", p, tuple(int(s) for s in shape), ly))
    order = {p: 0 if p in DECAYED else (2 if p in BUFFERS else 1) for _, p, _, _ in rows}
    return sorted(rows, key=lambda r: order[r[1]])  # stable: layer order within each group


class Model:
    """A feed-forward network: `.spec` (JSON-able dict) and `.params` (name -> float32 array).

    forward(x, train=False) returns logits (N, 10); `predict.py` turns them into probabilities.
    """

    def __init__(self, spec, params=None, rng=None):
        self.spec = json.loads(json.dumps(spec))  # a private, JSON-clean copy
        table = _param_table(self.spec)
        trained = [r for r in table if r[1] not in BUFFERS]
        n = sum(int(np.prod(s)) for _, _, s, _ in trained)
        self.n_decay = sum(int(np.prod(s)) for _, p, s, _ in trained if p in DECAYED)
        self.theta = np.zeros(n, dtype=np.float32)  # (n,) every trained parameter
        self.grad = np.zeros(n, dtype=np.float32)  # (n,) their gradients
        self.params, self.grads = {}, {}
        self._P = [dict() for _ in self.spec["layers"]]  # per-layer short-name views
        self._G = [dict() for _ in self.spec["layers"]]
        index = {id(ly): i for i, ly in enumerate(self.spec["layers"])}
        offset = 0
        for name, p, shape, ly in table:
            i = index[id(ly)]
            if p in BUFFERS:
                arr = np.zeros(shape, dtype=np.float32)
            else:
                size = int(np.prod(shape))
                arr = self.theta[offset : offset + size].reshape(shape)
                self.grads[name] = self._G[i][p] = self.grad[offset : offset + size].reshape(shape)
                offset += size
            self.params[name] = self._P[i][p] = arr
        if params is not None:
            self.load_params(params)
        else:
            self._init(rng if rng is not None else np.random.default_rng(0))

    def _init(self, rng):
        for ly, P in zip(self.spec["layers"], self._P):
            if "w" in P:
                w = P["w"]
                fan_in = int(np.prod(w.shape[:-1]))
                P["w"][...] = INITS[ly.get("init", "he")](rng, w.shape, fan_in, w.shape[-1])
            if "gamma" in P:
                P["gamma"][...] = 1.0
                P["var"][...] = 1.0

    def load_params(self, params):
        """Copy arrays into this model's parameters, checking names and shapes."""
        missing = sorted(set(self.params) - set(params))
        extra = sorted(set(params) - set(self.params))
        if missing or extra:
            raise ValueError(
                f"parameters do not match the spec: missing {missing}, unexpected {extra}"
            )
        for k, v in self.params.items():
            if np.shape(params[k]) != v.shape:
                raise ValueError(
                    f"parameter {k} must have shape {v.shape}, got {np.shape(params[k])}"
                )
            v[...] = params[k]

    # forward/backward -------------------------------------------------------------------------
    def forward(self, x, train=False, rng=None):
        """x (N, 28, 28, 1) -> logits (N, 10). train=True uses batch statistics and dropout
        (and updates BatchNorm running stats); it needs `rng` for dropout. Eval mode folds each
        BatchNorm into the conv/dense layer before it (exact) and runs large inputs in chunks of
        EVAL_CHUNK rows, whose activations stay in cache."""
        if train:
            for ly, P in zip(self.spec["layers"], self._P):
                x, _ = LAYER_KINDS[ly["type"]][1](ly, P, x, True, rng)
            return x
        plan = self._eval_plan()
        out = None  # (N, 10) for a whole model; any shape for a truncated one (reports)
        for s in range(0, x.shape[0], EVAL_CHUNK):
            h = x[s : s + EVAL_CHUNK]
            for ly, P in plan:
                h, _ = LAYER_KINDS[ly["type"]][1](ly, P, h, False, None)
            if out is None:
                out = np.empty((x.shape[0], *h.shape[1:]), dtype=np.float32)
            out[s : s + EVAL_CHUNK] = h
        return out

    def _eval_plan(self):
        """-> [(layer, params)] for inference, with conv/dense -> BatchNorm pairs merged:
        w' = w * gamma/sqrt(var+eps), b' = (b - mean) * gamma/sqrt(var+eps) + beta."""
        layers, plan, i = self.spec["layers"], [], 0
        while i < len(layers):
            ly, P = layers[i], self._P[i]
            if (
                ly["type"] in ("conv", "dense")
                and i + 1 < len(layers)
                and layers[i + 1]["type"] == "bn"
            ):
                bn = self._P[i + 1]
                scale = bn["gamma"] / np.sqrt(bn["var"] + L.BN_EPS)  # (C,)
                b = P["b"] if "b" in P else np.zeros_like(scale)
                plan.append((ly, {"w": P["w"] * scale, "b": (b - bn["mean"]) * scale + bn["beta"]}))
                i += 2
            else:
                plan.append((ly, P))
                i += 1
        return plan

    def forward_train(self, x, rng):
        """x (N, 28, 28, 1) -> (logits (N, 10), caches) in training mode."""
        caches = []
        for ly, P in zip(self.spec["layers"], self._P):
            x, cache = LAYER_KINDS[ly["type"]][1](ly, P, x, True, rng)
            caches.append(cache)
        return x, caches

    def backward(self, dlogits, caches):
        """dlogits (N, 10) -> fills `self.grad` (and so `self.grads`). No dx for the input."""
        dx = dlogits
        layers = self.spec["layers"]
        first = next(i for i, ly in enumerate(layers) if LAYER_KINDS[ly["type"]][0](ly))
        for i in range(len(layers) - 1, first - 1, -1):
            ly = layers[i]
            dx = LAYER_KINDS[ly["type"]][2](ly, self._P[i], self._G[i], dx, caches[i], i > first)

    # pickling (joblib caches models): rebuild the flat buffers on load -------------------------
    def __getstate__(self):
        return {"spec": self.spec, "params": {k: np.array(v) for k, v in self.params.items()}}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["params"])

    def __repr__(self):
        return f"Model({self.spec.get('name', '?')}, {self.theta.size} parameters)"


# ----------------------------------------------------------------------------------------------
# Files: one .npz for any number of models, no pickle


def save_models(path, models, extra=None):
    """Write `models` (and a JSON-able `extra` dict) to one .npz, atomically."""
    arrays = {
        "format": np.array(FORMAT),
        "n_models": np.array(len(models), dtype=np.int64),
        "extra": np.array(json.dumps(extra or {})),
    }
    for i, m in enumerate(models):
        arrays[f"m{i}/spec"] = np.array(json.dumps(m.spec))
        for k, v in m.params.items():
            arrays[f"m{i}/{k}"] = np.asarray(v, dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist; train a model first") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, ...
        raise ModelFileError(
            f"model file {path} is corrupt or not a model file ({e}); delete it and train again"
        ) from None


def load_models(path):
    """Read the models written by `save_models`; raise ModelFileError if that fails."""
    z = _read(path)
    if "format" not in z or str(z["format"]) != FORMAT:
        got = str(z["format"]) if "format" in z else "no format tag"
        raise ModelFileError(
            f"model file {path} has format {got!r}, expected {FORMAT!r}; "
            "train again with this version"
        )
    models = []
    try:
        for i in range(int(z["n_models"])):
            spec = json.loads(str(z[f"m{i}/spec"]))
            prefix = f"m{i}/"
            params = {
                k[len(prefix) :]: v
                for k, v in z.items()
                if k.startswith(prefix) and k != f"m{i}/spec"
            }
            models.append(Model(spec, params))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(
            f"model file {path} is incompatible with this version ({e}); train again"
        ) from None
    if not models:
        raise ModelFileError(f"model file {path} holds no models")
    return models


def load_extra(path):
    """The `extra` dict stored by `save_models`."""
    z = _read(path)
    return json.loads(str(z.get("extra", "{}")))
