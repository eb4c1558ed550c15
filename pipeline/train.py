"""The training loop: `train_step` (one mini-batch), `run_epoch` (one pass), `fit` (epochs with
dev evaluation and early stopping) and `train` (a whole run from a TrainConfig, with the optional
refit on every labelled row and resumable checkpoints, `checkpoint.py`).

Inputs are normalized float32 images (N, 28, 28, 1) and integer labels. Everything random
(initialization, shuffling, augmentation, dropout) draws from one `np.random.default_rng(seed)`,
so a run is reproducible and a resumed run equals an uninterrupted one. Ensembles and file paths
other than the checkpoint are the caller's job. A non-finite loss or weights stop training with
`TrainingDiverged`, before anything is saved, so the previous model stays.

Refit (cfg.refit with a dev set): train() first fits on (x_train, y_train), picks the best epoch
count on dev, then trains a fresh model on train+dev for that many epochs and returns it. The
reported best_epoch, dev_accuracy, dev_proba and history are those of the first fit (the refit
model has seen the dev rows, so its dev figures would be optimistic); `refit_history` holds the
second fit's epochs.

EMA (hp["ema"] > 0, `nn/averaging.py`): every optimizer step also updates a running average of
the weights; at the end of each fit the model takes the average and its BatchNorm statistics are
recomputed over that fit's rows (un-augmented). That average is the model returned, so no epoch
is picked on dev (early stopping is refused, `params.check_combination`): best_epoch is the last
epoch, dev_accuracy and dev_proba are the averaged model's, and the per-epoch dev figures in
history are the trained (not averaged) weights'. With refit the second fit also averages, over
the same number of epochs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import checkpoint as ckpt
from pipeline.checkpoint import FitState
from pipeline.config import IMAGE_SIDE, N_CLASSES, UserError, asdict
from pipeline.nn.augment import parse_augment
from pipeline.nn.averaging import WeightEMA, load_average
from pipeline.nn.batches import Batches, epoch_aug_rng
from pipeline.nn.heap import keep_freed_memory
from pipeline.nn.losses import (
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.nn.optim import Optimizer
from pipeline.nn.schedules import make_schedule
from pipeline.nn.threads import blas_threads
from pipeline.params import resolve
from pipeline.progress import EpochProgress

EVAL_BATCH = 1000
TRAIN_THREADS = 1  # OpenBLAS threads during training; see train()
STEP_THREADS = 2  # Python threads of a step's conv+pool layers (the same result for any count)
PREFETCH = True  # prepare the next batch on a thread (the same result either way)


class TrainingDiverged(UserError):
    """The loss or the weights stopped being finite numbers."""


@dataclass
class TrainResult:
    model: Model
    history: list[dict]  # one dict per epoch of the (first) fit
    best_epoch: int  # 1-based epoch whose parameters were kept (the last without dev or with ema)
    dev_accuracy: float | None
    dev_proba: np.ndarray | None  # (N_dev, 10) float32, of the dev-selected model
    seconds: float
    hyperparameters: dict = field(default_factory=dict)  # the resolved settings used
    refit_history: list[dict] = field(default_factory=list)


def hyperparameters(cfg) -> dict:
    """cfg resolved against the model's defaults and checked (`params.resolve`)."""
    return resolve(cfg)


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
# One step, one epoch, one fit


def train_step(model, opt, xb, yb, lr, rng, smoothing=0.0):
    """Forward, loss, backward and one optimizer step on a batch -> (loss, correct count)."""
    z, caches = model.forward_train(xb, rng)  # (B, 10)
    loss, lcache = softmax_cross_entropy_forward(z, yb, smoothing)
    model.backward(softmax_cross_entropy_backward(lcache), caches)
    opt.step(model.theta, model.grad, lr)
    return loss, np.count_nonzero(z.argmax(axis=1) == yb)


@dataclass
class Recipe:
    """What one fit needs besides the data: batch size, schedule, augmentation, smoothing."""

    batch: int
    steps: int  # per epoch
    lr_at: object  # step -> learning rate
    augment: dict
    smoothing: float
    lr: float  # the configured peak, for messages

    @classmethod
    def of(cls, hp, n, epochs):
        batch = n if hp["batch_size"] is None else min(int(hp["batch_size"]), n)
        steps = math.ceil(n / batch)
        return cls(batch, steps, make_schedule(hp["schedule"], hp["lr"], epochs * steps),
                   parse_augment(hp["augment"]), float(hp["label_smoothing"]), hp["lr"])


