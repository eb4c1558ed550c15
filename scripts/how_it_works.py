"""The measurements behind docs/how-it-works.md: one short experiment per step of the path from
the seeds' 784-10-10 network to our CNN, each printing what that step buys.

    python scripts/how_it_works.py STEP [--zip PATH]     # STEP: see --help; `all` runs each

Every experiment trains on the pipeline's own split of train.csv (`data.stratified_split`,
10% dev, seed 0) normalized as the pipeline does (`preprocess`), with the plain training loop
`fit` below (the loop of `pipeline/train.py` without schedules, checkpoints or early stopping),
so each runs in seconds to a minute. Figures are dev-split accuracies of one seed: differences
under ~0.5 points on 4200 dev rows are noise. Set OPENBLAS_NUM_THREADS=1 to match training.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import read_competition, stratified_split  # noqa: E402
from pipeline.nn import reference  # noqa: E402
from pipeline.nn.augment import augment_batch, parse_augment  # noqa: E402
from pipeline.nn.layers import conv2d_forward  # noqa: E402
from pipeline.nn.losses import (  # noqa: E402
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from pipeline.nn.model import Model  # noqa: E402
from pipeline.nn.models import DEFAULTS, build_spec  # noqa: E402
from pipeline.nn.optim import Optimizer  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402


def default_zip() -> str:
    """$KAGGLE_MIRROR/digit-recognizer.zip, else ../shared/data beside the checkout, else
    data/raw (as the tests look for it)."""
    for d in (os.environ.get("KAGGLE_MIRROR"), ROOT.parent / "shared" / "data", ROOT / "data/raw"):
        if d and (Path(d) / "digit-recognizer.zip").is_file():
            return str(Path(d) / "digit-recognizer.zip")
    return "digit-recognizer.zip"


def load(zip_path):
    """-> x_train, y_train, x_dev, y_dev: the pipeline's default split, normalized."""
    d = read_competition(Path(zip_path))
    tr, dv = stratified_split(d.train_y, 0.1, 0)
    norm = fit_normalizer(d.train_x[tr])
    y = d.train_y.astype(np.int64)
    return normalize(d.train_x[tr], norm), y[tr], normalize(d.train_x[dv], norm), y[dv]


def spec(name, **hp):
    return build_spec(name, {**DEFAULTS[name], "model": name, **hp})


def accuracy(model, x, y):
    return float((model.forward(x).argmax(1) == y).mean())


def fit(spec_or_model, data, *, epochs=1, batch=128, optimizer="adam", lr=1e-3, wd=0.0,
        augment="none", rows=None, seed=0, steps=None, evaluate=True):
    """Mini-batch training, plainly: shuffle, forward, loss, backward, optimizer step.
    batch=None is full-batch gradient descent (each epoch one step). -> (model, stats)."""
    x, y, xd, yd = data
    if rows:
        x, y = x[:rows], y[:rows]
    rng = np.random.default_rng(seed)
    model = spec_or_model if isinstance(spec_or_model, Model) else Model(spec_or_model, rng=rng)
    opt = Optimizer(optimizer, model.theta.size, model.n_decay, weight_decay=wd)
    aug, n, taken = parse_augment(augment), len(x), 0
    batch = batch or n
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n) if batch < n else np.arange(n)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            xb = augment_batch(x[idx], aug, rng)
            z, caches = model.forward_train(xb, rng)
            _, cache = softmax_cross_entropy_forward(z, y[idx])
            model.backward(softmax_cross_entropy_backward(cache), caches)
            opt.step(model.theta, model.grad, lr)
            taken += 1
            if steps and taken >= steps:
                break
    seconds = time.perf_counter() - start
    if not evaluate:
        return model, {"seconds": seconds, "steps": taken}
    dev_loss = softmax_cross_entropy_forward(model.forward(xd), yd)[0]
    return model, {"train_acc": accuracy(model, x, y), "dev_acc": accuracy(model, xd, yd),
                   "dev_loss": dev_loss, "seconds": seconds, "steps": taken}


def report(label, stats, **extra):
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"RESULT {label}: dev_acc={100 * stats['dev_acc']:.2f}% "
          f"dev_loss={stats['dev_loss']:.3f} train_acc={100 * stats['train_acc']:.2f}% "
          f"steps={stats['steps']} "
          f"seconds={stats['seconds']:.1f} {more}".rstrip(), flush=True)


# ----------------------------------------------------------------------------------------------
# The steps, in the order of docs/how-it-works.md


def step_seed(data):
    """The seeds' network: 784-10-10 tanh, full-batch gradient descent, lr 0.5, 100 steps."""
    report("seed 784-10-10, 100 full-batch steps", fit(spec("seed"), data, epochs=100,
                                                       batch=None, optimizer="sgd", lr=0.5)[1])


