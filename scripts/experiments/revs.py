"""Two commits of the package timed in turn on the bench's workloads: the MLP's training epoch
(scripts/bench.py's MLP settings, all 42000 rows, one thread: samples/s), the default cnn's
training step (one train() epoch of --cnn-rows rows, no augmentation, on one and on two
threads: ms per 128-row step) and predict_proba on the first --predict-rows test rows (two
threads; a fresh model with BatchNorm statistics set, best of two). Each commit is checked out
into a temporary git worktree; every round runs one child process per commit, alternating, with
that worktree first on sys.path, so a change in the machine's speed hits both. Medians over
--rounds rounds.

    python scripts/experiments/revs.py 0cb4e37 HEAD [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ZIP = REPO.parent / "shared" / "data" / "digit-recognizer.zip"

CHILD = r"""
import json, sys, time
root = sys.argv[1]
sys.path[:0] = [root, root + "/scripts"]
import numpy as np
from threadpoolctl import threadpool_limits
from bench import CNN, MLP
from benchlib.measure import ours_trainer, time_predict
from pipeline.data import read_competition
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.preprocess import fit_normalizer, normalize

d = read_competition(sys.argv[2])
norm = fit_normalizer(d.train_x)
x, y = normalize(d.train_x, norm), d.train_y.astype(np.int64)
cnn_rows, predict_rows = int(sys.argv[3]), int(sys.argv[4])
out = {}
with threadpool_limits(1):
    seconds = ours_trainer(MLP, x, y, 0)()[0]
    out["mlp_samples_per_s"] = len(x) / seconds
    for threads in (1, 2):
        seconds = ours_trainer(CNN, x[:cnn_rows], y[:cnn_rows], 0, threads)()[0]
        out[f"cnn_step_ms_{threads}"] = 1e3 * seconds / -(-cnn_rows // 128)
rng = np.random.default_rng(0)
model = Model(build_spec("cnn", DEFAULTS["cnn"]), rng=rng)
for k, v in model.params.items():
    if k.endswith((".var", ".gamma")):
        v[...] = rng.uniform(0.5, 1.5, size=v.shape)
out["predict_s"] = time_predict(model, normalize(d.test_x[:predict_rows], norm))[0]
print(json.dumps(out))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revs", nargs=2, help="two commits (anything git rev-parse takes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cnn-rows", type=int, default=2048)
    p.add_argument("--predict-rows", type=int, default=8192)
    p.add_argument("--zip", type=Path, default=ZIP)
    a = p.parse_args(argv)
    shas = [subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", r], check=True,
                           capture_output=True, text=True).stdout.strip() for r in a.revs]
    with tempfile.TemporaryDirectory(prefix="revs-") as tmp:
        trees = []
        for sha in shas:
            tree = Path(tmp) / sha
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach",
                            str(tree), sha], check=True)
            trees.append(tree)
        runs = {sha: [] for sha in shas}
        try:
            for r in range(a.rounds):
                for sha, tree in zip(shas, trees):
                    res = subprocess.run(
                        [sys.executable, "-c", CHILD, str(tree), str(a.zip), str(a.cnn_rows),
                         str(a.predict_rows)], check=True, capture_output=True, text=True)
                    runs[sha].append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(f"round {r + 1} {sha}: {runs[sha][-1]}", file=sys.stderr)
        finally:
            for tree in trees:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], check=False)
    keys = [("mlp_samples_per_s", "MLP samples/s, 1 thread", "{:,.0f}"),
            ("cnn_step_ms_1", "cnn step ms, 1 thread", "{:.1f}"),
            ("cnn_step_ms_2", "cnn step ms, 2 threads", "{:.1f}"),
            ("predict_s", f"predict {a.predict_rows} rows s, 2 threads", "{:.3f}")]
    print(f"medians of {a.rounds} interleaved rounds (each: one child process per commit)")
    print(f"{'':36s} " + " ".join(f"{sha:>12s}" for sha in shas) + "   ratio")
    for key, label, fmt in keys:
        med = [float(np.median([run[key] for run in runs[sha]])) for sha in shas]
        print(f"{label:36s} " + " ".join(f"{fmt.format(v):>12s}" for v in med)
              + f"   {med[1] / med[0]:.3f}")


if __name__ == "__main__":
    main()
