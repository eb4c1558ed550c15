"""Speed benchmark: our NumPy networks against the same networks in PyTorch on the CPU, side by
side in one process and one run, plus the machine's float32 matmul rate and the pipeline's own
timings (CSV load, batched inference, a no-op `make submit`, peak memory).

    python scripts/bench.py                      # the full run behind the README table (minutes)
    python scripts/bench.py --quick              # a smoke run (seconds to a minute)
    python scripts/bench.py --skip-torch --threads 1 --epochs 2 --cnn-rows 4096
    python scripts/bench.py --profile cnn        # cProfile of our training loop, top functions
    make bench                                   # installs the `bench` extra (torch), runs this

It prints a table and, as its last line, one JSON object with every figure. What each one is:

- sgemm_gflops: best of a few (n x n) @ (n x n) float32 products (n=4096), 2n^3 FLOP each: the
  ceiling for dense layers on this machine with these threads.
- load_csv_s: `pipeline.data.read_competition(zip)`: check the zip, parse the three CSVs.
- mlp_*: 784-256-128-10 relu MLP, batch 128, Adam lr 1e-3 (no weight decay, dropout,
  augmentation or schedule), trained through `pipeline.train.train()` on the train.csv rows.
  samples/s = rows / the fastest epoch's seconds (train() times the epoch loop only: no data
  loading, no model build), after a one-epoch warm-up on 1024 rows. The torch twin is built
  layer by layer from the same spec and trained with the same loop shape (shuffle, gather the
  batch, forward, loss, backward, step, read back loss and accuracy) and the same thread count.
  The two take turns epoch by epoch (ours, torch, ours, ...), so a change in load hits both;
  each of our epochs is a one-epoch train() call on a fresh model.
  mlp_fraction_of_sgemm_peak = samples/s * 6 * MACs per sample / sgemm rate (forward 2 FLOP per
  multiply-add, backward 4; the first layer's unneeded input gradient is counted too).
  Threads: train() pins its own BLAS thread count (pipeline.train.TRAIN_THREADS, 1 today), so
  the torch twins train with that many (torch.set_num_threads) and `train_threads` reports it;
  sgemm, predict_proba and torch inference use --threads. mlp_fraction_of_sgemm_peak is
  against the machine's rate at --threads; mlp_fraction_of_sgemm_train_threads against the
  rate at the training thread count.
- cnn_*: the default `cnn` (its DEFAULTS architecture, batch size and AdamW) with a constant
  learning rate and no augmentation (the torch twin has none), timed on the first --cnn-rows
  rows (fastest of --cnn-epochs, taking turns as above) and scaled to one 42000-row epoch;
  cnn_time_ratio_vs_torch = ours / torch.
- predict_28000_s: `pipeline.predict.predict_proba` of the CNN just trained on the 28000 test
  rows (batch 1000, no TTA), best of two after a warm-up.
- noop_submit_s, peak_rss_mb: in a scratch copy of the repo (the package, Makefile, setup files
  and a link to the zip), `make submit MODEL=<--submit-model> EPOCHS=1` runs every stage once;
  peak_rss_mb is the largest resident set of any process of that run (os.wait4's ru_maxrss,
  which covers make's children). Then an identical `make submit` is timed twice (best kept):
  nothing has changed, so make only checks stamps and validates the submission. The scratch run
  uses the real virtual environment's python and never reinstalls the package.

Contention on shared machines moves absolute numbers; the ratios from one run hold up better.
torch is imported only here, and only when installed and not --skip-torch.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import train as train_module  # noqa: E402
from pipeline.data import read_competition  # noqa: E402
from pipeline.nn.models import build_spec  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402
from pipeline.params import TrainConfig  # noqa: E402
from pipeline.predict import predict_proba  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402
from pipeline.train import hyperparameters, train  # noqa: E402

DEFAULT_ZIP = Path("/work/shared/data/digit-recognizer.zip")
EPOCH_ROWS = 42000  # one epoch over train.csv: the unit of cnn_epoch_s
TEST_ROWS = 28000
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WARMUP_ROWS = 1024

MLP = dict(model="mlp", hidden=(256, 128), batch_size=128, lr=1e-3, optimizer="adam",
           schedule="constant", weight_decay=0.0, activation="relu", dropout=0.0,
           label_smoothing=0.0, augment="none")
CNN = dict(model="cnn", schedule="constant", augment="none")  # the rest: DEFAULTS["cnn"]

# (figure, target, how it is met) for the README table
TARGETS = (
    ("mlp_speedup_vs_torch", 1.5, ">="),
    ("mlp_fraction_of_sgemm_peak", 0.65, ">="),
    ("cnn_time_ratio_vs_torch", 1.5, "<="),
    ("predict_28000_s", 2.0, "<"),
    ("peak_rss_mb", 1536.0, "<"),
    ("noop_submit_s", 2.0, "<"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="the competition zip")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 MLP epoch on 8192 rows, CNN on 512 rows, sgemm n=2048, "
                        "scratch submit with the mlp")
    p.add_argument("--epochs", type=int, default=None, help="timed MLP epochs (default 3)")
    p.add_argument("--rows", type=int, default=None,
                   help="train.csv rows for the MLP (default all; --quick 8192)")
    p.add_argument("--cnn-epochs", type=int, default=1,
                   help="timed CNN epochs, each on --cnn-rows rows (default 1)")
    p.add_argument("--cnn-rows", type=int, default=None,
                   help="rows of the timed CNN epoch, scaled to 42000 (default 8192; --quick 512)")
    p.add_argument("--sgemm-n", type=int, default=None, help="matrix side (default 4096)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/OpenMP threads for numpy and torch (default: the cores available)")
    p.add_argument("--skip-torch", action="store_true", help="report our figures alone")
    p.add_argument("--skip-submit", action="store_true",
                   help="skip the scratch `make submit` (noop_submit_s, peak_rss_mb)")
    p.add_argument("--submit-model", choices=("cnn", "mlp"), default=None,
                   help="model of the scratch `make submit` (default cnn; --quick mlp)")
    p.add_argument("--profile", choices=("mlp", "cnn", "predict"), default=None,
                   help="instead of benchmarking: per-layer times of one training step and a "
                        "cProfile of train() (mlp, cnn), or a cProfile of predicting the test "
                        "rows with the default cnn (predict)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    defaults = {"epochs": (1, 3), "cnn_rows": (512, 8192), "sgemm_n": (2048, 4096),
                "submit_model": ("mlp", "cnn")}  # (--quick, full run)
    for name, (quick, full) in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    if a.rows is None and a.quick:
        a.rows = 8192
    if a.threads is None:
        a.threads = len(os.sched_getaffinity(0))
    for name in ("epochs", "cnn_epochs", "cnn_rows", "sgemm_n", "threads"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(a, name)}")
    return a


def pin_threads(threads, argv):
    """BLAS reads its thread count once, when loaded: if the environment differs, restart."""
    want = {k: str(threads) for k in THREAD_VARS}
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
              {**os.environ, **want})


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# FLOPs from a spec


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


# ----------------------------------------------------------------------------------------------
# Measurements of our package


def sgemm_gflops(n, repeats=4):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    b = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up: thread pool start, page faults
    best = min(_timed(np.matmul, a, b, out=c) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _timed(f, *args, **kw):
    t0 = time.perf_counter()
    f(*args, **kw)
    return time.perf_counter() - t0


def ours_trainer(settings, x, y, seed):
    """Warm up, then -> a function that runs one timed epoch of train() (a one-epoch train()
    call on a fresh model) and returns (the epoch loop's seconds, the TrainResult)."""
    cfg = TrainConfig(**settings, epochs=1, seed=seed)
    train(cfg, x[:WARMUP_ROWS], y[:WARMUP_ROWS], progress=False)

    def epoch():
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
    predict_proba([model], x_test[:1000])  # warm-up
    return min(_timed(predict_proba, [model], x_test) for _ in range(2))


# ----------------------------------------------------------------------------------------------
# The torch twin


def training_threads(threads):
    """The BLAS threads our train() really uses: its own TRAIN_THREADS when it pins them."""
    return getattr(train_module, "TRAIN_THREADS", None) or threads


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_twin(torch, spec):
    """The same layers as `spec` in torch (NCHW), in the same order."""
    nn = torch.nn
    acts = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "tanh": nn.Tanh,
            "sigmoid": nn.Sigmoid}
    mods, flat = [], False
    for ly in spec["layers"]:
        kind = ly["type"]
        if kind == "dense":
            mods.append(nn.Linear(ly["in"], ly["out"], bias=ly.get("bias", True)))
        elif kind == "conv":
            mods.append(nn.Conv2d(ly["cin"], ly["cout"], ly["k"], padding=ly.get("pad", 0),
                                  bias=ly.get("bias", True)))
        elif kind == "bn":
            bn = nn.BatchNorm1d if flat else nn.BatchNorm2d
            mods.append(bn(ly["c"], momentum=ly.get("momentum", 0.1), eps=1e-5))
        elif kind == "act":
            mods.append(acts[ly["fn"]]())
        elif kind == "pool":
            mods.append(nn.MaxPool2d(2))
        elif kind == "dropout":
            mods.append(nn.Dropout(ly["p"]))
        elif kind == "flatten":
            mods.append(nn.Flatten())
            flat = True
        else:
            raise ValueError(f"no torch twin for layer type {kind!r}")
    return nn.Sequential(*mods)


