"""Held-out-fold experiments for choosing the defaults: train one recipe on K-1 folds of
train.csv, score it on the held-out fold, write one JSON line per fold.

    python scripts/experiments/cvexp.py NAME --folds 0 [--set plan=32c3-32c3-p-64c3-64c3-p-fc256
        epochs=15 ...] [--torch] [--swa 5] [--tta]

The folds are fixed: stratified, 5 of them (per class, rows shuffled with
np.random.default_rng(0) and dealt round-robin), over all 42000 labelled rows. Loading, normalizing
(scalar mean/std of the training folds only), the network and the training loop are the package's
own (pipeline.data, pipeline.preprocess, pipeline.train); the figure reported is the LAST epoch's
model, never a best epoch picked on the held-out fold (the per-epoch held-out curve is recorded
for looking at, not for choosing). `--set` takes any DEFAULTS key of the model (plan, pool_first,
epochs, lr, augment, ...). `--torch` trains the scripts/bench.py layer-by-layer torch twin with
the same batches, augmentation, schedule and weight decay, to compare the two implementations.

Output: scripts/experiments/results/NAME.jsonl (one line per fold) and the held-out
probabilities in scripts/experiments/results/proba/NAME-f{fold}.npz (for paired comparisons:
scripts/experiments/compare.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from pipeline import checkpoint as C  # noqa: E402
from pipeline import train as T  # noqa: E402
from pipeline.data import read_competition  # noqa: E402
from pipeline.nn import models as M  # noqa: E402
from pipeline.nn.averaging import recompute_bn  # noqa: E402
from pipeline.nn.model import Model  # noqa: E402
from pipeline.params import TrainConfig  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402

ZIP = Path("/work/shared/data/digit-recognizer.zip")
CACHE = Path(tempfile.gettempdir()) / "score-digits-train.npz"
RESULTS = HERE / "results"
K = 5


def load():
    """-> (x (42000, 784) uint8, y (42000,) int64), parsed by pipeline.data once, then cached."""
    if CACHE.exists():
        with np.load(CACHE) as z:
            return z["x"], z["y"]
    d = read_competition(ZIP)
    np.savez(CACHE, x=d.train_x, y=d.train_y.astype(np.int64))
    return d.train_x, d.train_y.astype(np.int64)


def folds(y, k=K, seed=0):
    """-> (N,) fold index 0..k-1, stratified: per class shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    f = np.empty(len(y), dtype=np.int64)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        f[idx] = np.arange(len(idx)) % k
    return f


def parse_set(pairs):
    out = {}
    for p in pairs:
        k, _, v = p.partition("=")
        if k == "hidden" or "," in v and all(t.strip().isdigit() for t in v.split(",")):
            out[k] = tuple(int(t) for t in v.split(","))  # hidden=1024,512
            continue
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        if v in ("True", "False"):
            v = v == "True"
        out[k] = v
    return out


def swa_hook(every_epoch_from):
    """Patch train's checkpoint writer to sum each epoch's parameters from `every_epoch_from`."""
    acc = {"n": 0, "sum": None}
    real = C.save

    def hook(path, key, rng, fit, phase, first):
        if fit.epoch >= every_epoch_from:
            p = fit.model.params
            if acc["sum"] is None:
                acc["sum"] = {k: v.astype(np.float64) for k, v in p.items()}
            else:
                for k, v in p.items():
                    acc["sum"][k] += v
            acc["n"] += 1
        real(path, key, rng, fit, phase, first)

    C.save = hook
    return acc


def fit_ours(cfg, hp, xtr, ytr, xdev, ydev):
    """-> (the LAST epoch's model, history): train() keeps a best dev epoch, so the last
    epoch's parameters are read back from its checkpoint (with ema the run's end-of-run average
    is the model already)."""
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ck.npz"
        res = T.train(cfg, xtr, ytr, xdev, None if xdev is None else ydev, progress="lines",
                      checkpoint=ck)
        with np.load(ck) as z:
            last = {k[6:]: z[k] for k in z.files if k.startswith("param/")}
    if not hp.get("ema"):
        res.model.load_params(last)
    return res.model, res.history


