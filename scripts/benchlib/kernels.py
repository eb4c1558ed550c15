"""--profile kernels: the convolution kernels of pipeline/nn side by side on one thread, in one
process, interleaved (so a change in load hits both): the direct im2col forms (nn/fused.py for
conv+pool, nn/layers.py for a conv alone) against Winograd F(2x2, kxk) and, for 3x3, F(4x4, 3x3)
(nn/conv_winograd.py) on the default cnn's conv shapes and over input channels (the
WINOGRAD_MIN_CIN choice), the float32 rounding of each against float64, and the rate of the
matrix products they run against the sgemm rate."""

from __future__ import annotations

import time

import numpy as np

from pipeline.nn import conv_winograd as Wi
from pipeline.nn import fused as Fu
from pipeline.nn import layers as L
from pipeline.nn import winograd as Wn
from pipeline.nn.model import Model
from pipeline.nn.models import build_spec
from pipeline.params import TrainConfig
from pipeline.train import hyperparameters

# kind -> (conv+pool pair, conv-alone pair, the 3x3 output tile side it runs with)
KINDS = {"direct": ((Fu.conv_pool_forward, Fu.conv_pool_backward),
                    (L.conv2d_forward, L.conv2d_backward), None),
         "winograd 2x2": ((Wi.wino_pool_forward, Wi.wino_pool_backward),
                          (Wi.wino_conv_forward, Wi.wino_conv_backward), 2),
         "winograd 4x4": ((Wi.wino_pool_forward, Wi.wino_pool_backward),
                          (Wi.wino_conv_forward, Wi.wino_conv_backward), 4)}
CLOCK = time.thread_time  # this thread's CPU time: steadier under load


def kinds_for(k, out_side):
    """The kinds that differ for a k x k conv with this output side (4x4 tiles: 3x3 only, and
    only where the side is a multiple of 4)."""
    if k not in Wn.KERNELS:
        return ["direct"]
    return ["direct", "winograd 2x2"] + (["winograd 4x4"] if k == 3 and out_side % 4 == 0
                                         else [])


def _pair(kind, pool):
    pairs = KINDS[kind]
    return pairs[0] if pool else pairs[1]


def fwd_bwd(kinds, x, w, need_dx, pool=True, rounds=15):
    """-> {kind: (median forward s, median backward s)}, the kinds taking turns each round."""
    ref = (Fu.conv_pool_forward if pool else L.conv2d_forward)(x, w, train=False)[0]
    dout = np.ones_like(ref)
    times = {k: [] for k in kinds}
    saved = Wn.TILE[3]
    try:
        for _ in range(rounds + 1):  # the first round is a warm-up
            for k in kinds:
                fwd, bwd = _pair(k, pool)
                Wn.TILE[3] = KINDS[k][2] or saved
                t0 = CLOCK()
                _, cache = fwd(x, w)
                t1 = CLOCK()
                bwd(dout, cache, {}, need_dx)
                times[k].append((t1 - t0, CLOCK() - t1))
    finally:
        Wn.TILE[3] = saved
    return {k: np.median(v[1:], axis=0) for k, v in times.items()}


def rms_error(kind, x, w, dout, points=None):
    """-> relative rms error of the float32 output, dx, dw against the same kernel in float64."""
    fwd, bwd = _pair(kind, True)
    saved, saved_tile = Wn.POINTS, Wn.TILE[3]
    Wn.TILE[3] = KINDS[kind][2] or saved_tile
    if points is not None:
        Wn.POINTS = points
    try:
        out = []
        for dt in (np.float64, np.float32):
            o, cache = fwd(x.astype(dt), w.astype(dt))
            g = {}
            dx = bwd(dout.astype(dt), cache, g)
            out.append((o, dx, g["w"]))
    finally:
        Wn.POINTS, Wn.TILE[3] = saved, saved_tile
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
    print(f"convolution kernels of the default cnn ({hp['plan']}), batch {B}, 1 thread, "
          f"thread CPU ms, medians of 15 interleaved rounds")
    print(f"{'step':<8} {'input':<14} {'kernel':<13} {'fwd ms':>8} {'bwd ms':>8} {'in use':>7}")
    h = np.zeros((1, 28, 28, 1), dtype=np.float32)
    for st in model.plan:  # each step's input shape from a one-image pass
        ly, shape = model.spec["layers"][st.first], h.shape[1:]
        h = st.forward(h, **st.P, train=False, **st.settings)[0]
        if ly["type"] != "conv":
            continue
        pool = st.name.count("+") == 1 and st.name.split("+")[1].startswith("p")
        x = rng.normal(size=(B, *shape)).astype(np.float32)
        w = (rng.normal(size=(ly["k"], ly["k"], shape[-1], ly["cout"])) * 0.05).astype(f32)
        out_side = shape[0] + 2 * ly.get("pad", 0) - ly["k"] + 1
        res = fwd_bwd(kinds_for(ly["k"], out_side), x, w, st.first > model.first_trained, pool)
        tile = Wn.tile_side(ly["k"], out_side, out_side)
        for k, (f, b) in res.items():
            used = _pair(k, pool)[0] is st.forward and KINDS[k][2] in (None, tile)
            print(f"{st.name:<8} {str(shape):<14} {k:<13} {f * 1e3:8.2f} {b * 1e3:8.2f} "
                  f"{'yes' if used else '':>7}")
    print(f"\nover input channels: {B}x12x12xC -> kxk conv, 32 filters -> pool, with dx; "
          f"fwd+bwd ms (Winograd from WINOGRAD_MIN_CIN)")
    for k in Wn.KERNELS:
        for cin in (1, 4, 8, 16, 32):
            x = rng.normal(size=(B, 12 + k - 5, 12 + k - 5, cin)).astype(np.float32)
            w = (rng.normal(size=(k, k, cin, 32)) * 0.05).astype(np.float32)
            res = fwd_bwd(kinds_for(k, 8), x, w, True, rounds=7)
            print(f"  {k}x{k}, cin {cin:>2}: "
                  + ", ".join(f"{kind} {sum(v) * 1e3:.2f}" for kind, v in res.items()))
    x = rng.normal(size=(32, 12, 12, 32))
    w = rng.normal(size=(5, 5, 32, 64)) * 0.05
    dout = rng.normal(size=(32, 4, 4, 64))
    print("\nfloat32 against float64, relative rms error (output, dx, dw), 32x12x12x32 -> 64:")
    for label, kind, points in (("direct", "direct", None),
                                (f"winograd 2x2, points {Wn.POINTS}", "winograd 2x2", None),
                                ("winograd 2x2, points (0, 1, -1, 2, -2)", "winograd 2x2",
                                 (0.0, 1.0, -1.0, 2.0, -2.0))):
        errs = rms_error(kind, x, w, dout, points)
        print(f"  {label:<48} " + "  ".join(f"{e:.2e}" for e in errs))
    x3, w3 = x[:, :10, :10], w[:3, :3]
    dout3 = rng.normal(size=(32, 4, 4, 64))
    print("the same, 3x3 kernel (32x10x10x32 -> 64, an 8x8 output):")
    for kind in ("direct", "winograd 2x2", "winograd 4x4"):
        errs = rms_error(kind, x3, w3, dout3)
        print(f"  {kind:<48} " + "  ".join(f"{e:.2e}" for e in errs))
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