def torch_optimizer(torch, hp, net):
    if hp["optimizer"] == "adam":
        return torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    raise ValueError(f"no torch optimizer for {hp['optimizer']!r}")


def torch_epoch(torch, net, opt, X, Y, batch, gen):
    """One epoch of the loop train() runs: shuffle, gather, forward, loss, backward, step."""
    F = torch.nn.functional
    net.train()
    t0 = time.perf_counter()
    N = X.shape[0]
    perm = torch.randperm(N, generator=gen)
    loss_sum, correct = 0.0, 0
    for s in range(0, N, batch):
        idx = perm[s:s + batch]
        xb, yb = X[idx], Y[idx]
        z = net(xb)
        loss = F.cross_entropy(z, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * yb.shape[0]
        correct += int((z.argmax(1) == yb).sum())
    return time.perf_counter() - t0


def torch_trainer(torch, settings, x, y, seed):
    """The torch twin of `settings`, warmed up on 1024 rows -> a function that trains it one
    timed epoch and returns (seconds, the net)."""
    hp = hyperparameters(TrainConfig(**settings))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = torch_twin(torch, build_spec(settings["model"], hp))
    opt = torch_optimizer(torch, hp, net)
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, 1, 28, 28)
    Y = torch.from_numpy(y.astype(np.int64))
    torch_epoch(torch, net, opt, X[:WARMUP_ROWS], Y[:WARMUP_ROWS], hp["batch_size"], gen)

    def epoch():
        return torch_epoch(torch, net, opt, X, Y, hp["batch_size"], gen), net

    return epoch