def load_test():
    """-> test.csv's (28000, 784) uint8 images, parsed by pipeline.data once, then cached."""
    cache = CACHE.with_name("score-digits-test.npz")
    if cache.exists():
        with np.load(cache) as z:
            return z["x"]
    d = read_competition(ZIP)
    np.savez(cache, x=d.test_x)
    return d.test_x


def pseudo_round(a, cfg, hp, teacher, x8, norm, xtr, ytr, xho, yho, teacher_proba, f):
    """Pseudo-labels, measured honestly: the teacher (trained on the training folds) labels the
    test.csv rows it gives p >= a.pseudo; a fresh student (same recipe and seed) trains on the
    training folds plus those rows and is scored on the held-out fold, whose labelled rows no
    model has seen. -> (student, its history, its held-out proba, figures of both)."""
    xte = normalize(load_test(), norm)
    pt = predict_proba([teacher], xte)
    keep = pt.max(1) >= a.pseudo
    np.savez_compressed(RESULTS / "proba" / f"{a.name}-teacher-f{f}.npz",
                        proba=teacher_proba.astype(np.float16), test=pt.astype(np.float16))
    info = {"teacher_acc": float((teacher_proba.argmax(1) == yho).mean()),
            "teacher_errors": int((teacher_proba.argmax(1) != yho).sum()),
            "pseudo_threshold": a.pseudo, "pseudo_rows": int(keep.sum()), "transductive": True}
    print(json.dumps(info), flush=True)
    xs = np.concatenate([xtr, xte[keep]])
    ys = np.concatenate([ytr, pt[keep].argmax(1).astype(ytr.dtype)])
    student, hist = fit_ours(cfg, hp, xs, ys, None, None)
    return student, hist, predict_proba([student], xho), info


