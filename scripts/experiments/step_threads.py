"""Where the default cnn's training step loses on two threads: the step's wall and CPU time on
one and on two threads (CPU / wall = the cores kept busy), and on two threads the time spent
inside the kernels' parts (fused.in_parts, each part on its own thread) against outside them
(the steps and the Python between them that run on one thread), with each kernel's two parts
side by side (a wide gap: one thread waits for the other). Batch 128 of random images, one BLAS
thread, --steps steps after 3 warm-up steps.

    python scripts/experiments/step_threads.py [--steps 30]
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import train as T  # noqa: E402
from pipeline.nn import conv_winograd, fused, fused_first, heap  # noqa: E402
from pipeline.nn import models as M  # noqa: E402
from pipeline.nn.model import Model  # noqa: E402
from pipeline.nn.optim import Optimizer  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402

inside = collections.Counter()  # kernel part's name -> seconds in in_parts
part_s = collections.defaultdict(lambda: [0.0, 0.0])  # name -> seconds of its first, second part
calls = collections.Counter()
_in_parts = fused.in_parts


def timed_in_parts(fn, n, threads=1):
    """fused.in_parts, timed as a whole and part by part."""
    name = fn.__name__ if fn.__name__ != "<lambda>" else f"lambda@{fn.__code__.co_firstlineno}"
    own = {}

    def part(s, e):
        t0 = time.perf_counter()
        out = fn(s, e)
        own[s] = time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    result = _in_parts(part, n, threads)
    inside[name] += time.perf_counter() - t0
    calls[name] += 1
    for k, s in enumerate(sorted(own)[:2]):
        part_s[name][k] += own[s]
    return result


def run(threads, steps, rng, x, y, timed=False):
    """-> (wall s, CPU s) per step of `steps` steps on `threads` threads."""
    model = Model(M.build_spec("cnn", M.DEFAULTS["cnn"]), rng=rng)
    model.threads = threads
    opt = Optimizer("adamw", model.theta.size, model.n_decay, weight_decay=1e-4)
    with blas_threads(1):
        for _ in range(3):
            T.train_step(model, opt, x, y, 1e-3, rng)
        inside.clear(), part_s.clear(), calls.clear()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            T.train_step(model, opt, x, y, 1e-3, rng)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return wall / steps, cpu / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    heap.keep_freed_memory()  # as digits train does
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    for threads in (1, 2):
        wall, cpu = run(threads, a.steps, rng, x, y)
        print(f"{threads} thread(s): {1e3 * wall:.2f} ms a step, CPU {1e3 * cpu:.2f} ms "
              f"({cpu / wall:.2f} cores busy)")
    for mod in (fused, conv_winograd, fused_first):  # their own references to in_parts
        mod.in_parts = timed_in_parts
    wall, _ = run(2, a.steps, rng, x, y)
    par = sum(inside.values()) / a.steps
    print(f"2 threads, timed by part: {1e3 * wall:.2f} ms a step, {1e3 * par:.2f} inside the "
          f"kernels' parts, {1e3 * (wall - par):.2f} outside them (one thread)")
    for name, s in inside.most_common():
        first, second = (1e3 * v / a.steps for v in part_s[name])
        print(f"  {name:24s} {1e3 * s / a.steps:7.3f} ms a step in {calls[name] // a.steps} "
              f"call(s); its parts {first:.3f} and {second:.3f} ms")


if __name__ == "__main__":
    main()