def run_epoch(state: FitState, recipe: Recipe, rng, x, y, on_step=None) -> dict:
    """One pass over (x, y) in shuffled mini-batches -> the epoch's row of history."""
    n, b = x.shape[0], recipe.batch
    perm = rng.permutation(n) if b < n else None
    loss_sum, correct, lr = 0.0, 0, recipe.lr
    state.model.threads = STEP_THREADS  # conv+pool steps on threads: the same result
    # batch i+1 is gathered and augmented on a second thread during step i, from its own
    # generator (drawn from rng once per epoch, only with augmentation): the same batches
    aug_rng = epoch_aug_rng(rng, recipe.augment)
    # the background value augmentation fills with; a pass over all of x (4-6 ms for the 42000
    # rows, 1% of an MLP epoch: scripts/experiments/mlp_step_kernels.py), so only when there is
    # augmentation
    fill = float(x.min()) if aug_rng is not None else None
    batches = Batches(x, y, perm, b, recipe.augment, aug_rng, fill, PREFETCH)
    for i, (xb, yb) in enumerate(batches):
        lr = recipe.lr_at(state.epoch * recipe.steps + i)
        loss, right = train_step(state.model, state.opt, xb, yb, lr, rng, recipe.smoothing)
        if state.ema is not None:
            state.ema.update(state.model.theta)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged in epoch {state.epoch + 1}, step {i + 1}: the loss is "
                f"{loss}. The previous model is kept; lower the learning rate (--lr, LR=; peak "
                f"now {recipe.lr:g}) and train again.")
        loss_sum += loss * yb.shape[0]
        correct += right
        if on_step is not None:
            on_step(loss)
    if not np.isfinite(state.model.theta).all():
        raise TrainingDiverged(f"training diverged in epoch {state.epoch + 1}: the weights are "
                               f"no longer finite. The previous model is kept; lower the "
                               f"learning rate (--lr, LR=) and train again.")
    return {"epoch": state.epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
            "dev_loss": None, "dev_acc": None, "lr": lr, "seconds": 0.0}


def fit(state: FitState, recipe: Recipe, rng, x, y, x_dev, y_dev, epochs, patience=0,
        progress=None, save=None) -> FitState:
    """Train `state` from state.epoch up to `epochs`, evaluating on dev when given, keeping the
    best dev epoch's parameters and stopping after `patience` epochs without improvement (with
    an EMA, state.ema, the last epoch counts as the best: the average is what is kept)."""
    if progress is not None:
        progress.start(epochs, recipe.steps, done=state.epoch)
    try:
        while state.epoch < epochs and not state.stopped:
            t0 = time.perf_counter()
            row = run_epoch(state, recipe, rng, x, y,
                            on_step=progress.step if progress is not None else None)
            state.epoch += 1
            if x_dev is not None:
                row["dev_loss"], row["dev_acc"], _ = evaluate(state.model, x_dev, y_dev)
                if state.ema is not None:
                    state.best_epoch = state.epoch
                elif row["dev_acc"] > state.best_acc:
                    state.best_epoch, state.best_acc = state.epoch, row["dev_acc"]
                    state.best_params = {k: v.copy() for k, v in state.model.params.items()}
            else:
                state.best_epoch = state.epoch
            row["seconds"] = time.perf_counter() - t0
            state.history.append(row)
            state.stopped = bool(x_dev is not None and patience
                                 and state.epoch - state.best_epoch >= patience)
            if progress is not None:
                progress.epoch(row)
            if save is not None:
                save(state)
    finally:
        if progress is not None:
            progress.close()
    return state


# ----------------------------------------------------------------------------------------------
# A whole run


