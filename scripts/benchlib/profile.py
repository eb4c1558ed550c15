"""Where the time goes: per-step forward/backward times of our model's training steps (the
steps as the model runs them, fused pairs as one), timed inside a real train() epoch, then a
cProfile of a short train() epoch or of predicting the test rows."""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import time
from collections import defaultdict

import numpy as np

from pipeline import train as train_module
from pipeline.nn import model as model_module
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.nn.optim import Optimizer
from pipeline.params import TrainConfig
from pipeline.predict import predict_proba
from pipeline.train import hyperparameters, train

from .measure import WARMUP_ROWS, macs_per_sample, our_threads
from .twin import import_torch, torch_optimizer, torch_twin


class StepTimer:
    """While `installed()`, every plan step's forward and backward, the loss and the optimizer
    step record their `clock` seconds (and each forward its output shape) as train() calls
    them. Timing inside train() measures the code path users run, with its memory state: a
    hand-rolled loop of the same steps took 7,700 page faults a step that train() does not
    (2026-12-02), and so read 10% slow."""

    def __init__(self, clock):
        self.clock, self.times, self.shapes = clock, defaultdict(list), {}

    def _wrap(self, key, f, shaped=False):
        def timed(*args, **kw):
            t0 = self.clock()
            out = f(*args, **kw)
            self.times[key].append(self.clock() - t0)
            if shaped:
                self.shapes.setdefault(key[0], out[0].shape)
            return out
        return timed

    @contextlib.contextmanager
    def installed(self):
        make_plan, opt_step = model_module.make_plan, Optimizer.step
        losses = (train_module.softmax_cross_entropy_forward,
                  train_module.softmax_cross_entropy_backward)

        def timed_plan(*args, **kw):
            return [st._replace(forward=self._wrap((st.name, "fwd"), st.forward, True),
                                backward=self._wrap((st.name, "bwd"), st.backward))
                    for st in make_plan(*args, **kw)]

        model_module.make_plan = timed_plan
        Optimizer.step = self._wrap(("optimizer", ""), opt_step)
        train_module.softmax_cross_entropy_forward = self._wrap(("loss", "fwd"), losses[0])
        train_module.softmax_cross_entropy_backward = self._wrap(("loss", "bwd"), losses[1])
        try:
            yield self
        finally:
            model_module.make_plan, Optimizer.step = make_plan, opt_step
            (train_module.softmax_cross_entropy_forward,
             train_module.softmax_cross_entropy_backward) = losses

    def median(self, key):
        """Median seconds of `key` over the steps after the first (0.0 if never called)."""
        t = self.times.get(key, [])
        return float(np.median(t[1:] if len(t) > 1 else t)) if t else 0.0


def step_times(settings, x, y, seed, threads, clock=time.perf_counter):
    """Train one epoch of `settings` on (x, y) (after a warm-up epoch) on `threads` threads,
    timing its steps -> (model, fwd, bwd, shapes, rest, step): medians over the steps of each
    plan step's forward and backward seconds, the output shapes (shapes[0] the batch's), the
    rest of a step (loss, optimizer, and what no step timed: the batch gather, the loop) and a
    whole step (the epoch's seconds / its steps). `clock`: time.perf_counter (wall) or
    time.thread_time (the calling thread's CPU: steadier under load, the whole story on one
    thread)."""
    cfg = TrainConfig(**settings, epochs=1, seed=seed)
    with our_threads(threads):
        train(cfg, x[:WARMUP_ROWS], y[:WARMUP_ROWS], progress=False)
        timer = StepTimer(clock)
        with timer.installed():
            result = train(cfg, x, y, progress=False)
    model, hp = result.model, hyperparameters(cfg)
    B = min(hp["batch_size"] or len(x), len(x))
    steps = -(-len(x) // B)
    fwd = np.array([timer.median((st.name, "fwd")) for st in model.plan])
    bwd = np.array([timer.median((st.name, "bwd")) for st in model.plan])
    shapes = [(B, *x.shape[1:])] + [timer.shapes[st.name] for st in model.plan]
    step = result.history[0]["seconds"] / steps
    loss = timer.median(("loss", "fwd")) + timer.median(("loss", "bwd"))
    rest = {"loss forward + backward": loss,
            f"optimizer step ({hp['optimizer']}, {model.theta.size} params)":
                timer.median(("optimizer", ""))}
    rest["the rest (batch gather, the loop)"] = max(
        0.0, step - fwd.sum() - bwd.sum() - sum(rest.values()))
    return model, fwd, bwd, shapes, rest, step


def profile_training(args, settings, x, y):
    """Print the per-step table of a training step, then a cProfile of a short epoch."""
    hp = hyperparameters(TrainConfig(**settings))
    rows = args.rows or (8192 if args.profile == "mlp" else 2048)
    B = hp["batch_size"]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    model, fwd, bwd, shapes, rest, step = step_times(settings, x[:rows], y[:rows], args.seed,
                                                     args.threads, clock)
    layers = model.spec["layers"]
    total = fwd.sum() + bwd.sum() + sum(rest.values())
    print(f"{args.profile} ({hp.get('plan') or list(hp['hidden'])}): a training step at batch "
          f"{B} inside a train() epoch of {rows} rows, {args.threads} thread(s), "
          f"{total * 1e3:.2f} ms {args.clock} time (medians over its steps; the whole step by "
          f"wall time {step * 1e3:.2f} ms)")
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
    runner = model._eval_runner()  # as Model.forward runs a chunk (blank tiles skipped)
    plan = runner.plan
    times = np.zeros((repeats + 1, len(plan)))
    shapes = []
    for r in range(repeats + 1):  # the first pass is a warm-up (and makes the reference)
        shapes, steps = [], runner.outputs(x)
        for k in range(len(plan)):
            t0 = clock()
            h = next(steps)  # the step, and the blank mask's passage through the one before
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
