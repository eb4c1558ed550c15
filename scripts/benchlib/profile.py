"""Where the time goes: per-step forward/backward times of one training step of our model (the
steps as the model runs them, fused pairs as one), then a cProfile of a short train() epoch or
of predicting the test rows."""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import numpy as np

from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.nn.optim import Optimizer
from pipeline.nn.threads import blas_threads
from pipeline.params import TrainConfig
from pipeline.predict import predict_proba
from pipeline.train import TRAIN_THREADS, hyperparameters, train

from .measure import WARMUP_ROWS, macs_per_sample, our_threads
from .twin import import_torch, torch_optimizer, torch_twin


def step_times(model, hp, xb, yb, rng, repeats=20, clock=time.perf_counter):
    """Median seconds of each plan step's forward and backward in one training step, the
    output shape of each, and the rest of the step (gather, loss, optimizer). `clock`:
    time.perf_counter (wall) or time.thread_time (this thread's CPU time: steadier under load,
    and the whole story on one thread)."""
    plan, first = model.plan, model.first_trained
    opt = Optimizer(hp["optimizer"], model.theta.size, model.n_decay,
                    weight_decay=hp["weight_decay"])
    fwd = np.zeros((repeats + 1, len(plan)))
    bwd = np.zeros((repeats + 1, len(plan)))
    loss_s, step_s, gather_s = [], [], []
    idx = np.arange(len(xb))
    for r in range(repeats + 1):  # the first pass is a warm-up
        t0 = clock()
        h = xb[idx]
        gather_s.append(clock() - t0)
        shapes, caches = [h.shape], []
        for k, st in enumerate(plan):
            t0 = clock()
            h, cache = st.forward(h, **st.P, train=True, rng=rng, **st.settings)
            fwd[r, k] = clock() - t0
            shapes.append(h.shape)
            caches.append(cache)
        t0 = clock()
        _, lcache = softmax_cross_entropy_forward(h, yb)
        d = softmax_cross_entropy_backward(lcache)
        loss_s.append(clock() - t0)
        for k in range(len(plan) - 1, -1, -1):
            st = plan[k]
            if st.first < first:
                break
            t0 = clock()
            d = st.backward(d, caches[k], st.G, st.first > first)
            bwd[r, k] = clock() - t0
        t0 = clock()
        opt.step(model.theta, model.grad, 1e-4)
        step_s.append(clock() - t0)
    rest = {"batch gather x[idx]": np.median(gather_s[1:]),
            "loss forward + backward": np.median(loss_s[1:]),
            f"optimizer step ({hp['optimizer']}, {model.theta.size} params)": np.median(step_s[1:])}
    return np.median(fwd[1:], axis=0), np.median(bwd[1:], axis=0), shapes, rest


def profile_training(args, settings, x, y):
    """Print the per-step table of one training step, then a cProfile of a short epoch."""
    hp = hyperparameters(TrainConfig(**settings))
    rows = args.rows or (8192 if args.profile == "mlp" else 2048)
    B = hp["batch_size"]
    model = Model(build_spec(settings["model"], hp), rng=np.random.default_rng(args.seed))
    model.threads = args.threads
    layers = model.spec["layers"]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    with blas_threads(TRAIN_THREADS):  # as train() runs: Python threads, one-thread BLAS
        fwd, bwd, shapes, rest = step_times(model, hp, x[:B], y[:B], np.random.default_rng(0),
                                            clock=clock)
    total = fwd.sum() + bwd.sum() + sum(rest.values())
    print(f"{args.profile} ({hp.get('plan') or list(hp['hidden'])}): one training step at batch "
          f"{B}, {args.threads} thread(s), {total * 1e3:.2f} ms {args.clock} time (medians of "
          f"20)")
    print(f"{'step':<14} {'output':<16} {'fwd ms':>8} {'bwd ms':>8} {'share':>6} "
          f"{'fwd GF/s':>9} {'bwd GF/s':>9}")
    for k, st in enumerate(model.plan):
        ly, macs = layers[st.first], 0
        if ly["type"] in ("conv", "dense"):
            inp = list(shapes[k][1:]) if ly["type"] == "conv" else [1, 1, 1]
            macs = macs_per_sample({"input_shape": inp, "layers": [ly]})
        # backward: 2 FLOP per multiply-add for dW, 2 more for dX (none for the first layer)
        bwd_flop = (4 if st.first > model.first_trained else 2) * macs * B
        gf = ("", "") if not macs else (f"{2 * macs * B / fwd[k] / 1e9:9.1f}",
                                        f"{bwd_flop / bwd[k] / 1e9:9.1f}" if bwd[k] else "")
        print(f"{st.name:<14} {str(shapes[k + 1][1:]):<16} {fwd[k] * 1e3:8.3f} "
              f"{bwd[k] * 1e3:8.3f} {(fwd[k] + bwd[k]) / total:6.1%} {gf[0]:>9} {gf[1]:>9}")
    for name, t in rest.items():
        print(f"{name:<40} {t * 1e3:8.3f} {'':>8} {t / total:6.1%}")
    torch = None if args.skip_torch else import_torch()
    if torch is not None:
        t = torch_step_time(torch, settings, hp, x[:B], y[:B], args.threads, clock)
        print(f"torch twin, the same step on {args.threads} thread(s): {t * 1e3:.2f} ms "
              f"{args.clock} time; ours / torch = {total / t:.3f}")
    cfg = TrainConfig(**settings, epochs=1, seed=args.seed)
    with our_threads(args.threads):
        train(cfg, x[:WARMUP_ROWS], y[:WARMUP_ROWS], progress=False)
        prof = cProfile.Profile()
        prof.enable()
        result = train(cfg, x[:rows], y[:rows], progress=False)
        prof.disable()
    print(f"\ncProfile of train(): {rows} rows, 1 epoch, {args.threads} thread(s), "
          f"{result.history[0]['seconds']:.3f} s")
    print_stats(prof, 20)


