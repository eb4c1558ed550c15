"""The training loop: mini-batch training of a `pipeline.nn` model from a TrainConfig, with
on-the-fly augmentation, per-epoch dev evaluation, early stopping on dev accuracy (keeping the
best epoch's parameters), optional refit on train+dev, and resumable per-epoch checkpoints.

Inputs are normalized float32 images (N, 28, 28, 1) and integer labels. Everything random
(initialization, shuffling, augmentation, dropout) draws from one `np.random.default_rng(cfg.seed)`,
so a run is reproducible and a resumed run equals an uninterrupted one. Ensembles are the
caller's job (one train() per seed); file paths other than the checkpoint are too.

Refit (cfg.refit with a dev set): train() first fits on (x_train, y_train), picks the best epoch
count on dev, then trains a fresh model on train+dev for that many epochs and returns it. The
reported best_epoch, dev_accuracy, dev_proba and history are those of the first fit (the refit
model has seen the dev rows, so its dev figures would be optimistic); `refit_history` holds the
second fit's epochs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import IMAGE_SIDE, N_CLASSES, TrainConfig, asdict
from pipeline.fileio import atomic_path
from pipeline.nn.augment import parse_augment
from pipeline.nn.batches import Batches, epoch_aug_rng
from pipeline.nn.layers import ACTIVATIONS
from pipeline.nn.losses import (
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from pipeline.nn.model import Model
from pipeline.nn.models import ARCHITECTURES, DEFAULTS, build_spec
from pipeline.nn.optim import OPTIMIZERS, Optimizer
from pipeline.nn.schedules import SCHEDULES, make_schedule
from pipeline.nn.threads import blas_threads

EVAL_BATCH = 1000
TRAIN_THREADS = 1  # OpenBLAS threads during training; see train()
STEP_THREADS = 2  # Python threads of a step's conv+pool layers (the same result for any count)
PREFETCH = True  # prepare the next batch on a thread (the same result either way)


@dataclass
class TrainResult:
    model: Model
    history: list[dict]  # one dict per epoch of the (first) fit
    best_epoch: int  # 1-based epoch whose parameters were kept (the last one without a dev set)
    dev_accuracy: float | None
    dev_proba: np.ndarray | None  # (N_dev, 10) float32, of the dev-selected model
    seconds: float
    hyperparameters: dict = field(default_factory=dict)  # the resolved settings used
    refit_history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Hyperparameters: the model's defaults, overridden by whatever the config sets


def hyperparameters(cfg: TrainConfig) -> dict:
    """Resolve cfg against the model's DEFAULTS and validate; ValueError names a bad value."""
    if cfg.model not in ARCHITECTURES:
        raise ValueError(f"model must be one of {sorted(ARCHITECTURES)}, got {cfg.model!r}")
    hp = dict(DEFAULTS[cfg.model])
    if cfg.epochs < 0:
        raise ValueError(f"epochs must be >= 1 (0 = model default), got {cfg.epochs}")
    if cfg.batch_size < 0:
        raise ValueError(f"batch_size must be >= 1 (0 = model default), got {cfg.batch_size}")
    if cfg.lr < 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    overrides = {
        "epochs": cfg.epochs if cfg.epochs > 0 else None,
        "batch_size": cfg.batch_size if cfg.batch_size > 0 else None,
        "lr": cfg.lr if cfg.lr > 0 else None,
        "optimizer": cfg.optimizer or None,
        "schedule": cfg.schedule or None,
        "weight_decay": cfg.weight_decay if cfg.weight_decay >= 0 else None,
        "hidden": tuple(cfg.hidden) if cfg.hidden else None,
        "activation": cfg.activation or None,
        "dropout": cfg.dropout if cfg.dropout >= 0 else None,
        "label_smoothing": cfg.label_smoothing if cfg.label_smoothing >= 0 else None,
        "augment": cfg.augment or None,
    }
    hp.update({k: v for k, v in overrides.items() if v is not None})
    if cfg.patience < 0:
        raise ValueError(f"patience must be >= 0, got {cfg.patience}")
    if hp["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {hp['optimizer']!r}")
    if hp["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {hp['schedule']!r}")
    if hp["activation"] not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {hp['activation']!r}"
        )
    if not 0 <= hp["dropout"] < 1:
        raise ValueError(f"dropout must be in [0, 1), got {hp['dropout']}")
    if not 0 <= hp["label_smoothing"] < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {hp['label_smoothing']}")
    if any(int(h) <= 0 for h in hp["hidden"]):
        raise ValueError(f"hidden sizes must be > 0, got {list(hp['hidden'])}")
    if not math.isfinite(hp["lr"]) or hp["lr"] <= 0:
        raise ValueError(f"lr must be > 0, got {hp['lr']}")
    parse_augment(hp["augment"])  # raises on a bad string
    return hp


