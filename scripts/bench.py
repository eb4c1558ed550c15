"""Speed benchmark: our NumPy networks against the same networks in PyTorch on the CPU, side by
side in one process and one run, plus the machine's float32 matmul rate and the pipeline's own
timings (CSV load, batched inference, a no-op `make submit`, peak memory).

    python scripts/bench.py                      # the full run behind the README table (minutes)
    python scripts/bench.py --quick              # a smoke run (seconds to a minute)
    python scripts/bench.py --skip-torch --threads 1 --epochs 2 --cnn-rows 4096
    python scripts/bench.py --profile cnn        # per-step times + cProfile of our training loop
    python scripts/bench.py --profile kernels --threads 1   # direct vs Winograd conv+pool
    make bench                                   # installs the `bench` extra (torch), runs this

The pieces are in scripts/benchlib/: measure.py (our timings), twin.py (the torch twins),
profile.py (--profile), report.py (table, targets). It prints a table and, as its last line, one
JSON object with every figure. What each one is:

- sgemm_gflops: best of a few (n x n) @ (n x n) float32 products (n=4096), 2n^3 FLOP each, on
  --threads BLAS threads (sgemm_gflops_1_thread: on one): the ceiling for dense layers.
- load_csv_s: `pipeline.data.read_competition(zip)`: check the zip, parse the three CSVs.
- mlp_*: 784-256-128-10 relu MLP, batch 128, Adam lr 1e-3 (no weight decay, dropout,
  augmentation or schedule), trained through `pipeline.train.train()` on the train.csv rows,
  one thread each (ours: one BLAS thread, no prefetch thread; torch.set_num_threads(1)).
  samples/s = rows / the fastest epoch's seconds (train() times the epoch loop only: no data
  loading, no model build), after a one-epoch warm-up on 1024 rows. The torch twin is built
  layer by layer from the same spec and trained with the same loop shape (shuffle, gather the
  batch, forward, loss, backward, step, read back loss and accuracy). The two take turns epoch
  by epoch (ours, torch, ours, ...), so a change in load hits both; each of our epochs is a
  one-epoch train() call on a fresh model. mlp_fraction_of_sgemm_peak = samples/s * 6 * MACs
  per sample / the one-thread sgemm rate (forward 2 FLOP per multiply-add, backward 4).
- cnn_*: the default `cnn` (DEFAULTS["cnn"] in pipeline/nn/models.py: whatever architecture,
  batch size and optimizer it names, `cnn_plan` in the JSON) with a constant learning rate and
  no augmentation (the torch twin has none), timed on the first --cnn-rows rows and scaled to
  one 42000-row epoch. Four trainers take turns epoch by epoch: ours and torch on one thread,
  ours and torch on --threads (ours: the package's settings, a prefetch thread and conv+pool
  steps on that many threads; torch: set_num_threads). cnn_time_ratio_vs_torch = ours / torch
  on one thread each; cnn_wall_ratio_vs_torch_best = ours / torch, each side's faster thread
  count (cnn_best_threads, torch_cnn_best_threads).
- predict_28000_s: `pipeline.predict.predict_proba` of the CNN just trained on the 28000 test
  rows (PREDICT_THREADS threads: the cores available), best of two after a warm-up; torch on
  --threads. predict_28000_cpu_s: the CPU seconds of all our threads in the cheaper of the two
  (under load the wall time stretches, the CPU time much less). predict_28000_floor_s: the
  network's forward multiply-adds as direct convolutions (im2col products), for the 28000 rows,
  at the --threads sgemm rate: what that form of inference would take at full BLAS speed. Not
  a floor for ours: Winograd's transforms do fewer multiplications, and blank tiles none.
- noop_submit_s, peak_rss_mb: in a scratch copy of the repo (the package, Makefile, setup files
  and a link to the zip), `make submit MODEL=<--submit-model> EPOCHS=1` runs every stage once;
  peak_rss_mb is the largest resident set of any process of that run (os.wait4's ru_maxrss,
  which covers make's children). Then an identical `make submit` is timed twice (best kept):
  nothing has changed, so make only checks stamps and validates the submission. The scratch run
  uses the real virtual environment's python and never reinstalls the package.

Contention on shared machines moves absolute numbers; the ratios from one run hold up better.
torch is imported only by benchlib/twin.py, and only when installed and not --skip-torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib.kernels import profile_kernels  # noqa: E402
from benchlib.measure import (  # noqa: E402
    alternate,
    macs_per_sample,
    ours_trainer,
    scratch_submit,
    sgemm_gflops,
    time_predict,
)
from benchlib.profile import profile_predict, profile_training  # noqa: E402
from benchlib.report import TARGETS, machine, met, print_table, ratio, rounded  # noqa: E402
from benchlib.twin import import_torch, torch_predict, torch_trainer, torch_twin  # noqa: E402

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn.models import build_spec  # noqa: E402
from pipeline.nn.threads import blas_threads  # noqa: E402
from pipeline.params import TrainConfig  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402
from pipeline.train import hyperparameters  # noqa: E402

__all__ = ["macs_per_sample", "torch_twin", "MLP", "CNN"]  # scripts/experiments use these

DEFAULT_ZIP = Path("/work/shared/data/digit-recognizer.zip")
EPOCH_ROWS = 42000  # one epoch over train.csv: the unit of cnn_epoch_s
TEST_ROWS = 28000
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # --blas-own-kernel removes both

MLP = dict(model="mlp", hidden=(256, 128), batch_size=128, lr=1e-3, optimizer="adam",
           schedule="constant", weight_decay=0.0, activation="relu", dropout=0.0,
           label_smoothing=0.0, augment="none")
CNN = dict(model="cnn", schedule="constant", augment="none")  # the rest: DEFAULTS["cnn"]


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
    p.add_argument("--cnn-epochs", type=int, default=None,
                   help="timed CNN epochs per side and thread count, each on --cnn-rows rows "
                        "(default 2; --quick 1)")
    p.add_argument("--cnn-rows", type=int, default=None,
                   help="rows of the timed CNN epoch, scaled to 42000 (default 8192; --quick 512)")
    p.add_argument("--sgemm-n", type=int, default=None, help="matrix side (default 4096)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the 'best' CNN runs, sgemm and inference (default: the cores "
                        "available); the MLP and the one-thread CNN figures use one")
    p.add_argument("--skip-torch", action="store_true", help="report our figures alone")
    p.add_argument("--skip-submit", action="store_true",
                   help="skip the scratch `make submit` (noop_submit_s, peak_rss_mb)")
    p.add_argument("--submit-model", choices=("cnn", "mlp"), default=None,
                   help="model of the scratch `make submit` (default cnn; --quick mlp)")
    p.add_argument("--profile", choices=("mlp", "cnn", "predict", "kernels"), default=None,
                   help="instead of benchmarking: per-step times of one training step and a "
                        "cProfile of train() (mlp, cnn: the default cnn, on --threads), a "
                        "cProfile of predicting the test rows with the default cnn (predict), "
                        "or the conv+pool kernels side by side, their rounding and their "
                        "products' rates (kernels; use --threads 1)")
    p.add_argument("--blas-own-kernel", action="store_true",
                   help="run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so numpy's OpenBLAS "
                        "picks its kernels itself (this machine's environment forces Haswell "
                        "ones; the JSON's `blas` names the kernel that ran)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="--profile mlp|cnn step table: wall time, or this thread's CPU time "
                        "(steadier on a loaded machine; use with --threads 1)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    defaults = {"epochs": (1, 3), "cnn_epochs": (1, 2), "cnn_rows": (512, 8192),
                "sgemm_n": (2048, 4096),
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


def pin_threads(threads, argv, own_kernel=False):
    """BLAS reads its thread count (and its kernel choice) once, when loaded: if the
    environment differs, restart. own_kernel: without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE."""
    want = {k: str(threads) for k in THREAD_VARS}
    drop = KERNEL_VARS if own_kernel else ()
    if all(os.environ.get(k) == v for k, v in want.items()) and not any(
            k in os.environ for k in drop):
        return
    env = {k: v for k, v in {**os.environ, **want}.items() if k not in drop}
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


def blas_name():
    """numpy's BLAS as threadpoolctl sees it, e.g. 'openblas 0.3.31 SkylakeX'."""
    from threadpoolctl import threadpool_info
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return " ".join(str(info[0].get(k)) for k in ("internal_api", "version", "architecture")
                    ) if info else None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pin_threads(args.threads, argv, args.blas_own_kernel)
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
        profile_predict(args, CNN, x_test)
        return 0
    if args.profile == "kernels":
        profile_kernels(args, CNN)
        return 0
    if args.profile:
        profile_training(args, MLP if args.profile == "mlp" else CNN, x, y)
        return 0

    torch = None if args.skip_torch else import_torch()
    if torch is None and not args.skip_torch:
        log("torch is not installed: reporting our figures alone (pip install torch==2.13.0)")

    log(f"sgemm {args.sgemm_n}x{args.sgemm_n} ...")
    gflops = sgemm_gflops(args.sgemm_n)
    gflops_1 = gflops
    if args.threads != 1:
        with blas_threads(1):
            gflops_1 = sgemm_gflops(args.sgemm_n)

    mlp_spec = build_spec("mlp", hyperparameters(TrainConfig(**MLP)))
    mlp_flop = 6 * macs_per_sample(mlp_spec)
    log(f"MLP: {args.epochs} epoch(s) on {len(x)} rows, ours and torch in turn, 1 thread ...")
    trainers = [ours_trainer(MLP, x, y, args.seed)]
    if torch is not None:
        trainers.append(torch_trainer(torch, MLP, x, y, args.seed))
    (mlp_secs, *t_mlp), _ = alternate(trainers, args.epochs)
    mlp_sps = len(x) / min(mlp_secs)
    t_mlp_secs = t_mlp[0] if t_mlp else None
    t_mlp_sps = len(x) / min(t_mlp_secs) if t_mlp else None

    cnn_hp = hyperparameters(TrainConfig(**CNN))
    cnn_flop = 6 * macs_per_sample(build_spec("cnn", cnn_hp))
    xc, yc = x[:args.cnn_rows], y[:args.cnn_rows]
    scale = EPOCH_ROWS / len(xc)
    counts = (1, args.threads) if args.threads > 1 else (1,)
    log(f"CNN ({cnn_hp['plan']}): {args.cnn_epochs} epoch(s) on {len(xc)} rows, ours and torch "
        f"in turn on {' and '.join(map(str, counts))} thread(s) ...")
    trainers, names = [], []
    for n in counts:
        trainers.append(ours_trainer(CNN, xc, yc, args.seed, threads=n))
        names.append(("ours", n))
        if torch is not None:
            trainers.append(torch_trainer(torch, CNN, xc, yc, args.seed, threads=n))
            names.append(("torch", n))
    secs, last = alternate(trainers, args.cnn_epochs)
    cnn = {key: min(t) * scale for key, t in zip(names, secs)}  # best epoch, 42000 rows
    cnn_runs = {f"{side}_{n}_threads": [round(t * scale, 3) for t in ts]
                for (side, n), ts in zip(names, secs)}
    cnn_result = last[names.index(("ours", counts[-1]))]
    t_net = last[names.index(("torch", counts[-1]))] if torch is not None else None

    def best(side):
        options = {n: t for (s, n), t in cnn.items() if s == side}
        if not options:
            return None, None
        n = min(options, key=options.get)
        return options[n], n

    ours_best, ours_best_n = best("ours")
    torch_best, torch_best_n = best("torch")
    cnn_epoch, t_cnn_epoch = cnn[("ours", 1)], cnn.get(("torch", 1))

    log(f"predict {len(x_test)} test rows ...")
    predict_s, predict_cpu = time_predict(cnn_result.model, x_test)
    predict_s, predict_cpu = (t * TEST_ROWS / len(x_test) for t in (predict_s, predict_cpu))
    t_predict_s = None
    if torch is not None:
        t_predict_s = torch_predict(torch, t_net, x_test, args.threads) * TEST_ROWS / len(x_test)

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

    def frac(sps, flop, rate=gflops_1):
        return None if sps is None else sps * flop / (rate * 1e9)

    r = {
        "date": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "numpy": np.__version__,
        "blas": blas_name(),
        "blas_env": {k: os.environ.get(k) for k in KERNEL_VARS},
        "torch": None if torch is None else torch.__version__,
        "loadavg_start": round(load_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "quick": args.quick,
        "sgemm_n": args.sgemm_n,
        "sgemm_gflops": gflops,
        "sgemm_gflops_1_thread": gflops_1,
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
        "cnn_plan": cnn_hp.get("plan"),
        "cnn_rows": len(xc),
        "cnn_epochs": args.cnn_epochs,
        "cnn_epochs_42000_s": cnn_runs,
        "cnn_epoch_s": cnn_epoch,
        "torch_cnn_epoch_s": t_cnn_epoch,
        "cnn_time_ratio_vs_torch": ratio(cnn_epoch, t_cnn_epoch),
        "cnn_wall_best_s": ours_best,
        "torch_cnn_wall_best_s": torch_best,
        "cnn_best_threads": ours_best_n,
        "torch_cnn_best_threads": torch_best_n,
        "cnn_wall_ratio_vs_torch_best": ratio(ours_best, torch_best),
        "cnn_fraction_of_sgemm_peak": frac(EPOCH_ROWS / cnn_epoch, cnn_flop),
        "torch_cnn_fraction_of_sgemm_peak": (None if t_cnn_epoch is None
                                             else frac(EPOCH_ROWS / t_cnn_epoch, cnn_flop)),
        "predict_28000_s": predict_s,
        "predict_28000_cpu_s": predict_cpu,
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