def _check_data(x, y, what):
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 1):
        raise ValueError(f"x_{what} must have shape (N, 28, 28, 1), got {x.shape}")
    if y is None or y.shape != (x.shape[0],):
        raise ValueError(f"y_{what} must have shape ({x.shape[0]},), got "
                         f"{None if y is None else y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"x_{what} is empty")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"y_{what} labels must be in 0..9, got {y.min()}..{y.max()}")
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


def train(cfg, x_train, y_train, x_dev=None, y_dev=None, *, progress="bar",
          checkpoint: Path | None = None, resume: bool = False, label: str = "") -> TrainResult:
    """Train one model per `cfg` and return it with its history and dev figures.

    `progress`: "bar" (a terminal), "lines" (one line per epoch, for logs), None or False.
    Runs with one OpenBLAS thread (TRAIN_THREADS): the batch-sized matrix products gain little
    from a second thread, and on two cores shared with other processes two threads made a
    training step up to 30x slower (docs/bench-notes.md). Freed working arrays stay in the
    process for the next step (heap.keep_freed_memory)."""
    keep_freed_memory()
    with blas_threads(TRAIN_THREADS):
        return _train(cfg, x_train, y_train, x_dev, y_dev, progress, checkpoint, resume, label)


def _train(cfg, x_train, y_train, x_dev, y_dev, progress, checkpoint, resume, label):
    t_start = time.perf_counter()
    hp = resolve(cfg)
    x_train, y_train = _check_data(x_train, y_train, "train")
    if x_dev is not None:
        x_dev, y_dev = _check_data(x_dev, y_dev, "dev")
    rng = np.random.default_rng(hp["seed"])
    key = json.dumps({"cfg": asdict(cfg), "hp": _jsonable(hp)}, sort_keys=True)

    def new_state(init_rng):
        model = Model(build_spec(hp["model"], hp), rng=init_rng)
        ema = WeightEMA(model.theta, hp["ema"]) if hp.get("ema") else None
        return FitState(model, Optimizer(hp["optimizer"], model.theta.size, model.n_decay,
                                         weight_decay=hp["weight_decay"]), ema=ema)

    phase, first = 0, {}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        phase, state, first = ckpt.load(checkpoint, key, rng, new_state)
    else:
        state = new_state(rng)

    def saver(ph):
        if checkpoint is None:
            return None
        return lambda s: ckpt.save(checkpoint, key, rng, s, ph, first)

    def reporter(what):
        return EpochProgress.make(progress, f"{label or hp['model']}{what}")

    if phase == 0:
        recipe = Recipe.of(hp, x_train.shape[0], hp["epochs"])
        fit(state, recipe, rng, x_train, y_train, x_dev, y_dev, hp["epochs"], hp["patience"],
            reporter(""), saver(0))
        if state.best_params is not None:
            state.model.load_params(state.best_params)
        _average(state, x_train)
        dev_acc = dev_proba = None
        if x_dev is not None:
            _, dev_acc, dev_proba = evaluate(state.model, x_dev, y_dev)
        first.update(best_epoch=state.best_epoch, dev_accuracy=dev_acc, history=state.history,
                     dev_proba=dev_proba)
        if not (hp["refit"] and x_dev is not None):
            return TrainResult(state.model, state.history, state.best_epoch, dev_acc, dev_proba,
                               time.perf_counter() - t_start, _jsonable(hp))
        phase, state = 1, new_state(rng)
        if checkpoint is not None:
            ckpt.save(checkpoint, key, rng, state, 1, first)
    # phase 1: refit on every labelled row for the dev-selected number of epochs
    x_all, y_all = np.concatenate([x_train, x_dev]), np.concatenate([y_train, y_dev])
    recipe = Recipe.of(hp, x_all.shape[0], first["best_epoch"])
    fit(state, recipe, rng, x_all, y_all, None, None, first["best_epoch"], 0,
        reporter(" refit"), saver(1))
    _average(state, x_all)
    return TrainResult(state.model, first["history"], first["best_epoch"], first["dev_accuracy"],
                       first["dev_proba"], time.perf_counter() - t_start, _jsonable(hp),
                       state.history)


def _average(state, x):
    """With an EMA, the model becomes the average, BatchNorm statistics recomputed over x."""
    if state.ema is not None:
        load_average(state.model, state.ema, x, threads=STEP_THREADS)


def _jsonable(hp):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}


__all__ = ["Recipe", "TrainResult", "TrainingDiverged", "evaluate", "fit", "hyperparameters",
           "run_epoch", "train", "train_step"]
