"""conv -> BatchNorm -> ReLU: the fused step (pipeline/nn/fused_first.py) against the unfused
steps the plan would run instead (layers.conv2d, fused.bn_relu), per im2col depth K = k*k*cin:
the measurement behind fused_first.K_MAX.

One training step's forward and backward of the block at batch --batch on 28x28 inputs (valid
conv, --cout filters), medians of --repeats of this thread's CPU time (time.thread_time), the
two variants interleaved in one process, BLAS on one thread; --threads runs both on that many
threads (the fused step's parts; the unfused conv has no threads) and then reports wall time.
The load average is printed before and after.

--model: whole training steps of the default cnn (the competition's first --batch rows,
normalized), three trainers taking turns step by step: "before" (the plan without this step and
fused.relu_inplace replaced by np.maximum(y, 0.0), i.e. main before issue 14's c1 fusion),
"after" (the plan as it is) and the torch twin (set_num_threads(--threads)); medians of each
one's per-step time, and the c1 steps' forward and backward.

    python scripts/fused_first_bench.py [--shapes 1x3 1x5 2x3 3x3 4x3 8x3] [--dx]
        [--batch 128] [--cout 32] [--repeats 15] [--threads 1]
    python scripts/fused_first_bench.py --model [--threads 1] [--repeats 15]
    python scripts/fused_first_bench.py --eval [--rows 2048] [--repeats 15]
    python scripts/fused_first_bench.py --faults [--repeats 15]
    python scripts/fused_first_bench.py --gram [--batch 128] [--repeats 15]

--eval: inference (Model.forward, one thread) of --rows rows of test.csv, "before" and "after"
as for --model, interleaved; the inference plan's first step is then conv_relu.

--faults: each plan step of the default cnn's training step (one thread): this thread's minor
page faults and CPU ms, medians. A fault is a fresh page of a large temporary that glibc's
malloc handed back to the system after the last step (it mmaps blocks over its threshold and
trims the heap's top); compare with the same command under
GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.nn import fused as Fu  # noqa: E402
from pipeline.nn import fused_first as Ff  # noqa: E402
from pipeline.nn import layers as L  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402


def unfused_step(x, w, bn, R, need_dx, threads):
    z, c1 = L.conv2d_forward(x, w)
    a, c2 = Fu.bn_relu_forward(z, *bn)
    yield  # the forward is done
    g = {}
    L.conv2d_backward(Fu.bn_relu_backward(R, c2, g), c1, g, need_dx)
    yield


def fused_step(x, w, bn, R, need_dx, threads):
    a, cache = Ff.conv_bn_relu_forward(x, w, *bn, threads=threads)
    yield  # the forward is done
    Ff.conv_bn_relu_backward(R, cache, {}, need_dx)
    yield


def time_block(step, args, clock):
    """-> (forward s, backward s) of one run of `step`, a generator that yields once after its
    forward pass and once after its backward pass."""
    t0 = clock()
    gen = step(*args)
    next(gen)
    t1 = clock()
    gen.send(None)
    return t1 - t0, clock() - t1


def time_blocks(args):
    """The fused step against the unfused steps, per --shapes (the module's first table)."""
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"load {os.getloadavg()[0]:.2f}; batch {args.batch}, cout {args.cout}, "
          f"{args.threads} thread(s), {'wall' if args.threads > 1 else 'cpu'} ms, medians of "
          f"{args.repeats}, need_dx={args.dx}")
    print(f"{'cin x k':>8} {'K':>4} {'unfused fwd':>12} {'bwd':>7} {'fused fwd':>10} {'bwd':>7} "
          f"{'fused/unfused':>14}")
    with blas_threads(1):
        for shape in args.shapes:
            cin, k = (int(v) for v in shape.split("x"))
            F, side = args.cout, 28 - k + 1
            x = rng.normal(size=(args.batch, 28, 28, cin)).astype(np.float32)
            w = (rng.uniform(-1, 1, size=(k, k, cin, F)) / k / np.sqrt(cin)).astype(np.float32)
            bn = (np.ones(F, np.float32), np.zeros(F, np.float32), np.zeros(F, np.float32),
                  np.ones(F, np.float32))
            R = rng.normal(size=(args.batch, side, side, F)).astype(np.float32)
            runs = {unfused_step: [], fused_step: []}
            for r in range(args.repeats + 1):  # the first round is a warm-up
                for step, times in runs.items():
                    t = time_block(step, (x, w, bn, R, args.dx, args.threads), clock)
                    if r:
                        times.append(t)
            (uf, ub), (ff, fb) = (np.median(np.array(v), axis=0) * 1e3 for v in runs.values())
            print(f"{shape:>8} {k * k * cin:>4} {uf:12.2f} {ub:7.2f} {ff:10.2f} {fb:7.2f} "
                  f"{(ff + fb) / (uf + ub):14.2f}")
    print(f"load {os.getloadavg()[0]:.2f}")


