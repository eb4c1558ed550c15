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
import os

import numpy as np

from pipeline.nn import layers as L
from pipeline.nn.blank import BlankRun
from pipeline.nn.fused import worker_pool
from pipeline.nn.init import INITS
from pipeline.nn.plan import (  # layer_forward, layer_backward: re-exported for callers
    LAYER_KINDS,
    layer_backward,  # noqa: F401
    layer_forward,  # noqa: F401
    make_plan,
    run_forward,
)

FORMAT = "digits-nn-v1"
EVAL_CHUNK = 128  # rows per inference pass: measured faster than 256 or 1000 (cache-sized)


def _bn_scale(bn):
    """A BatchNorm's per-channel scale in eval mode, gamma / sqrt(var + eps)."""
    return bn["gamma"] / np.sqrt(bn["var"] + L.BN_EPS)


def _fold_bn(p, bn):
    """A conv/dense layer's parameters p ({"w", maybe "b"}) with the BatchNorm bn after it
    folded in -> {"w": w * scale, "b": (b - mean) * scale + beta}."""
    scale = _bn_scale(bn)  # (C,)
    b = p["b"] if "b" in p else np.zeros_like(scale)
    return {"w": p["w"] * scale, "b": (b - bn["mean"]) * scale + bn["beta"]}


class ModelFileError(Exception):
    """A model file that cannot be read: missing, corrupt, or written by an incompatible version.
    Its message says what to do; the CLI shows it as one line (pipeline.nn imports nothing from
    the rest of the package, so this is not a pipeline.config.UserError)."""


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
        self.threads = 1
        self._first_trained = next(
            (i for i, ly in enumerate(self.spec["layers"]) if self._G[i]), len(self._G)
        )
        if params is not None:
            self.load_params(params)
        else:
            self._init(rng if rng is not None else np.random.default_rng(0))

    @property
    def plan(self):
        """The training steps ([Step], fused pairs as one) that forward_train/backward run."""
        return self._train_plan

    @property
    def first_trained(self):
        """Index of the first layer with parameters: the backward pass stops there."""
        return self._first_trained

    @property
    def threads(self):
        """Threads a training step may use (its conv+pool steps); the result is the same."""
        return self._threads

    @threads.setter
    def threads(self, n):
        self._threads = max(1, int(n))
        self._train_plan = make_plan(self.spec["layers"], self._P, self._G, threads=self._threads)

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
    def forward(self, x, train=False, rng=None, threads=1):
        """x (N, 28, 28, 1) -> logits (N, 10). train=True uses batch statistics and dropout
        (and updates BatchNorm running stats); it needs `rng` for dropout. Eval mode folds each
        BatchNorm into the conv/dense layer before it (exact), fuses pairs (fused.py) and runs
        large inputs in chunks of EVAL_CHUNK rows, whose activations stay in cache; with
        threads > 1 the chunks are shared out to that many threads (numpy releases the GIL in
        its matrix products and ufuncs; keep BLAS itself on one thread then)."""
        if train:
            return run_forward(self._train_plan, x, True, rng)[0]
        runner = self._eval_runner()
        starts = range(0, x.shape[0], EVAL_CHUNK)

        def chunk(s):
            return runner.run(x[s : s + EVAL_CHUNK])

        if threads > 1 and len(starts) > 1:
            # kept threads: a fresh pool per call would also start each thread's Winograd
            # buffers anew (page faults) on every call
            parts = list(worker_pool(threads, "eval").map(chunk, starts))
        else:
            parts = [chunk(s) for s in starts]
        if not parts:  # no rows
            return runner.run(x)
        # (N, 10) for a whole model; any shape for a truncated one (reports)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _eval_plan(self):
        """-> [Step] for inference (see _eval_steps)."""
        return self._eval_steps()[0]

    def _eval_runner(self):
        """-> the BlankRun of the inference plan: what forward(x) runs on each chunk."""
        return BlankRun(*self._eval_steps())

    def _eval_steps(self):
        """-> ([Step] for inference, the layers it runs): each BatchNorm merged into the
        conv/dense before it, w' = w * gamma/sqrt(var+eps), b' = (b - mean) *
        gamma/sqrt(var+eps) + beta, also across a max pool between them (conv -> pool -> bn,
        pool_first) when every channel's scale is positive: max(s z + t) = s max(z) + t for
        s > 0 (exactly, in floats too: rounding keeps the order), the pool then taking the
        folded conv's outputs; then fused."""
        layers, P = self.spec["layers"], self._P
        kept, params, i = [], [], 0
        while i < len(layers):
            ly = layers[i]
            after = [lay["type"] for lay in layers[i + 1 : i + 3]]
            if ly["type"] in ("conv", "dense") and after[:1] == ["bn"]:
                params.append(_fold_bn(P[i], P[i + 1]))
                kept.append(ly)
                i += 2
            elif ly["type"] == "conv" and after == ["pool", "bn"] and (
                _bn_scale(P[i + 2]) > 0
            ).all():
                params += [_fold_bn(P[i], P[i + 2]), P[i + 1]]
                kept += [ly, layers[i + 1]]
                i += 3
            else:
                params.append(P[i])
                kept.append(ly)
                i += 1
        return make_plan(kept, params, [{}] * len(kept)), kept

    def forward_train(self, x, rng):
        """x (N, 28, 28, 1) -> (logits (N, 10), caches) in training mode."""
        return run_forward(self._train_plan, x, True, rng)

    def backward(self, dlogits, caches):
        """dlogits (N, 10) -> fills `self.grad` (and so `self.grads`). No dx for the input."""
        dx = dlogits
        for st, cache in zip(reversed(self._train_plan), reversed(caches)):
            if st.first < self._first_trained:
                break
            dx = st.backward(dx, cache, st.G, st.first > self._first_trained)

    # pickling (joblib caches models): rebuild the flat buffers on load -------------------------
    def __getstate__(self):
        return {"spec": self.spec, "params": {k: np.array(v) for k, v in self.params.items()}}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["params"])

    def __repr__(self):
        return f"Model({self.spec.get('name', '?')}, {self.theta.size} parameters)"


# ----------------------------------------------------------------------------------------------
# Files: one .npz for any number of models, no pickle


def save_models(file, models, extra=None):
    """Write `models` (and a JSON-able `extra` dict) to one .npz: `file` is a path or a binary
    file object. Not atomic by itself: the pipeline writes to a temporary file it renames
    (pipeline.fileio.atomic_path)."""
    arrays = {
        "format": np.array(FORMAT),
        "n_models": np.array(len(models), dtype=np.int64),
        "extra": np.array(json.dumps(extra or {})),
    }
    for i, m in enumerate(models):
        arrays[f"m{i}/spec"] = np.array(json.dumps(m.spec))
        for k, v in m.params.items():
            arrays[f"m{i}/{k}"] = np.asarray(v, dtype=np.float32)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as f:  # by a path, np.savez would add ".npz" to the name
            np.savez(f, **arrays)
    else:
        np.savez(file, **arrays)


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
