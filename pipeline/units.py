"""Training units: the cached members of a cross-validation, a refit or a pseudo-label round.

A unit is one model to train on given labelled rows (plus, for a pseudo-label round, given test
rows with their pseudo labels), optionally scored on held-out rows. Its cache key holds the data's
digests, its parameters and the code it runs. `fit_units` reuses every unit found in the cache,
trains the others through `parallel.run` (local processes or a dask cluster) and stores each
result here, in the driver, the moment it arrives: a killed run resumes with its finished units.
Reading files and writing outputs are the callers' business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import parallel, stages
from .cache import _load_checked, _seal_path
from .config import Paths
from .fileio import write_text

log = logging.getLogger("pipeline")


@dataclass
class Unit:
    key: tuple  # ({}, inputs, params, code): what `lookup` and `store` take
    name: str  # how the log names it, e.g. "cv fold 2/5 seed 1"
    cfg: dict  # the member's resolved training parameters
    train: np.ndarray  # (n_train,) train.csv rows it trains on
    eval: np.ndarray  # (n_eval,) train.csv rows it is scored on (may be empty)
    worker: Callable  # module-level fn(data, task) -> result, run on a worker
    pseudo_rows: np.ndarray | None = None  # (n_pseudo,) test.csv rows it also trains on
    pseudo_labels: np.ndarray | None = None  # (n_pseudo,) their pseudo labels


def _unit(files, inputs, params, code):
    """A unit's cache entry. A worker computed the result; it is handed in through `files`
    (left out of the key), so only the driver ever writes the cache."""
    return files["result"]


def _memorized(paths: Paths):
    import joblib
    cache = stages._cache(paths)
    if cache.location is None:  # caching off: nothing is looked up or stored
        return None
    return joblib.Memory(cache.location / "joblib", verbose=0).cache(_unit, ignore=["files"])


def lookup(paths: Paths, key: tuple, name: str):
    """The cached result of `key`, or None (also for a damaged entry, which is cleared)."""
    cached = _memorized(paths)
    if cached is None or not cached.check_call_in_cache(*key):
        return None
    return _load_checked(cached, key, name, paths.cache)


def store(paths: Paths, key: tuple, result) -> None:
    import joblib
    cached = _memorized(paths)
    if cached is None:
        return
    args = ({"result": result}, *key[1:])
    cached(*args)
    write_text(_seal_path(cached.call_and_shelve(*args)), joblib.hash(result))


def where(par: parallel.ParallelConfig, n_tasks: int) -> str:
    return (f"dask scheduler {par.scheduler}" if par.backend == "dask"
            else f"{min(parallel.workers(par), n_tasks)} local worker(s)")


def run_unit(data: dict, task: dict):
    """What every worker runs: the unit's own worker function."""
    return task["worker"](data, task)


def fit_units(paths: Paths, units: list[Unit], par: parallel.ParallelConfig, stage: str,
              pixels: np.ndarray, labels: np.ndarray, normalizer: dict,
              test_pixels: np.ndarray | None = None) -> tuple[list, list[bool]]:
    """(each unit's result in order, whether it was trained): reused from the cache, or trained
    through parallel.run and stored the moment each arrives. Only the rows the units to train
    use are shipped to the workers, once."""
    results = {}
    for i, u in enumerate(units):
        r = lookup(paths, u.key, u.name)
        if r is not None:
            results[i] = r
    todo = [i for i in range(len(units)) if i not in results]
    if not todo:
        return [results[i] for i in range(len(units))], [False] * len(units)
    log.info("%s: training %d of %d member(s) on %s", stage, len(todo), len(units),
             where(par, len(todo)))
    union = np.unique(np.concatenate([np.r_[units[i].train, units[i].eval] for i in todo]))
    data = {"pixels": pixels[union], "labels": labels[union], "normalizer": normalizer}
    extra = [units[i].pseudo_rows for i in todo if units[i].pseudo_rows is not None]
    test_union = np.unique(np.concatenate(extra)) if extra else None
    if test_union is not None:
        data["test_pixels"] = test_pixels[test_union]
    tasks, cores = [], parallel.cores_per_task(par, len(todo))
    for i in todo:
        u = units[i]
        task = {"cfg": u.cfg, "train_rows": np.searchsorted(union, u.train),
                "eval_rows": np.searchsorted(union, u.eval), "worker": u.worker,
                "cores": cores, "label": u.name, "progress": par.progress}
        if u.pseudo_rows is not None:
            task.update(pseudo_rows=np.searchsorted(test_union, u.pseudo_rows),
                        pseudo_labels=u.pseudo_labels)
        tasks.append(task)
    for t, r in parallel.run(run_unit, data, tasks, par):
        u = units[todo[t]]
        store(paths, u.key, r)
        results[todo[t]] = r
        log.info("%s: done, %s, %.1f s (%d/%d)", u.name, _done(r, u), r["seconds"],
                 len(results), len(units))
    return [results[i] for i in range(len(units))], [i in todo for i in range(len(units))]


def _done(r: dict, u: Unit) -> str:
    if len(u.eval):
        return f"{100 * r['eval_accuracy']:.2f}% on its {len(u.eval)} held-out rows"
    pseudo = len(u.pseudo_rows) if u.pseudo_rows is not None else 0
    return (f"trained on {len(u.train)} labelled rows"
            + (f" and {pseudo} pseudo-labelled test rows" if pseudo else ""))