def torch_step_time(torch, settings, hp, xb, yb, threads, clock, repeats=20):
    """Median `clock` seconds of one training step of the torch twin (after a warm-up step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_twin(torch, build_spec(settings["model"], hp))
    opt = torch_optimizer(torch, hp, net)
    X = torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2)))
    Y = torch.from_numpy(yb.astype(np.int64))
    net.train()
    times = []
    for _ in range(repeats + 1):
        t0 = clock()
        z = net(X)
        loss = torch.nn.functional.cross_entropy(z, Y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        times.append(clock() - t0)
    return float(np.median(times[1:]))


def eval_step_times(model, x, repeats=20, clock=time.thread_time):
    """Median `clock` seconds of each step of the inference plan (BatchNorm folded, fused
    pairs as one) on one chunk `x`, and each step's output shape."""
    plan = model._eval_plan()
    times = np.zeros((repeats + 1, len(plan)))
    shapes = []
    for r in range(repeats + 1):  # the first pass is a warm-up
        h, shapes = x, []
        for k, st in enumerate(plan):
            t0 = clock()
            h = st.forward(h, **st.P, train=False, **st.settings)[0]
            times[r, k] = clock() - t0
            shapes.append(h.shape)
    return plan, np.median(times[1:], axis=0), shapes


def profile_predict(args, settings, x_test):
    """Per-step times of one inference chunk, then a cProfile of predicting the test rows with
    a fresh model of `settings`, on --threads threads (cProfile sees only the calling thread:
    use --threads 1 for a full breakdown)."""
    from pipeline import predict as predict_module
    from pipeline.nn.model import EVAL_CHUNK
    model = Model(build_spec(settings["model"], hyperparameters(TrainConfig(**settings))),
                  rng=np.random.default_rng(args.seed))
    plan, times, shapes = eval_step_times(model, x_test[:EVAL_CHUNK])
    total = times.sum()
    chunks = -(-len(x_test) // EVAL_CHUNK)
    print(f"inference, one chunk of {EVAL_CHUNK} rows, 1 thread, CPU ms (medians of 20): "
          f"{total * 1e3:.2f} ms; x {chunks} chunks = {total * chunks:.2f} s of CPU")
    print(f"{'step':<14} {'output':<16} {'ms':>8} {'share':>6}")
    for st, t, shape in zip(plan, times, shapes):
        print(f"{st.name:<14} {str(shape[1:]):<16} {t * 1e3:8.3f} {t / total:6.1%}")
    print()
    saved, predict_module.PREDICT_THREADS = predict_module.PREDICT_THREADS, args.threads
    try:
        predict_proba([model], x_test[:1000])
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        predict_proba([model], x_test)
        prof.disable()
        seconds = time.perf_counter() - t0
    finally:
        predict_module.PREDICT_THREADS = saved
    print(f"cProfile of predict_proba, default {settings['model']}, {len(x_test)} rows, "
          f"{args.threads} thread(s): {seconds:.3f} s")
    print_stats(prof, 15)


def print_stats(prof, n):
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    lines = out.getvalue().splitlines()
    print("\n".join(lines[next(i for i, t in enumerate(lines) if "ncalls" in t):]))