def interleaved_cpu_ms(ways, repeats):
    """{name: median ms of this thread's CPU time} of the no-argument functions `ways`, run in
    turn `repeats` times after one warm-up round."""
    times = {k: [] for k in ways}
    for r in range(repeats + 1):
        for k, f in ways.items():
            t0 = time.thread_time()
            f()
            if r:
                times[k].append(time.thread_time() - t0)
    return {k: np.median(t) * 1e3 for k, t in times.items()}


def time_relu(args):
    """np.maximum(a, 0) in place on a (batch, 26*26*cout) map: with a scalar, with a row of
    zeros as long as an image's map, with a whole array of zeros, and fused.relu_inplace
    (medians of this thread's CPU time, interleaved)."""
    a = np.random.default_rng(0).normal(size=(args.batch, 26 * 26 * args.cout))
    a = a.astype(np.float32)
    zeros = {"scalar 0.0": 0.0, "image row of zeros": np.zeros(a.shape[1], np.float32),
             "array of zeros": np.zeros_like(a)}
    ways = {k: (lambda z=z: np.maximum(a, z, out=a)) for k, z in zeros.items()}
    ways["relu_inplace"] = lambda: Fu.relu_inplace(a)  # rows of fused.ROW
    ms = interleaved_cpu_ms(ways, args.repeats)
    print(f"load {os.getloadavg()[0]:.2f}; in-place ReLU of a {a.nbytes / 1e6:.1f} MB float32 "
          f"map, cpu ms, medians of {args.repeats}")
    for k, t in ms.items():
        print(f"{k:>18} {t:8.3f}")