def torch_predict(torch, net, x_test):
    net.eval()
    X = torch.from_numpy(np.ascontiguousarray(x_test.transpose(0, 3, 1, 2)))

    def run(X):
        with torch.no_grad():
            for s in range(0, X.shape[0], 1000):
                torch.softmax(net(X[s:s + 1000]), 1)

    run(X[:1000])
    return min(_timed(run, X) for _ in range(2))


# ----------------------------------------------------------------------------------------------
# make submit in a scratch copy


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


# ----------------------------------------------------------------------------------------------
# Profile mode


def profile(args, x, y):
    """Per-layer forward/backward times of one training step, then cProfile of a short epoch."""
    from pipeline.nn.model import Model
    settings = MLP if args.profile == "mlp" else CNN
    hp = hyperparameters(TrainConfig(**settings))
    rows = args.rows or (8192 if args.profile == "mlp" else 2048)
    B = hp["batch_size"]
    model = Model(build_spec(args.profile, hp), rng=np.random.default_rng(args.seed))
    first = next(i for i, ly in enumerate(model.spec["layers"]) if ly["type"] in ("conv", "dense"))
    fwd, bwd, shapes, step = layer_times(model, hp, x[:B], y[:B], np.random.default_rng(0))
    total = fwd.sum() + bwd.sum() + sum(step.values())
    print(f"{args.profile}: one training step at batch {B}, {args.threads} thread(s), "
          f"{total * 1e3:.2f} ms (medians of 20)")
    print(f"{'layer':<10} {'type':<8} {'output':<16} {'fwd ms':>8} {'bwd ms':>8} {'share':>6} "
          f"{'fwd GF/s':>9} {'bwd GF/s':>9}")
    for i, ly in enumerate(model.spec["layers"]):
        macs = 0
        if ly["type"] in ("conv", "dense"):
            macs = macs_per_sample({"input_shape": list(shapes[i][1:]) if ly["type"] == "conv"
                                    else [1, 1, 1], "layers": [ly]})
        bwd_flop = (4 if i > first else 2) * macs * B  # no input gradient for the first layer
        gf = ("", "") if not macs else (f"{2 * macs * B / fwd[i] / 1e9:9.1f}",
                                        f"{bwd_flop / bwd[i] / 1e9:9.1f}" if bwd[i] else "")
        print(f"{ly['name']:<10} {ly['type']:<8} {str(shapes[i + 1][1:]):<16} {fwd[i] * 1e3:8.3f} "
              f"{bwd[i] * 1e3:8.3f} {(fwd[i] + bwd[i]) / total:6.1%} {gf[0]:>9} {gf[1]:>9}")
    for name, t in step.items():
        print(f"{name:<44} {t * 1e3:8.3f} {'':>8} {t / total:6.1%}")
    cfg = TrainConfig(**settings, epochs=1, seed=args.seed)
    train(cfg, x[:WARMUP_ROWS], y[:WARMUP_ROWS], progress=False)
    prof = cProfile.Profile()
    prof.enable()
    result = train(cfg, x[:rows], y[:rows], progress=False)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
    print(f"\ncProfile of train(): {rows} rows, 1 epoch, {result.history[0]['seconds']:.3f} s")
    lines = out.getvalue().splitlines()
    print("\n".join(lines[next(i for i, t in enumerate(lines) if "ncalls" in t):]))