def run_torch(hp, xtr, ytr, xho, yho, seed, init_from):
    """The bench.py torch twin trained with our batches, augmentation and schedule."""
    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    from bench import torch_twin

    from pipeline.nn.augment import augment_batch, parse_augment
    from pipeline.nn.schedules import make_schedule

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    spec = M.build_spec("cnn" if "plan" in hp else hp["model"], hp)
    net = torch_twin(torch, spec)
    if init_from == "ours":  # copy our initial weights into the twin
        ours = Model(spec, rng=np.random.default_rng(seed))
        mods = [m for m in net if any(True for _ in m.parameters())]
        named = [ly for ly in spec["layers"] if ly["type"] in ("conv", "dense", "bn")]
        with torch.no_grad():
            for m, ly in zip(mods, named):
                P = {k.split(".", 1)[1]: v for k, v in ours.params.items()
                     if k.split(".", 1)[0] == ly["name"]}
                if ly["type"] == "conv":
                    m.weight.copy_(torch.from_numpy(P["w"].transpose(3, 2, 0, 1).copy()))
                elif ly["type"] == "dense":
                    m.weight.copy_(torch.from_numpy(P["w"].T.copy()))
                    m.bias.copy_(torch.from_numpy(P["b"]))
    decay = [p for n_, p in net.named_parameters() if p.dim() > 1]
    rest = [p for n_, p in net.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=hp["lr"])
    F = torch.nn.functional
    N, B = len(xtr), hp["batch_size"]
    steps = -(-N // B)
    lr_at = make_schedule(hp["schedule"], hp["lr"], hp["epochs"] * steps)
    aug = parse_augment(hp["augment"])
    fill = float(xtr.min())
    rng = np.random.default_rng(seed)
    Xho = torch.from_numpy(np.ascontiguousarray(xho.transpose(0, 3, 1, 2)))
    hist = []
    for ep in range(hp["epochs"]):
        t0 = time.perf_counter()
        net.train()
        perm = rng.permutation(N)
        for i in range(steps):
            idx = perm[i * B : (i + 1) * B]
            xb = augment_batch(xtr[idx], aug, rng, fill)
            X = torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2)))
            for g in opt.param_groups:
                g["lr"] = lr_at(ep * steps + i)
            loss = F.cross_entropy(net(X), torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            proba = torch.cat([torch.softmax(net(Xho[s : s + 1000]), 1)
                               for s in range(0, len(xho), 1000)]).numpy()
        hist.append({"epoch": ep + 1, "dev_acc": float((proba.argmax(1) == yho).mean()),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(hist[-1]), file=sys.stderr, flush=True)
    return proba, None, hist


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--model", default="cnn")
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="DEFAULTS overrides, key=value")
    p.add_argument("--torch", action="store_true", help="train the torch twin instead")
    p.add_argument("--torch-init", choices=("torch", "ours"), default="torch")
    p.add_argument("--swa", type=int, default=0,
                   help="also score the average of the last N epochs' weights (BN recomputed)")
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    p.add_argument("--pseudo", type=float, default=0.0,
                   help="train a student on the training folds plus the test rows the model "
                   "labels at p >= this, and score the student (transductive)")
    p.add_argument("--no-curve", action="store_true",
                   help="do not evaluate the held-out fold after every epoch")
    a = p.parse_args(argv)
    T.STEP_THREADS = 1  # one core per experiment process (the results do not depend on it)
    overrides = parse_set(a.set)
    M.DEFAULTS[a.model] = {**M.DEFAULTS[a.model], **overrides}
    x8, y = load()
    fold_of = folds(y)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proba").mkdir(exist_ok=True)
    for f in a.folds:
        tr, ho = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        norm = fit_normalizer(x8[tr])
        xtr, xho = normalize(x8[tr], norm), normalize(x8[ho], norm)
        ytr, yho = y[tr], y[ho]
        cfg = TrainConfig(model=a.model, seed=a.seed)
        hp = T.hyperparameters(cfg)
        t0 = time.perf_counter()
        extra = {}
        if a.torch:
            proba, model, hist = run_torch({**hp, "model": a.model}, xtr, ytr, xho, yho, a.seed,
                                           a.torch_init)
        else:
            acc = swa_hook(hp["epochs"] - a.swa + 1) if a.swa else None
            model, hist = fit_ours(cfg, hp, xtr, ytr, None if a.no_curve else xho, yho)
            proba = predict_proba([model], xho)
            if a.pseudo:  # the model above is the teacher; the student is scored below
                model, hist, proba, info = pseudo_round(a, cfg, hp, model, x8, norm, xtr, ytr,
                                                        xho, yho, proba, f)
                extra.update(info)
            if a.tta:
                pt = predict_proba([model], xho, tta=True)
                extra["tta_acc"] = float((pt.argmax(1) == yho).mean())
            if acc:
                swa = Model(model.spec, {k: (v / acc["n"]).astype(np.float32)
                                         for k, v in acc["sum"].items()})
                recompute_bn(swa, xtr)
                ps = predict_proba([swa], xho)
                extra["swa_acc"] = float((ps.argmax(1) == yho).mean())
                extra["swa_epochs"] = acc["n"]
                np.savez_compressed(RESULTS / "proba" / f"{a.name}-swa-f{f}.npz",
                                    proba=ps.astype(np.float16), rows=ho)
        seconds = time.perf_counter() - t0
        pred = proba.argmax(1)
        row = {
            "name": a.name,
            "fold": f,
            "seed": a.seed,
            "impl": "torch" if a.torch else "numpy",
            "held_out_rows": int(len(ho)),
            "acc": float((pred == yho).mean()),
            "errors": int((pred != yho).sum()),
            "log_loss": float(-np.log(np.clip(proba[np.arange(len(ho)), yho], 1e-7, 1)).mean()),
            **extra,
            "seconds": round(seconds, 1),
            "epoch_seconds": [round(h["seconds"], 1) for h in hist],
            "curve": [h["dev_acc"] for h in hist],
            "hp": {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()},
            "torch_init": a.torch_init if a.torch else None,
            "load": os.getloadavg(),
            "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "command": "python scripts/experiments/cvexp.py " + " ".join(argv or sys.argv[1:]),
        }
        np.savez_compressed(RESULTS / "proba" / f"{a.name}-f{f}.npz",
                            proba=proba.astype(np.float16), rows=ho)
        with open(RESULTS / f"{a.name}.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("name", "fold", "acc", "errors", "seconds")}
                         | extra), flush=True)


if __name__ == "__main__":
    main()
