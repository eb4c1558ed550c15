"""The Adam step over the bench MLP's 235,146 parameters (784-256-128-10), one thread: the
twelve-pass kernel as it was before 2026-12-02 (textbook m and v: g - m, scale, add; g^2 - v,
scale, add; sqrt, + eps, divide, scale, subtract) against optim._adam_core (scaled m and v, ten
passes) in blocks of several sizes (optim.ADAM_BLOCK). Before each step a 16 MB array is
written, as a training step's forward and backward would push the optimizer's arrays out of the
core's cache. Medians of --steps steps per variant, variants interleaved --rounds times.

    python scripts/experiments/adam_step.py [--rounds 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.nn import optim  # noqa: E402

N_PARAMS = 235146  # the bench MLP's (scripts/bench.py MLP)


def twelve_passes(opt, theta, g, lr):
    """Adam as optim ran it before: the textbook m, v, twelve passes over whole arrays."""
    m, v, tmp = opt.state["m"], opt.state["v"], opt.tmp
    b1, b2, t = opt.beta1, opt.beta2, opt.t
    np.subtract(g, m, out=tmp)
    tmp *= 1.0 - b1
    m += tmp
    np.square(g, out=g)
    g -= v
    g *= 1.0 - b2
    v += g
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    np.sqrt(v, out=tmp)
    tmp += opt.eps * math.sqrt(bc2)
    np.divide(m, tmp, out=tmp)
    tmp *= lr * math.sqrt(bc2) / bc1
    theta -= tmp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal(N_PARAMS, dtype=np.float32)
    g0 = rng.standard_normal(N_PARAMS, dtype=np.float32) * 0.01
    junk = np.ones(4_000_000, np.float32)
    variants = {"twelve passes, whole arrays": (twelve_passes, None)}
    for block in (N_PARAMS, 1 << 17, 1 << 16, 1 << 15):
        variants[f"ten passes, blocks of {block}"] = (optim._adam_core, block)
    times = {k: [] for k in variants}
    default = optim.ADAM_BLOCK
    try:
        with threadpool_limits(1):
            for _ in range(a.rounds):
                for name, (step, block) in variants.items():
                    optim.ADAM_BLOCK = block or default
                    opt = optim.Optimizer("adam", N_PARAMS)
                    theta, g, ts = theta0.copy(), np.empty_like(g0), []
                    for _ in range(a.steps):
                        np.copyto(g, g0)
                        np.add(junk, 1.0, out=junk)
                        opt.t += 1
                        t0 = time.perf_counter()
                        step(opt, theta, g, 1e-3)
                        ts.append(time.perf_counter() - t0)
                    times[name].append(np.median(ts))
    finally:
        optim.ADAM_BLOCK = default
    print(f"Adam step over {N_PARAMS} float32 parameters, one thread, ms (medians of "
          f"{a.steps} steps, {a.rounds} interleaved rounds; ADAM_BLOCK = {default})")
    for name, t in times.items():
        print(f"  {name:34s} {np.median(t) * 1e3:6.3f}")


if __name__ == "__main__":
    main()