def step_minibatch(data):
    """The same network and the same compute (3 passes over the data): 3 full-batch steps
    against 3 epochs of mini-batches of 128."""
    for batch, lr in ((None, 0.5), (128, 0.1)):
        what = "full batch" if batch is None else f"batches of {batch}"
        report(f"seed 784-10-10, 3 passes, {what}", fit(spec("seed"), data, epochs=3, batch=batch,
                                                        optimizer="sgd", lr=lr)[1])


def step_init(data):
    """A 6-layer ReLU MLP (5 x 256): activation scale at the last hidden layer at init, and one
    epoch of SGD, with He, Xavier and N(0, 0.01^2) weights."""
    x = data[0][:512]
    for init in ("he", "xavier", "small"):
        s = spec("mlp", hidden=(256,) * 5, dropout=0.0)
        for ly in s["layers"]:
            if ly["type"] == "dense" and ly["name"] != "out":
                ly["init"] = "he" if init == "small" else init
        model = Model(s, rng=np.random.default_rng(0))
        if init == "small":
            rng = np.random.default_rng(0)
            for k, v in model.params.items():
                if k.endswith(".w"):
                    v[...] = rng.normal(0, 0.01, v.shape)
        h = x.reshape(len(x), -1)
        for ly in s["layers"][1:-1]:
            if ly["type"] == "dense":
                h = h @ model.params[f"{ly['name']}.w"] + model.params[f"{ly['name']}.b"]
            else:
                h = np.maximum(h, 0)
        std = float(h.std())
        report(f"6-layer ReLU MLP, {init} init, 1 epoch SGD lr 0.05",
               fit(model, data, epochs=1, optimizer="sgd", lr=0.05)[1],
               last_hidden_std_at_init=f"{std:.3g}")


def step_relu(data):
    """784-128-10 with sigmoid, tanh and ReLU hidden units: 1 epoch of SGD, lr 0.1."""
    for act in ("sigmoid", "tanh", "relu"):
        s = spec("mlp", hidden=(128,), activation=act, dropout=0.0)
        report(f"784-128-10 {act}, 1 epoch SGD lr 0.1",
               fit(s, data, epochs=1, optimizer="sgd", lr=0.1)[1])


