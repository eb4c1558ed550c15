"""Train one model on the dev split of train.csv and print dev accuracy and seconds: the command
behind the figures in docs/nn-results.md.

    python scripts/tune.py --model cnn [--epochs 15 --lr 3e-3 ... --ensemble 5 --tta]

It reads the competition zip itself (default /work/shared/data/digit-recognizer.zip, or
--zip), splits 10% per class with np.random.default_rng(0) and normalizes with the scalar
mean/std of the train part, as the pipeline's defaults do. Set OPENBLAS_NUM_THREADS before
running to pin BLAS threads.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.nn import save_models  # noqa: E402
from pipeline.params import TrainConfig  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402
from pipeline.train import train  # noqa: E402

CACHE = Path("/tmp/digits-train.npz")


def load_train(zip_path):
    if CACHE.exists():
        with np.load(CACHE) as z:
            return z["x"], z["y"]
    import pandas as pd

    with zipfile.ZipFile(zip_path) as zf:
        df = pd.read_csv(io.BytesIO(zf.read("train.csv")), dtype=np.uint8)
    y = df["label"].to_numpy(np.int64)
    x = df.drop(columns="label").to_numpy(np.uint8)
    np.savez(CACHE, x=x, y=y)
    return x, y


def split(y, dev_fraction=0.1, seed=0):
    """Stratified: per class, shuffle with one default_rng(seed) and take dev_fraction."""
    rng = np.random.default_rng(seed)
    dev = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        dev.append(idx[: int(round(dev_fraction * len(idx)))])
    dev = np.sort(np.concatenate(dev))
    train = np.setdiff1d(np.arange(len(y)), dev)
    return train, dev


def prepare(zip_path):
    x, y = load_train(zip_path)
    tr, dv = split(y)
    xt = x[tr].astype(np.float64) / 255.0
    mean, std = xt.mean(), xt.std()

    def norm(a):
        return ((a.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)).reshape(
            -1, 28, 28, 1
        )

    return norm(x[tr]), y[tr], norm(x[dv]), y[dv]


def evaluate_saved(directory, xd, yd):
    from pipeline.nn import load_models

    files = sorted(directory.glob("*.npz"))
    models = [load_models(f)[0] for f in files]

    def scores(ms, tta):
        p = predict_proba(ms, xd, tta=tta)
        loss = float(-np.log(np.maximum(p[np.arange(len(yd)), yd], 1e-12)).mean())
        return f"{float((p.argmax(1) == yd).mean()):.4f} (log loss {loss:.4f})"

    for f, m in zip(files, models):
        print(f"{f.name}: dev_acc {scores([m], False)}  with TTA {scores([m], True)}")
    both = f"dev_acc {scores(models, False)}  with TTA {scores(models, True)}"
    print(f"ENSEMBLE of {len(models)}: {both}")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zip", default="/work/shared/data/digit-recognizer.zip")
    ap.add_argument("--model", default="cnn")
    for name, typ in [
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("optimizer", str),
        ("schedule", str),
        ("weight-decay", float),
        ("activation", str),
        ("dropout", float),
        ("label-smoothing", float),
        ("augment", str),
        ("patience", int),
        ("seed", int),
        ("ensemble", int),
    ]:
        ap.add_argument(f"--{name}", type=typ)
    ap.add_argument("--hidden", type=str, help="comma-separated sizes")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--save", type=Path, help="directory to save each member as <model>-seed<k>.npz"
    )
    ap.add_argument(
        "--eval",
        type=Path,
        help="instead of training: dev accuracy of every saved "
        "model in this directory, alone and as an ensemble, without and with TTA",
    )
    a = ap.parse_args()
    fields = {
        k: v
        for k, v in vars(a).items()
        if v is not None and k not in ("zip", "tta", "no_progress", "hidden", "save", "eval")
    }
    if a.hidden:
        fields["hidden"] = tuple(int(h) for h in a.hidden.split(","))
    cfg = TrainConfig(**fields)
    xt, yt, xd, yd = prepare(a.zip)
    if a.eval:
        return evaluate_saved(a.eval, xd, yd)
    models, total = [], 0.0
    for k in range(cfg.ensemble):
        r = train(cfg.replace(seed=cfg.seed + k), xt, yt, xd, yd, progress=not a.no_progress)
        total += r.seconds
        models.append(r.model)
        if a.save:
            save_models(
                a.save / f"{cfg.model}-seed{cfg.seed + k}.npz",
                [r.model],
                extra={"history": r.history, "best_epoch": r.best_epoch, "seconds": r.seconds},
            )
        for h in r.history:
            print(
                json.dumps({k2: round(v, 5) if isinstance(v, float) else v for k2, v in h.items()})
            )
        print(
            f"member {k}: seed {cfg.seed + k} best_epoch {r.best_epoch} "
            f"dev_acc {r.dev_accuracy:.4f} "
            f"seconds {r.seconds:.1f}",
            flush=True,
        )
    t = time.perf_counter()
    p = predict_proba(models, xd, tta=a.tta)
    acc = float((p.argmax(1) == yd).mean())
    if a.tta is False and len(models) > 1:
        singles = [float((predict_proba([m], xd).argmax(1) == yd).mean()) for m in models]
        print("members' dev_acc:", " ".join(f"{v:.4f}" for v in singles))
    print(
        f"RESULT model={cfg.model} members={len(models)} tta={a.tta} dev_acc={acc:.4f} "
        f"train_seconds={total:.1f} predict_seconds={time.perf_counter() - t:.2f} "
        f"hp={json.dumps(r.hyperparameters)}"
    )


if __name__ == "__main__":
    main()
