"""An ensemble on the dev split (ENSEMBLE=N, no folds) trained in parallel: each member (one
seed) is a cached unit of its own, trained through `parallel.run` like the fold members, and the
driver writes model.npz, history.json, metrics.json and the runs line as the train stage does.

A single model stays in `stages.train`, with its per-epoch checkpoints; here a killed run
resumes member by member. Members may still use the dev split (early stopping, refit): they are
not cross-validated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from . import parallel, stages
from .cache import _combined, code_digests
from .units import lookup as _lookup
from .units import store as _store

log = logging.getLogger("pipeline")


def fit_split_member(data: dict, task: dict):
    """Train one member on the split's train rows, choosing on its dev rows -> TrainResult."""
    import numpy as np

    from .cv import step_threads
    from .params import TrainConfig
    from .preprocess import normalize
    from .train import train
    pixels, y = data["pixels"], np.asarray(data["labels"], np.int64)
    t, d = data["train_idx"], data["dev_idx"]
    norm = data["normalizer"]
    with step_threads(task.get("cores", 1)):
        return train(TrainConfig(**task["cfg"]), normalize(pixels[t], norm), y[t],
                     normalize(pixels[d], norm), y[d], progress=parallel.member_progress(task),
                     label=task.get("label", ""))


def _code() -> str:
    own = Path(__file__)
    return _combined({**code_digests(fit_split_member),
                      "pipeline/ensemble.py": hashlib.sha256(own.read_bytes()).hexdigest()[:12]})


def train_ensemble(paths, hp: dict, par: parallel.ParallelConfig) -> dict:
    """hp["ensemble"] members (seeds seed, seed+1, ...) saved together; returns metrics."""
    inputs, files = stages._inputs(paths, parsed=paths.parsed, split=paths.split,
                                   normalizer=paths.normalizer)
    n, code = hp["ensemble"], _code()
    members = [{**hp, "seed": hp["seed"] + k, "ensemble": 1} for k in range(n)]
    members = json.loads(json.dumps(members, default=list))
    keys = [({}, inputs, {"train": m, "split": "dev"}, code) for m in members]
    names = [f"train (model {k + 1}/{n}, seed {m['seed']})" for k, m in enumerate(members)]
    results = {}
    for k, (key, name) in enumerate(zip(keys, names)):
        r = _lookup(paths, key, name)
        if r is not None:
            results[k] = r
    todo = [k for k in range(n) if k not in results]
    if todo:
        where = (f"dask scheduler {par.scheduler}" if par.backend == "dask"
                 else f"{min(parallel.workers(par), len(todo))} local worker(s)")
        log.info("train: training %d of %d member(s) on %s", len(todo), n, where)
        from .readers import read_digits, read_normalizer, read_split
        parsed = read_digits(Path(files["parsed"]))
        split = read_split(Path(files["split"]), len(parsed["train_y"]))
        data = {"pixels": parsed["train_x"], "labels": parsed["train_y"],
                "normalizer": read_normalizer(Path(files["normalizer"])),
                "train_idx": split["train_idx"], "dev_idx": split["dev_idx"]}
        cores = parallel.cores_per_task(par, len(todo))
        tasks = [{"cfg": members[k], "cores": cores, "label": names[k],
                  "progress": par.progress} for k in todo]
        for t, r in parallel.run(fit_split_member, data, tasks, par):
            k = todo[t]
            _store(paths, keys[k], r)
            results[k] = r
            log.info("%s: done, dev accuracy %.2f%%, %.1f s (%d/%d)", names[k],
                     100 * (r.dev_accuracy or 0), r.seconds, len(results), n)
    ordered = [(members[k], results[k], results[k].seconds) for k in range(n)]
    metrics = stages._train_metrics(hp, ordered, paths)
    stages.write_models(paths, [r.model for _, r, _ in ordered], metrics,
                        [{"seed": m["seed"], "best_epoch": r.best_epoch, "epochs": r.history}
                         for m, r, _ in ordered])
    if todo:  # one line of run history per training done, none for a cache reuse
        from .fileio import append_line
        from .runs import run_record, utc_now
        append_line(paths.runs, json.dumps(run_record(metrics, utc_now()), sort_keys=True))
    return metrics
