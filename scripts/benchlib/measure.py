"""Measurements of our package: the machine's sgemm rate, FLOPs of a spec, training epochs
through `pipeline.train.train()` on a chosen number of threads, inference, and a scratch-copy
`make submit` (peak memory, no-op time)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import train as train_module
from pipeline.params import TrainConfig
from pipeline.predict import predict_proba
from pipeline.train import train

REPO = Path(__file__).resolve().parents[2]
WARMUP_ROWS = 1024


def macs_per_sample(spec):
    """Multiply-adds of one forward pass of `spec` for one 28x28x1 image (dense and conv)."""
    h, w, _ = spec["input_shape"]
    macs = 0
    for ly in spec["layers"]:
        if ly["type"] == "conv":
            k, pad = ly["k"], ly.get("pad", 0)
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            macs += h * w * k * k * ly["cin"] * ly["cout"]
        elif ly["type"] == "pool":
            h, w = h // 2, w // 2
        elif ly["type"] == "dense":
            macs += ly["in"] * ly["out"]
    return macs


def sgemm_gflops(n, repeats=4):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    b = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up: thread pool start, page faults
    best = min(timed(np.matmul, a, b, out=c) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def timed(f, *args, **kw):
    t0 = time.perf_counter()
    f(*args, **kw)
    return time.perf_counter() - t0


def interleaved(runs, rounds):
    """runs {label: f()} -> {label: [seconds of each round]}: every f once a round, in turn, so
    a change in the machine's speed hits them all."""
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, f in runs.items():
            times[label].append(timed(f))
    return times


@contextlib.contextmanager
def our_threads(threads):
    """train() on `threads` threads: 1 = everything on the calling thread (one BLAS thread, no
    prefetch thread, one-thread steps); 2+ = the package's own settings (prefetch thread and
    conv+pool steps on that many threads, BLAS still on one)."""
    saved = train_module.STEP_THREADS, train_module.PREFETCH
    train_module.STEP_THREADS, train_module.PREFETCH = threads, threads > 1
    try:
        yield
    finally:
        train_module.STEP_THREADS, train_module.PREFETCH = saved


def ours_trainer(settings, x, y, seed, threads=1):
    """Warm up, then -> a function that runs one timed epoch of train() (a one-epoch train()
    call on a fresh model) on `threads` threads and returns (the epoch loop's seconds, result)."""
    cfg = TrainConfig(**settings, epochs=1, seed=seed)
    with our_threads(threads):
        train(cfg, x[:WARMUP_ROWS], y[:WARMUP_ROWS], progress=False)

    def epoch():
        with our_threads(threads):
            result = train(cfg, x, y, progress=False)
        return result.history[0]["seconds"], result

    return epoch


def alternate(trainers, epochs):
    """Run `epochs` epochs of each trainer, taking turns (ours, torch, ours, torch, ...), so a
    change in the machine's load hits both. -> (per-trainer epoch seconds, last results)."""
    secs, last = [[] for _ in trainers], [None] * len(trainers)
    for _ in range(epochs):
        for k, epoch in enumerate(trainers):
            seconds, last[k] = epoch()
            secs[k].append(seconds)
    return secs, last


def time_predict(model, x_test):
    """-> (best wall seconds, best CPU seconds of all this process's threads) of two runs of
    predict_proba after a warm-up. CPU seconds hold up under load: on idle cores the wall time
    approaches CPU seconds / threads."""
    predict_proba([model], x_test[:1000])  # warm-up
    walls, cpus = [], []
    for _ in range(2):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        walls.append(timed(predict_proba, [model], x_test))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return min(walls), min(cpus)


def scratch_submit(zip_path, model, workdir):
    """-> (peak RSS MB of a first full `make submit`, best seconds of two no-op reruns)."""
    root = Path(workdir) / "repo"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / zip_path.name).symlink_to(Path(zip_path).resolve())
    stamp = root / ".venv-installed"  # the venv target make checks; newer than setup.cfg
    stamp.touch()
    cmd = ["make", "--no-print-directory", "submit", f"MODEL={model}", "EPOCHS=1",
           f"PY={sys.executable}", f"INSTALLED={stamp.name}"]
    env = {k: v for k, v in os.environ.items() if k not in ("DIGITS_ROOT", "MAKEFLAGS")}
    logfile = Path(workdir) / "make.log"

    def run():
        with open(logfile, "ab") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = logfile.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{' '.join(cmd)} failed in {root} (exit {proc.returncode}):\n"
                               + "\n".join(tail))
        return seconds, usage.ru_maxrss / 1024.0  # Linux reports KiB

    _, peak_mb = run()
    noop = min(run()[0] for _ in range(2))
    return peak_mb, noop