def profile_predict(args, x_test):
    from pipeline.nn.model import Model
    model = Model(build_spec("cnn", hyperparameters(TrainConfig(**CNN))),
                  rng=np.random.default_rng(args.seed))
    predict_proba([model], x_test[:1000])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    predict_proba([model], x_test)
    prof.disable()
    seconds = time.perf_counter() - t0
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    print(f"cProfile of predict_proba, default cnn, {len(x_test)} rows, {args.threads} thread(s): "
          f"{seconds:.3f} s")
    lines = out.getvalue().splitlines()
    print("\n".join(lines[next(i for i, t in enumerate(lines) if "ncalls" in t):]))


def layer_times(model, hp, xb, yb, rng, repeats=20):
    """Median seconds of each layer's forward and backward in one training step (through the
    layer table of pipeline.nn.model), the output shape of each, and the rest of the step."""
    from pipeline.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
    from pipeline.nn.model import LAYER_KINDS
    from pipeline.nn.optim import Optimizer
    layers = model.spec["layers"]

    def own(d, ly):
        return {k.split(".", 1)[1]: v for k, v in d.items() if k.split(".", 1)[0] == ly["name"]}

    P = [own(model.params, ly) for ly in layers]
    G = [own(model.grads, ly) for ly in layers]
    first = next(i for i, ly in enumerate(layers) if P[i])
    opt = Optimizer(hp["optimizer"], model.theta.size, model.n_decay,
                    weight_decay=hp["weight_decay"])
    fwd = np.zeros((repeats + 1, len(layers)))
    bwd = np.zeros((repeats + 1, len(layers)))
    loss_s, step_s, gather_s = [], [], []
    idx = np.arange(len(xb))
    for r in range(repeats + 1):  # the first pass is a warm-up
        t0 = time.perf_counter()
        h = xb[idx]
        gather_s.append(time.perf_counter() - t0)
        shapes, caches = [h.shape], []
        for i, ly in enumerate(layers):
            t0 = time.perf_counter()
            h, cache = LAYER_KINDS[ly["type"]][1](ly, P[i], h, True, rng)
            fwd[r, i] = time.perf_counter() - t0
            shapes.append(h.shape)
            caches.append(cache)
        t0 = time.perf_counter()
        _, lcache = softmax_cross_entropy_forward(h, yb)
        d = softmax_cross_entropy_backward(lcache)
        loss_s.append(time.perf_counter() - t0)
        for i in range(len(layers) - 1, first - 1, -1):
            ly = layers[i]
            t0 = time.perf_counter()
            d = LAYER_KINDS[ly["type"]][2](ly, P[i], G[i], d, caches[i], i > first)
            bwd[r, i] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opt.step(model.theta, model.grad, 1e-4)
        step_s.append(time.perf_counter() - t0)
    step = {"batch gather x[idx]": np.median(gather_s[1:]),
            "loss forward + backward": np.median(loss_s[1:]),
            f"optimizer step ({hp['optimizer']}, {model.theta.size} params)": np.median(step_s[1:])}
    return np.median(fwd[1:], axis=0), np.median(bwd[1:], axis=0), shapes, step


