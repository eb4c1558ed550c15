"""Resumable training: one .npz per run holding everything an epoch boundary needs, no pickle.

A checkpoint holds the phase (0: the fit on the train rows, 1: the refit on every labelled row),
the parameters and optimizer state, the random generator's state, the history so far, the best
epoch's parameters, the running average of the weights and its step count (with ema), and what
the first phase found (for the refit). `load` refuses a checkpoint written for another
configuration, so resuming gives exactly what an uninterrupted run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fileio import atomic_path


@dataclass
class FitState:
    """One fit's state at an epoch boundary: what a checkpoint captures."""

    model: object  # pipeline.nn.Model
    opt: object  # pipeline.nn.optim.Optimizer
    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0
    best_params: dict | None = None
    stopped: bool = False  # stopped early: a resumed run must not train on
    ema: object = None  # pipeline.nn.averaging.WeightEMA with ema > 0, else None


def save(path: Path, key: str, rng: np.random.Generator, state: FitState, phase: int,
         first: dict) -> None:
    first = dict(first)
    proba = first.pop("dev_proba", None)
    arrays = {
        "cfg": np.array(key),
        "phase": np.array(phase),
        "epoch": np.array(state.epoch),
        "rng": np.array(json.dumps(rng.bit_generator.state)),
        "history": np.array(json.dumps(state.history)),
        "best": np.array(json.dumps([state.best_epoch, state.best_acc, state.stopped])),
        "first": np.array(json.dumps(first)),
    }
    arrays.update({f"param/{k}": v for k, v in state.model.params.items()})
    arrays.update({f"opt/{k}": v for k, v in state.opt.state_dict().items()})
    if state.best_params is not None:
        arrays.update({f"best/{k}": v for k, v in state.best_params.items()})
    if state.ema is not None:
        arrays.update({f"ema/{k}": v for k, v in state.ema.state_dict().items()})
    if proba is not None:
        arrays["first_proba"] = proba
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path: Path, key: str, rng: np.random.Generator, new_state) -> tuple[int, FitState, dict]:
    """(phase, state, first) from `path`; `rng` takes the saved generator state. `new_state(r)`
    builds a FitState initialized from generator `r` (a throwaway here: the saved parameters
    replace its draws). ValueError for another config."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if str(d["cfg"]) != key:
        raise ValueError(f"checkpoint {path} was written for a different configuration; "
                         "delete it or train without resume")
    rng.bit_generator.state = json.loads(str(d["rng"]))
    state = new_state(np.random.default_rng(0))
    state.model.load_params({k[6:]: v for k, v in d.items() if k.startswith("param/")})
    state.opt.load_state_dict({k[4:]: v for k, v in d.items() if k.startswith("opt/")})
    state.epoch = int(d["epoch"])
    state.history = json.loads(str(d["history"]))
    state.best_epoch, state.best_acc, state.stopped = json.loads(str(d["best"]))
    best = {k[5:]: v for k, v in d.items() if k.startswith("best/")}
    state.best_params = best or None
    ema = {k[4:]: v for k, v in d.items() if k.startswith("ema/")}
    if (state.ema is None) != (not ema):  # the key holds ema: only a damaged file gets here
        raise ValueError(f"checkpoint {path} does not hold the weight average its configuration "
                         "needs; delete it or train without resume")
    if state.ema is not None:
        state.ema.load_state_dict(ema)
    first = json.loads(str(d["first"]))
    if "first_proba" in d:
        first["dev_proba"] = d["first_proba"]
    return int(d["phase"]), state, first


__all__ = ["FitState", "load", "save"]