def step_softmax(data):
    """Softmax of logits (1000, 0, ..., 0) computed naively and with log-sum-exp."""
    z = np.array([[1000.0] + [0.0] * 9], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        naive = np.exp(z) / np.exp(z).sum()
        naive_loss = float(-np.log(naive[0, 1]))
    loss, _ = softmax_cross_entropy_forward(z, np.array([1]))
    print(f"RESULT softmax of (1000, 0, ...), true class 1: naive p={naive[0].tolist()[:2]}... "
          f"loss={naive_loss}; log-sum-exp loss={loss:.1f}", flush=True)


def step_decay(data):
    """784-256-10, 5 epochs of Adam lr 1e-3 on 5000 rows: no decay, L2 (coupled) and decoupled
    (AdamW) at the same coefficient 0.05; the weights' norm shows what each did."""
    for opt, wd in (("adam", 0.0), ("adam", 0.05), ("adamw", 0.05)):
        model, st = fit(spec("mlp", hidden=(256,), dropout=0.0), data, epochs=5, rows=5000,
                        optimizer=opt, wd=wd)
        norm = float(np.linalg.norm(model.theta[:model.n_decay]))
        report(f"784-256-10, 5 epochs on 5000 rows, {opt} wd={wd}", st, weight_norm=f"{norm:.1f}")


def step_optim(data):
    """784-256-10, one epoch: SGD, momentum 0.9 (same lr) and Adam."""
    for opt, lr in (("sgd", 0.01), ("momentum", 0.01), ("adam", 1e-3)):
        report(f"784-256-10, 1 epoch, {opt} lr {lr}",
               fit(spec("mlp", hidden=(256,), dropout=0.0), data, epochs=1, optimizer=opt,
                   lr=lr)[1])


def step_dropout(data):
    """784-512-256-10 on 3000 rows, 15 epochs of Adam: dropout 0 against 0.3."""
    for p in (0.0, 0.3):
        report(f"784-512-256-10, 3000 rows, 15 epochs, dropout {p}",
               fit(spec("mlp", hidden=(512, 256), dropout=p), data, epochs=15, rows=3000)[1])


def _without_bn(s):
    layers = []
    for ly in s["layers"]:
        if ly["type"] == "bn":
            continue
        layers.append({**ly, "bias": True} if ly["type"] == "conv" else ly)
    return {**s, "layers": layers}


def step_batchnorm(data):
    """A small CNN (16c5-p-32c5-p-fc64) for one epoch on 10000 rows at Adam lr 3e-3, with and
    without BatchNorm; then inference by Model.forward (BatchNorm folded into the weights where
    it follows a conv/dense layer, fused steps) against every layer applied separately (the
    difference and the time for the 4200 dev rows)."""
    s = spec("cnn", plan="16c5-p-32c5-p-fc64", dropout=0.0)
    for name, sp in (("with BatchNorm", s), ("without BatchNorm", _without_bn(s))):
        model, st = fit(sp, data, rows=10000, lr=3e-3)
        report(f"CNN 16c5-p-32c5-p-fc64, 1 epoch on 10000 rows, {name}", st)
        if sp is s:
            trained = model
    from pipeline.nn.gradcheck import LAYER_KINDS, layer_forward  # one call for every layer
    xd = data[2]
    layers = trained.spec["layers"]
    P = [{p: trained.params[f"{ly['name']}.{p}"] for p in LAYER_KINDS[ly["type"]][0](ly)}
         for ly in layers]
    t = time.perf_counter()
    folded = trained.forward(xd)
    t_folded = time.perf_counter() - t
    t = time.perf_counter()
    h = np.empty_like(folded)
    for s in range(0, len(xd), 128):  # the same chunks of 128 rows as Model.forward
        hc = xd[s:s + 128]
        for ly, Pi in zip(layers, P):
            hc, _ = layer_forward(ly, Pi, hc, False, None)
        h[s:s + 128] = hc
    t_layer = time.perf_counter() - t
    print(f"RESULT Model.forward (BatchNorm folded, fused) vs layer by layer, 4200 dev rows: "
          f"max |logit difference| "
          f"{float(np.abs(folded - h).max()):.1e}, {t_folded:.2f} s vs {t_layer:.2f} s", flush=True)


def step_conv(data):
    """Convolution as im2col + one matrix product against the direct sum, one output pixel at
    a time (the second conv of the CNN 32c5-p-64c5-p-fc128 on 128 images); then that CNN
    against the MLP 784-512-256-10, one epoch of Adam each."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 12, 12, 32)).astype(np.float32)
    w = rng.standard_normal((5, 5, 32, 64)).astype(np.float32)
    t = time.perf_counter()
    fast = conv2d_forward(x, w, None)[0]
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = reference.conv2d_forward(x, w, None)
    t_slow = time.perf_counter() - t
    print(f"RESULT conv 12x12x32 -> 8x8x64, 5x5, 128 images: im2col+GEMM {1e3 * t_fast:.0f} ms, "
          f"direct {1e3 * t_slow:.0f} ms ({t_slow / t_fast:.1f}x), max difference "
          f"{float(np.abs(fast - slow).max()):.1e}", flush=True)
    report("mlp 784-512-256-10 (dropout 0.1), 1 epoch Adam lr 1e-3",
           fit(spec("mlp", hidden=(512, 256), dropout=0.1), data, lr=1e-3)[1])
    report("cnn 32c5-p-64c5-p-fc128 (dropout 0.3), 1 epoch Adam lr 1e-3",
           fit(spec("cnn", plan="32c5-p-64c5-p-fc128", dropout=0.3), data, lr=1e-3)[1])


def step_pool(data):
    """The CNN 32c5-p-64c5-p-fc128 with and without its two 2x2 max-pools: parameters and the
    time of a training step on 128 images."""
    for plan in ("32c5-p-64c5-p-fc128", "32c5-64c5-fc128"):
        model = Model(spec("cnn", plan=plan), rng=np.random.default_rng(0))
        st = fit(model, data, steps=5, evaluate=False)[1]
        print(f"RESULT cnn {plan}: {model.theta.size:,} parameters, "
              f"{1e3 * st['seconds'] / st['steps']:.0f} ms per training step of 128", flush=True)


def step_augment(data):
    """784-256-10 on 2000 rows, 30 epochs of Adam: no augmentation against the default
    (shift 2 px, rotate 10 degrees, zoom 10%)."""
    for aug in ("none", "default"):
        report(f"784-256-10, 2000 rows, 30 epochs, augment {aug}",
               fit(spec("mlp", hidden=(256,), dropout=0.0), data, epochs=30, rows=2000,
                   augment=aug)[1])


STEPS = {name[5:]: f for name, f in globals().items() if name.startswith("step_")}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=[*STEPS, "all"])
    ap.add_argument("--zip", default=default_zip(), help="the competition zip")
    a = ap.parse_args()
    data = None if a.step == "softmax" else load(a.zip)
    for name, f in STEPS.items():
        if a.step in (name, "all"):
            print(f"# {name}: {f.__doc__.splitlines()[0]}", flush=True)
            f(data)


if __name__ == "__main__":
    main()