# ----------------------------------------------------------------------------------------------
# Report


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores available, {platform.system()}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def met(value, target, how):
    if value is None:
        return None
    return {">=": value >= target, "<=": value <= target, "<": value < target}[how]


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def rounded(v):
    """Floats to 4 significant decimals, inside dicts and lists too, for the JSON line."""
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: rounded(e) for k, e in v.items()}
    if isinstance(v, (list, tuple)):
        return [rounded(e) for e in v]
    return v


def print_table(r):
    rows = [
        ("sgemm float32 GFLOP/s", r["sgemm_gflops"], None, None),
        ("MLP train samples/s", r["mlp_samples_per_s"], r["torch_mlp_samples_per_s"],
         r["mlp_speedup_vs_torch"]),
        ("MLP training GFLOP/s", r["mlp_gflops"], r["torch_mlp_gflops"], None),
        ("MLP fraction of sgemm", r["mlp_fraction_of_sgemm_peak"],
         r["torch_mlp_fraction_of_sgemm_peak"], None),
        ("CNN epoch s (42000 rows)", r["cnn_epoch_s"], r["torch_cnn_epoch_s"],
         r["cnn_time_ratio_vs_torch"]),
        ("CNN fraction of sgemm", r["cnn_fraction_of_sgemm_peak"],
         r["torch_cnn_fraction_of_sgemm_peak"], None),
        ("predict 28000 s (CNN)", r["predict_28000_s"], r["torch_predict_28000_s"],
         ratio(r["predict_28000_s"], r["torch_predict_28000_s"])),
        ("load CSVs s", r["load_csv_s"], None, None),
        ("no-op make submit s", r["noop_submit_s"], None, None),
        ("peak RSS make submit MB", r["peak_rss_mb"], None, None),
    ]
    print(f"{'figure':<28} {'ours':>12} {'torch':>12} {'ours/torch':>11}")
    for name, ours, theirs, q in rows:
        print(f"{name:<28} {fmt(ours):>12} {fmt(theirs):>12} {fmt(q):>11}")
    print()
    if r["submit_error"]:
        print(f"note: the scratch `make submit` failed: {r['submit_error']}")
    if r["under_load"]:
        print(f"note: load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the "
              f"end: other processes shared the CPU, absolute figures are low and noisy")
    print(f"{'target':<28} {'value':>12} {'goal':>12} {'met':>11}")
    for key, target, how in TARGETS:
        ok = r["targets_met"][key]
        print(f"{key:<28} {fmt(r[key]):>12} {how + ' ' + fmt(target):>12} "
              f"{'-' if ok is None else ('yes' if ok else 'NO'):>11}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pin_threads(args.threads, argv)
    started = time.time()
    load_start = os.getloadavg()[0]

    log(f"reading {args.zip} ...")
    t0 = time.perf_counter()
    digits = read_competition(args.zip)
    load_csv_s = time.perf_counter() - t0
    norm = fit_normalizer(digits.train_x)
    x = normalize(digits.train_x, norm)  # (42000, 28, 28, 1) float32
    y = digits.train_y.astype(np.int64)
    x_test = normalize(digits.test_x, norm)  # (28000, 28, 28, 1)
    if args.rows:
        x, y = x[:args.rows], y[:args.rows]

    if args.profile == "predict":
        profile_predict(args, x_test)
        return 0
    if args.profile:
        profile(args, x, y)
        return 0

    torch = None if args.skip_torch else import_torch()
    train_threads = training_threads(args.threads)
    if torch is None and not args.skip_torch:
        log("torch is not installed: reporting our figures alone (pip install torch==2.13.0)")

    log(f"sgemm {args.sgemm_n}x{args.sgemm_n} ...")
    gflops = sgemm_gflops(args.sgemm_n)
    gflops_train = gflops
    if train_threads != args.threads:
        with blas_threads(train_threads):
            gflops_train = sgemm_gflops(args.sgemm_n)
    if torch is not None:
        torch.set_num_threads(train_threads)  # the twin trains with as many threads as ours

    mlp_spec = build_spec("mlp", hyperparameters(TrainConfig(**MLP)))
    mlp_flop = 6 * macs_per_sample(mlp_spec)
    log(f"MLP: {args.epochs} epoch(s) on {len(x)} rows, ours and torch in turn ...")
    trainers = [ours_trainer(MLP, x, y, args.seed)]
    if torch is not None:
        trainers.append(torch_trainer(torch, MLP, x, y, args.seed))
    (mlp_secs, *t_mlp), _ = alternate(trainers, args.epochs)
    mlp_sps = len(x) / min(mlp_secs)
    t_mlp_secs = t_mlp[0] if t_mlp else None
    t_mlp_sps = len(x) / min(t_mlp_secs) if t_mlp else None

    cnn_spec = build_spec("cnn", hyperparameters(TrainConfig(**CNN)))
    cnn_flop = 6 * macs_per_sample(cnn_spec)
    xc, yc = x[:args.cnn_rows], y[:args.cnn_rows]
    scale = EPOCH_ROWS / len(xc)
    log(f"CNN: {args.cnn_epochs} epoch(s) on {len(xc)} rows, ours and torch in turn ...")
    trainers = [ours_trainer(CNN, xc, yc, args.seed)]
    if torch is not None:
        trainers.append(torch_trainer(torch, CNN, xc, yc, args.seed))
    (cnn_secs, *t_cnn), (cnn_result, *t_last) = alternate(trainers, args.cnn_epochs)
    cnn_epoch = min(cnn_secs) * scale
    t_cnn_secs = t_cnn[0] if t_cnn else None
    t_cnn_epoch = min(t_cnn_secs) * scale if t_cnn else None
    t_net = t_last[0] if t_last else None

    if torch is not None:
        torch.set_num_threads(args.threads)  # predict_proba does not pin threads
    log(f"predict {len(x_test)} test rows ...")
    predict_s = time_predict(cnn_result.model, x_test) * TEST_ROWS / len(x_test)
    t_predict_s = None
    if torch is not None:
        t_predict_s = torch_predict(torch, t_net, x_test) * TEST_ROWS / len(x_test)

    peak_mb = noop_s = submit_error = None
    if not args.skip_submit:
        log(f"scratch make submit MODEL={args.submit_model} EPOCHS=1, then two no-op reruns ...")
        with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
            try:
                peak_mb, noop_s = scratch_submit(args.zip, args.submit_model, tmp)
            except RuntimeError as e:  # a broken stage must not cost the figures measured so far
                log(str(e))
                lines = str(e).splitlines()
                errors = [t for t in lines if "Error" in t and not t.startswith("make")]
                submit_error = (errors or lines)[-1].strip()

    def frac(sps, flop, rate=gflops):
        return None if sps is None else sps * flop / (rate * 1e9)

    r = {
        "date": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "train_threads": train_threads,
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "loadavg_start": round(load_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "sgemm_n": args.sgemm_n,
        "sgemm_gflops": gflops,
        "sgemm_gflops_train_threads": gflops_train,
        "mlp_rows": len(x),
        "mlp_epochs": args.epochs,
        "mlp_epoch_s": mlp_secs,
        "torch_mlp_epoch_s": t_mlp_secs,
        "mlp_samples_per_s": mlp_sps,
        "torch_mlp_samples_per_s": t_mlp_sps,
        "mlp_speedup_vs_torch": ratio(mlp_sps, t_mlp_sps),
        "mlp_gflops": mlp_sps * mlp_flop / 1e9,
        "torch_mlp_gflops": None if t_mlp_sps is None else t_mlp_sps * mlp_flop / 1e9,
        "mlp_fraction_of_sgemm_peak": frac(mlp_sps, mlp_flop),
        "torch_mlp_fraction_of_sgemm_peak": frac(t_mlp_sps, mlp_flop),
        "mlp_fraction_of_sgemm_train_threads": frac(mlp_sps, mlp_flop, gflops_train),
        "cnn_plan": hyperparameters(TrainConfig(**CNN)).get("plan"),
        "cnn_rows": len(xc),
        "cnn_epochs": args.cnn_epochs,
        "cnn_epoch_rows_s": cnn_secs,
        "torch_cnn_epoch_rows_s": t_cnn_secs,
        "cnn_epoch_s": cnn_epoch,
        "torch_cnn_epoch_s": t_cnn_epoch,
        "cnn_time_ratio_vs_torch": ratio(cnn_epoch, t_cnn_epoch),
        "cnn_fraction_of_sgemm_peak": frac(EPOCH_ROWS / cnn_epoch, cnn_flop),
        "torch_cnn_fraction_of_sgemm_peak": (None if t_cnn_epoch is None
                                             else frac(EPOCH_ROWS / t_cnn_epoch, cnn_flop)),
        "predict_28000_s": predict_s,
        "torch_predict_28000_s": t_predict_s,
        "predict_28000_floor_s": TEST_ROWS * cnn_flop / 3 / (gflops * 1e9),
        "load_csv_s": load_csv_s,
        "submit_model": None if args.skip_submit else args.submit_model,
        "noop_submit_s": noop_s,
        "peak_rss_mb": peak_mb,
        "submit_error": submit_error,
    }
    r["under_load"] = max(r["loadavg_start"], r["loadavg_end"]) > 0.5 * len(os.sched_getaffinity(0))
    r["targets_met"] = {key: met(r[key], target, how) for key, target, how in TARGETS}
    print_table(r)
    print(json.dumps(rounded(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