def time_gram(args):
    """The moments of the first layer's column chunks ([X', 1]^T, (K+1, P) float32, K = 9, as
    fused_first._columns makes them for a batch of --batch images): c @ c.T, which numpy runs
    as a SYRK (one operand, transposed), against c[:K] @ c.T, a GEMM (K rows: the last row of
    the moments is their column sums), medians of this thread's CPU time over the batch's
    chunks, interleaved."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 28, 28, 1)).astype(np.float32)
    cols = Ff._columns(x, (3, 3, 1, args.cout), 0, None, 1, False)[0]
    chunks = [c.reshape(len(c), -1) for c in cols.values()]
    K = len(chunks[0]) - 1
    ms = interleaved_cpu_ms({"c @ c.T (SYRK)": lambda: [c @ c.T for c in chunks],
                             "c[:K] @ c.T (GEMM)": lambda: [c[:K] @ c.T for c in chunks]},
                            args.repeats)
    print(f"load {os.getloadavg()[0]:.2f}; moments of {len(chunks)} column chunks "
          f"{chunks[0].shape} float32, cpu ms per batch of {args.batch}, medians of "
          f"{args.repeats}")
    for k, t in ms.items():
        print(f"{k:>20} {t:8.3f}")


def before(fn, *a):
    """fn(*a) as main ran it before issue 14's c1 fusion: no fused_first steps in the plans
    built meanwhile, fused.relu_inplace as np.maximum(y, 0.0)."""
    saved = Ff.K_MAX, Fu.relu_inplace
    Ff.K_MAX, Fu.relu_inplace = 0, lambda y: np.maximum(y, 0.0, out=y)
    try:
        return fn(*a)
    finally:
        Ff.K_MAX, Fu.relu_inplace = saved


def train_step(m, x, y, rng, clock, probe=None):
    """One training step of Model m through its plan (no optimizer step) -> (per plan step
    [fwd s, bwd s, fwd probe, bwd probe], whole s); probe() is a counter read around each."""
    from pipeline.nn.losses import softmax_cross_entropy_backward as loss_bwd
    from pipeline.nn.losses import softmax_cross_entropy_forward as loss_fwd

    probe = probe or (lambda: 0)
    rows, caches, h, t0 = [], [], x, clock()
    for st in m.plan:
        f, t = probe(), clock()
        h, cache = st.forward(h, **st.P, train=True, rng=rng, **st.settings)
        rows.append([clock() - t, 0.0, probe() - f, 0])
        caches.append(cache)
    d = loss_bwd(loss_fwd(h, y)[1])
    for k in range(len(m.plan) - 1, -1, -1):
        st, f, t = m.plan[k], probe(), clock()
        d = st.backward(d, caches[k], st.G, st.first > m.first_trained)
        rows[k][1], rows[k][3] = clock() - t, probe() - f
    return rows, clock() - t0


def count_faults(args):
    """Per plan step of a default-cnn training step: minor page faults and CPU ms (medians)."""
    import resource

    from pipeline.nn.model import Model
    from pipeline.nn.models import DEFAULTS, build_spec

    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}),
              rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    with blas_threads(1):
        rounds = [train_step(m, x, y, rng, time.thread_time,
                             lambda: resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)[0]
                  for _ in range(args.repeats + 2)][2:]  # two warm-up rounds
    med = np.median(np.array(rounds), axis=0)  # (steps, 4)
    print(f"load {os.getloadavg()[0]:.2f}; default cnn training step, batch {args.batch}, one "
          f"thread, medians of {args.repeats}; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    print(f"{'step':<14} {'faults fwd':>10} {'bwd':>6} {'cpu ms fwd':>10} {'bwd':>7}")
    for name, (tf, tb, ff, fb) in zip([st.name for st in m.plan] + ["sum"],
                                      [*med, med.sum(axis=0)]):
        print(f"{name:<14} {ff:10.0f} {fb:6.0f} {tf * 1e3:10.2f} {tb * 1e3:7.2f}")


def time_eval(args):
    """Interleaved inference of the default cnn: before / after."""
    from pipeline.data import read_competition
    from pipeline.nn.model import Model
    from pipeline.nn.models import DEFAULTS, build_spec
    from pipeline.preprocess import fit_normalizer, normalize

    digits = read_competition(Path("/work/shared/data/digit-recognizer.zip"))
    x = normalize(digits.test_x[: args.rows], fit_normalizer(digits.train_x))
    m = Model(build_spec("cnn", {**DEFAULTS["cnn"], "model": "cnn"}),
              rng=np.random.default_rng(0))
    times = {"before": [], "after": []}
    with blas_threads(1):
        for r in range(args.repeats + 1):
            for name, t in times.items():
                t0 = time.thread_time()
                z = before(m.forward, x) if name == "before" else m.forward(x)
                if r:
                    t.append(time.thread_time() - t0)
                if name == "before":
                    ref = z
                else:
                    assert np.allclose(z, ref, rtol=1e-4, atol=1e-4)
    print(f"load {os.getloadavg()[0]:.2f}; default cnn inference, {args.rows} rows, 1 thread, "
          f"cpu s, medians of {args.repeats}")
    for name, t in times.items():
        print(f"{name:>7} {np.median(t):.3f} s")
    print(f"load {os.getloadavg()[0]:.2f}")


def time_model(args):
    """Interleaved training steps of the default cnn: before / after this step, and torch."""
    from benchlib.twin import import_torch, torch_optimizer, torch_twin

    from pipeline.data import read_competition
    from pipeline.nn.model import Model
    from pipeline.nn.models import build_spec
    from pipeline.nn.optim import Optimizer
    from pipeline.params import TrainConfig
    from pipeline.preprocess import fit_normalizer, normalize
    from pipeline.train import hyperparameters

    digits = read_competition(Path("/work/shared/data/digit-recognizer.zip"))
    xb = normalize(digits.train_x[: args.batch], fit_normalizer(digits.train_x))
    yb = digits.train_y[: args.batch].astype(np.int64)
    hp = hyperparameters(TrainConfig(model="cnn", schedule="constant", augment="none"))
    spec = build_spec("cnn", hp)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    models = {}
    for name in ("before", "after"):
        m = models[name] = Model(spec, rng=np.random.default_rng(0))
        if name == "before":  # the threads setter builds the plan
            before(setattr, m, "threads", args.threads)
        else:
            m.threads = args.threads
        m.rng = np.random.default_rng(1)  # dropout's draws
        m.opt = Optimizer(hp["optimizer"], m.theta.size, m.n_decay,
                          weight_decay=hp["weight_decay"])
    def ours(m, c1_steps):  # -> (step s, c1 steps' fwd s, bwd s)
        t0 = clock()
        rows, _ = train_step(m, xb, yb, m.rng, clock)
        m.opt.step(m.theta, m.grad, 1e-4)
        return clock() - t0, *np.sum(np.array(rows)[:c1_steps, :2], axis=0)

    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        net = torch_twin(torch, spec)
        topt = torch_optimizer(torch, hp, net)
        X = torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2)))
        Y = torch.from_numpy(yb)
        net.train()

    def torch_step():
        t0 = clock()
        loss = torch.nn.functional.cross_entropy(net(X), Y)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()
        loss.item()
        return clock() - t0, 0.0, 0.0

    print(f"load {os.getloadavg()[0]:.2f}; default cnn, batch {args.batch}, {args.threads} "
          f"thread(s), {'wall' if args.threads > 1 else 'cpu'} ms, medians of {args.repeats}")
    runs = {"before": [], "after": [], "torch": []}
    with blas_threads(1):
        for r in range(args.repeats + 1):
            for name, times in runs.items():
                if name == "torch":
                    if torch is None:
                        continue
                    t = torch_step()
                elif name == "before":
                    t = before(ours, models[name], 2)
                else:
                    t = ours(models[name], 1)
                if r:
                    times.append(t)
    med = {k: np.median(np.array(v), axis=0) * 1e3 for k, v in runs.items() if v}
    for name, (step, fwd, bwd) in med.items():
        ratio = f"  ours / torch {step / med['torch'][0]:.3f}" if "torch" in med else ""
        c1 = f"  c1 steps fwd {fwd:.2f} bwd {bwd:.2f}" if name != "torch" else ""
        print(f"{name:>7} step {step:7.2f}{c1}{ratio if name != 'torch' else ''}")
    print(f"load {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1x3", "1x5", "2x3", "3x3", "4x3", "8x3"],
                    help="cin x k of each convolution (K = k*k*cin)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cout", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dx", action="store_true", help="with the input gradient (not a first layer)")
    ap.add_argument("--model", action="store_true",
                    help="whole training steps of the default cnn: before, after, torch")
    ap.add_argument("--eval", action="store_true",
                    help="inference of the default cnn on --rows test rows: before, after")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--faults", action="store_true",
                    help="page faults and CPU ms of each step of the default cnn's training step")
    ap.add_argument("--relu", action="store_true",
                    help="only time an in-place ReLU of the first layer's output, three ways")
    ap.add_argument("--gram", action="store_true",
                    help="only time the first layer's column moments, SYRK against GEMM")
    args = ap.parse_args()
    modes = {"relu": time_relu, "gram": time_gram, "model": time_model, "eval": time_eval,
             "faults": count_faults}
    next((fn for name, fn in modes.items() if getattr(args, name)), time_blocks)(args)

if __name__ == "__main__":
    main()