def _check_data(x, y, what):
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 1):
        raise ValueError(f"x_{what} must have shape (N, 28, 28, 1), got {x.shape}")
    if y is None or y.shape != (x.shape[0],):
        raise ValueError(
            f"y_{what} must have shape ({x.shape[0]},), got {None if y is None else y.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"x_{what} is empty")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"y_{what} labels must be in 0..9, got {y.min()}..{y.max()}")
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(model, x, y, batch_size=EVAL_BATCH):
    """-> (mean loss, accuracy, probabilities (N, 10) float32), eval mode, batched."""
    proba = np.empty((x.shape[0], N_CLASSES), dtype=np.float32)
    loss = 0.0
    for s in range(0, x.shape[0], batch_size):
        z = model.forward(x[s : s + batch_size])  # (B, 10)
        loss += softmax_cross_entropy_forward(z, y[s : s + batch_size])[0] * z.shape[0]
        proba[s : s + batch_size] = softmax(z)
    return loss / x.shape[0], float((proba.argmax(axis=1) == y).mean()), proba


# ----------------------------------------------------------------------------------------------
# One fit: state that a checkpoint captures


@dataclass
class _Fit:
    model: Model
    opt: Optimizer
    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0
    best_params: dict | None = None
    stopped: bool = False  # stopped early: a resumed run must not train on


def _snapshot(model):
    return {k: v.copy() for k, v in model.params.items()}


def _new_fit(hp, rng):
    model = Model(build_spec(hp["model"], hp), rng=rng)
    opt = Optimizer(
        hp["optimizer"], model.theta.size, model.n_decay, weight_decay=hp["weight_decay"]
    )
    return _Fit(model, opt)


def _run_epochs(fit, hp, rng, x, y, x_dev, y_dev, epochs, patience, progress, save, phase):
    """Train `fit` from fit.epoch up to `epochs`, evaluating on dev when given."""
    N = x.shape[0]
    B = N if hp["batch_size"] is None else min(int(hp["batch_size"]), N)
    steps_per_epoch = math.ceil(N / B)
    lr_at = make_schedule(hp["schedule"], hp["lr"], epochs * steps_per_epoch)
    aug = parse_augment(hp["augment"])
    fill = float(x.min())
    smoothing = float(hp["label_smoothing"])
    model, opt = fit.model, fit.opt
    model.threads = STEP_THREADS
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=fit.epoch * steps_per_epoch,
            desc=f"{hp['model']}{' refit' if phase else ''}",
            unit="batch",
            leave=False,
        )
    try:
        while fit.epoch < epochs and not fit.stopped:
            t0 = time.perf_counter()
            perm = rng.permutation(N) if B < N else None
            loss_sum, correct = 0.0, 0
            # batch i+1 is gathered and augmented on a second thread during step i
            batches = Batches(x, y, perm, B, aug, epoch_aug_rng(rng, aug), fill, PREFETCH)
            for i, (xb, yb) in enumerate(batches):
                step = fit.epoch * steps_per_epoch + i
                z, caches = model.forward_train(xb, rng)  # (B, 10)
                loss, lcache = softmax_cross_entropy_forward(z, yb, smoothing)
                model.backward(softmax_cross_entropy_backward(lcache), caches)
                lr = lr_at(step)
                opt.step(model.theta, model.grad, lr)
                loss_sum += loss * yb.shape[0]
                correct += int((z.argmax(axis=1) == yb).sum())
                if bar is not None:
                    bar.update(1)
                    if i % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.4f}", dev_acc=_last(fit.history, "dev_acc"))
            fit.epoch += 1
            row = {
                "epoch": fit.epoch,
                "train_loss": loss_sum / N,
                "train_acc": correct / N,
                "dev_loss": None,
                "dev_acc": None,
                "lr": lr,
                "seconds": 0.0,
            }
            if x_dev is not None:
                row["dev_loss"], row["dev_acc"], _ = evaluate(model, x_dev, y_dev)
                if row["dev_acc"] > fit.best_acc:
                    fit.best_epoch, fit.best_acc, fit.best_params = (
                        fit.epoch,
                        row["dev_acc"],
                        _snapshot(model),
                    )
            else:
                fit.best_epoch = fit.epoch
            row["seconds"] = time.perf_counter() - t0
            fit.history.append(row)
            fit.stopped = bool(
                x_dev is not None and patience and fit.epoch - fit.best_epoch >= patience
            )
            if save is not None:
                save(fit, phase, done=fit.stopped or fit.epoch >= epochs)
    finally:
        if bar is not None:
            bar.close()


def _last(history, key):
    v = history[-1][key] if history else None
    return "-" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------------------------
# Checkpoints: one .npz, no pickle


def _cfg_key(cfg, hp):
    return json.dumps(
        {
            "cfg": asdict(cfg),
            "hp": {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()},
        },
        sort_keys=True,
    )


