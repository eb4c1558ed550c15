"""--profile kernels: the conv+pool kernels of pipeline/nn side by side on one thread, in one
process, interleaved (so a change in load hits both): the direct im2col form (nn/fused.py)
against Winograd F(2x2, kxk) (nn/conv_winograd.py) on the default cnn's conv+pool shapes and
over input channels (the WINOGRAD_MIN_CIN choice), the float32 rounding of each against float64,
and the rate of the matrix products they run against the sgemm rate."""

from __future__ import annotations

import time

import numpy as np

from pipeline.nn import conv_winograd as Wi
from pipeline.nn import fused as Fu
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.params import TrainConfig
from pipeline.train import hyperparameters

KINDS = {"direct": (Fu.conv_pool_forward, Fu.conv_pool_backward),
         "winograd": (Wi.wino_pool_forward, Wi.wino_pool_backward)}
CLOCK = time.thread_time  # this thread's CPU time: steadier under load


def fwd_bwd(kinds, x, w, need_dx, rounds=15):
    """-> {kind: (median forward s, median backward s)}, the kinds taking turns each round."""
    dout = np.ones_like(Fu.conv_pool_forward(x, w, train=False)[0])
    times = {k: [] for k in kinds}
    for _ in range(rounds + 1):  # the first round is a warm-up
        for k in kinds:
            fwd, bwd = KINDS[k]
            t0 = CLOCK()
            _, cache = fwd(x, w)
            t1 = CLOCK()
            bwd(dout, cache, {}, need_dx)
            times[k].append((t1 - t0, CLOCK() - t1))
    return {k: np.median(v[1:], axis=0) for k, v in times.items()}


def rms_error(kind, x, w, dout, points=None):
    """-> relative rms error of the float32 output, dx, dw against the same kernel in float64."""
    fwd, bwd = KINDS[kind]
    saved = Wi.POINTS
    if points is not None:
        Wi.POINTS = points
    try:
        out = []
        for dt in (np.float64, np.float32):
            o, cache = fwd(x.astype(dt), w.astype(dt))
            g = {}
            dx = bwd(dout.astype(dt), cache, g)
            out.append((o, dx, g["w"]))
    finally:
        Wi.POINTS = saved
    return [float(np.sqrt(((b - a) ** 2).mean() / (a ** 2).mean())) for a, b in zip(*out)]


def gemm_rate(a, b, rounds=15):
    """-> GFLOP/s of np.matmul(a, b) (batched when 3-D), best of `rounds`."""
    out = np.matmul(a, b)
    best = min(_timed(np.matmul, a, b, out) for _ in range(rounds))
    flop = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * int(np.prod(out.shape[:-2]))
    return flop / best / 1e9


def _timed(f, *args):
    t0 = CLOCK()
    f(*args[:-1], out=args[-1])
    return CLOCK() - t0


def profile_kernels(args, settings):
    hp = hyperparameters(TrainConfig(**settings))
    B = hp["batch_size"]
    model = Model(build_spec(settings["model"], hp), rng=np.random.default_rng(args.seed))
    rng = np.random.default_rng(args.seed)
    f32 = np.float32
    print(f"conv+pool kernels of the default cnn ({hp['plan']}), batch {B}, 1 thread, thread "
          f"CPU ms, medians of 15 interleaved rounds")
    print(f"{'step':<8} {'input':<14} {'kernel':<10} {'fwd ms':>8} {'bwd ms':>8} {'in use':>7}")
    h = np.zeros((1, 28, 28, 1), dtype=np.float32)
    for st in model.plan:  # each step's input shape from a one-image pass
        ly, shape = model.spec["layers"][st.first], h.shape[1:]
        h = st.forward(h, **st.P, train=False, **st.settings)[0]
        if st.forward not in (Fu.conv_pool_forward, Wi.wino_pool_forward):
            continue
        x = rng.normal(size=(B, *shape)).astype(np.float32)
        w = (rng.normal(size=(ly["k"], ly["k"], shape[-1], ly["cout"])) * 0.05).astype(f32)
        kinds = ["direct"] + (["winograd"] if ly["k"] in Wi.KERNELS else [])
        res = fwd_bwd(kinds, x, w, st.first > model.first_trained)
        for k, (f, b) in res.items():
            used = "yes" if KINDS[k][0] is st.forward else ""
            print(f"{st.name:<8} {str(shape):<14} {k:<10} {f * 1e3:8.2f} {b * 1e3:8.2f} "
                  f"{used:>7}")
    print(f"\nover input channels: {B}x12x12xC -> kxk conv, 32 filters -> pool, with dx; "
          f"fwd+bwd ms (Winograd from WINOGRAD_MIN_CIN)")
    for k in Wi.KERNELS:
        for cin in (1, 4, 8, 16, 32):
            x = rng.normal(size=(B, 12 + k - 5, 12 + k - 5, cin)).astype(np.float32)
            w = (rng.normal(size=(k, k, cin, 32)) * 0.05).astype(np.float32)
            res = fwd_bwd(list(KINDS), x, w, True, rounds=7)
            print(f"  {k}x{k}, cin {cin:>2}: "
                  + ", ".join(f"{kind} {sum(v) * 1e3:.2f}" for kind, v in res.items()))
    x = rng.normal(size=(32, 12, 12, 32))
    w = rng.normal(size=(5, 5, 32, 64)) * 0.05
    dout = rng.normal(size=(32, 4, 4, 64))
    print("\nfloat32 against float64, relative rms error (output, dx, dw), 32x12x12x32 -> 64:")
    for label, kind, points in (("direct", "direct", None),
                                (f"winograd, points {Wi.POINTS}", "winograd", None),
                                ("winograd, points (0, 1, -1, 2, -2)", "winograd",
                                 (0.0, 1.0, -1.0, 2.0, -2.0))):
        errs = rms_error(kind, x, w, dout, points)
        print(f"  {label:<44} " + "  ".join(f"{e:.2e}" for e in errs))
    T, C, F, K = B * 16, 32, 64, 800  # the c3 shapes: B*4*4 pooled pixels
    print(f"\nmatrix products, best GFLOP/s of 15 (sgemm 1024x1024: "
          f"{gemm_rate(np.ones((1024, 1024), f32), np.ones((1024, 1024), f32)):.1f}):")
    shapes = {"direct c3 forward (4T x 800) @ (800 x 64)": ((4 * T, K), (K, F)),
              "direct c3 dW (800 x 4T) @ (4T x 64)": ((K, 4 * T), (4 * T, F)),
              "winograd c3, 36 x (224 x 32) @ (32 x 64)": ((36, 224, C), (36, C, F)),
              "winograd input transform (36 x 36) @ (36 x 224*32)": ((36, 36), (36, 224 * C)),
              "direct c1 forward (4*18*144 x 25) @ (25 x 32)": ((4 * 18 * 144, 25), (25, 32))}
    for label, (sa, sb) in shapes.items():
        print(f"  {label:<52} {gemm_rate(np.ones(sa, f32), np.ones(sb, f32)):6.1f}")