def _save_checkpoint(path, cfg_key, rng, fit, phase, first):
    first = dict(first)
    proba = first.pop("dev_proba", None)
    arrays = {
        "cfg": np.array(cfg_key),
        "phase": np.array(phase),
        "epoch": np.array(fit.epoch),
        "rng": np.array(json.dumps(rng.bit_generator.state)),
        "history": np.array(json.dumps(fit.history)),
        "best": np.array(json.dumps([fit.best_epoch, fit.best_acc, fit.stopped])),
        "first": np.array(json.dumps(first)),
    }
    arrays.update({f"param/{k}": v for k, v in fit.model.params.items()})
    arrays.update({f"opt/{k}": v for k, v in fit.opt.state_dict().items()})
    if fit.best_params is not None:
        arrays.update({f"best/{k}": v for k, v in fit.best_params.items()})
    if proba is not None:
        arrays["first_proba"] = proba
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_checkpoint(path, cfg_key, rng, hp):
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if str(d["cfg"]) != cfg_key:
        raise ValueError(
            f"checkpoint {path} was written for a different configuration; "
            "delete it or train without resume"
        )
    rng.bit_generator.state = json.loads(str(d["rng"]))
    fit = _new_fit(hp, np.random.default_rng(0))
    fit.model.load_params({k[6:]: v for k, v in d.items() if k.startswith("param/")})
    fit.opt.load_state_dict({k[4:]: v for k, v in d.items() if k.startswith("opt/")})
    fit.epoch = int(d["epoch"])
    fit.history = json.loads(str(d["history"]))
    fit.best_epoch, fit.best_acc, fit.stopped = json.loads(str(d["best"]))
    best = {k[5:]: v for k, v in d.items() if k.startswith("best/")}
    fit.best_params = best or None
    first = json.loads(str(d["first"]))
    if "first_proba" in d:
        first["dev_proba"] = d["first_proba"]
    return int(d["phase"]), fit, first


# ----------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    x_train,
    y_train,
    x_dev=None,
    y_dev=None,
    *,
    progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one model per `cfg` and return it with its history and dev figures.

    Runs with one OpenBLAS thread (TRAIN_THREADS): the batch-sized matrix products gain little
    from a second thread, and on two cores shared with other processes two threads made a
    training step up to 30x slower (docs/bench-notes.md)."""
    with blas_threads(TRAIN_THREADS):
        return _train(cfg, x_train, y_train, x_dev, y_dev, progress, checkpoint, resume)


def _train(cfg, x_train, y_train, x_dev, y_dev, progress, checkpoint, resume):
    t_start = time.perf_counter()
    hp = hyperparameters(cfg)
    hp["model"] = cfg.model
    x_train, y_train = _check_data(x_train, y_train, "train")
    if x_dev is not None:
        x_dev, y_dev = _check_data(x_dev, y_dev, "dev")
    rng = np.random.default_rng(cfg.seed)
    cfg_key = _cfg_key(cfg, hp)
    phase, first = 0, {}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        phase, fit, first = _load_checkpoint(checkpoint, cfg_key, rng, hp)
    else:
        fit = _new_fit(hp, rng)

    def save(f, ph, done):
        if checkpoint is not None:
            _save_checkpoint(checkpoint, cfg_key, rng, f, ph, first)

    if phase == 0:
        _run_epochs(
            fit,
            hp,
            rng,
            x_train,
            y_train,
            x_dev,
            y_dev,
            hp["epochs"],
            cfg.patience,
            progress,
            save,
            phase=0,
        )
        if fit.best_params is not None:
            fit.model.load_params(fit.best_params)
        dev_acc = dev_proba = None
        if x_dev is not None:
            _, dev_acc, dev_proba = evaluate(fit.model, x_dev, y_dev)
        first = {
            "best_epoch": fit.best_epoch,
            "dev_accuracy": dev_acc,
            "history": fit.history,
            "dev_proba": dev_proba,
        }
        if not (cfg.refit and x_dev is not None):
            return TrainResult(
                fit.model,
                fit.history,
                fit.best_epoch,
                dev_acc,
                dev_proba,
                time.perf_counter() - t_start,
                _jsonable(hp),
            )
        phase = 1
        fit = _new_fit(hp, rng)
        save(fit, 1, done=False)
    # phase 1: refit on every labelled row for the dev-selected number of epochs
    x_all = np.concatenate([x_train, x_dev])
    y_all = np.concatenate([y_train, y_dev])
    _run_epochs(
        fit, hp, rng, x_all, y_all, None, None, first["best_epoch"], 0, progress, save, phase=1
    )
    return TrainResult(
        fit.model,
        first["history"],
        first["best_epoch"],
        first["dev_accuracy"],
        first["dev_proba"],
        time.perf_counter() - t_start,
        _jsonable(hp),
        fit.history,
    )


def _jsonable(hp):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}


__all__ = ["TrainResult", "evaluate", "hyperparameters", "train"]
