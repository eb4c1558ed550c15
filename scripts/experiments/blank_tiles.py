"""What listing the inked tiles saves in inference (blank.py, winograd_inference.sparse_inference):
the default cnn's second conv (+ pool + ReLU, the inference step c2+p3+c2a) on one chunk of 128
test.csv rows, one thread, with the plain tile runner and with blank tiles taken from the
reference. First with the chunk's real blank mask, then with a mask that calls the first j whole
images blank (and nothing else), to show the listing's cost where few tiles are skipped (those
outputs are wrong, only their time counts). A fresh model with its BatchNorm statistics set.
Milliseconds: medians of --rounds interleaved rounds of 20 calls. With --predict: Model.forward
over all 28000 test rows on --threads threads, as Model.forward runs it and with every chunk
through the plain plan (plan.run_forward), in turn, seconds.

    python scripts/experiments/blank_tiles.py [--rounds 7] [--zip PATH]
    python scripts/experiments/blank_tiles.py --predict [--threads 2] [--rounds 7] [--min-blank 0]

--min-blank sets winograd_inference.MIN_BLANK for the --predict run (0: every conv with a blank tile
lists its inked ones).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.measure import interleaved  # noqa: E402

from pipeline.data import read_competition  # noqa: E402
from pipeline.nn import blank as Bl  # noqa: E402
from pipeline.nn import winograd_inference as Wf  # noqa: E402
from pipeline.nn.model import EVAL_CHUNK, Model  # noqa: E402
from pipeline.nn.models import DEFAULTS, build_spec  # noqa: E402
from pipeline.nn.plan import run_forward  # noqa: E402
from pipeline.preprocess import fit_normalizer, normalize  # noqa: E402

CALLS = 20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--zip", type=Path, default=Path("/work/shared/data/digit-recognizer.zip"))
    p.add_argument("--predict", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-blank", type=float, default=None)
    a = p.parse_args(argv)
    if a.min_blank is not None:
        Wf.MIN_BLANK = a.min_blank
    d = read_competition(a.zip)
    model = Model(build_spec("cnn", DEFAULTS["cnn"]), rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for P in model._P:
        if "var" in P:
            P["var"][...] = rng.uniform(0.5, 2.0, P["var"].shape)
    if a.predict:
        return predict(model, normalize(d.test_x, fit_normalizer(d.train_x)), a)
    x = normalize(d.test_x[:EVAL_CHUNK], fit_normalizer(d.train_x))
    run = model._eval_runner()
    first, second = run.plan[0], run.plan[1]
    refs = run._reference(x[0, 0, 0], x.shape[1:])
    h = first.forward(x, **first.P, train=False, **first.settings)[0]  # c2's input
    real = Bl.passed(x[..., 0] == x[0, 0, 0, 0], run.layers[0])
    tiles = Wf.blank_tiles((real, None), 0, 4, 6, 6, 6)
    print(f"the chunk's pixels: {(x == x[0, 0, 0, 0]).mean():.1%} background")
    masks = [(f"the chunk's own mask ({tiles.mean():.1%} of tiles blank)", real)]
    for j in (0, 3, 6, 13, 26):
        fake = np.zeros_like(real)
        fake[:j] = True
        masks.append((f"{j} whole images blank ({j / len(x):.1%})", fake))

    def calls(blank):
        def go():
            for _ in range(CALLS):
                second.forward(h, **second.P, train=False, **second.settings, **blank)
        return go

    runs = {"plain tile runner": calls({})}
    runs.update({label: calls({"blank": (mk, *refs[1])}) for label, mk in masks})
    with threadpool_limits(1):
        times = interleaved(runs, a.rounds)
    plain = statistics.median(times["plain tile runner"])
    print(f"{second.name} on {len(x)} test rows, 1 thread, ms per call (medians of {a.rounds})")
    for label, t in times.items():
        sec = statistics.median(t)
        print(f"  {label:46s} {1e3 * sec / CALLS:7.3f}  {sec / plain:6.3f}")
    take_modes(h, tiles, a.rounds)


def take_modes(h, skip, rounds):
    """np.take of the inked tiles' window pixels, rows of c2's input as sparse_inference
    gathers them, in its default mode and in "clip" (what the kernel uses)."""
    N, H, W, C = h.shape
    i, a, b = np.nonzero(~skip)
    rows = ((np.arange(6)[:, None] * W + np.arange(6)).reshape(-1, 1)
            + ((i * H + 4 * a) * W + 4 * b)).reshape(-1)
    x2, out = h.reshape(-1, C), np.empty((rows.size, C), h.dtype)
    def go(mode):
        for _ in range(CALLS):
            np.take(x2, rows, axis=0, out=out, mode=mode)

    times = interleaved({mode: lambda mode=mode: go(mode) for mode in ("raise", "clip")}, rounds)
    print(f"np.take of the inked tiles' {rows.size} window pixels ({C} channels each), ms:")
    for mode, t in times.items():
        print(f"  mode={mode!r:8s} {1e3 * statistics.median(t) / CALLS:7.3f}")


def predict(model, x, a):
    def plain(self, chunk):
        return run_forward(self.plan, chunk, False)[0]

    skipping = Bl.BlankRun.run

    def forward(run):
        Bl.BlankRun.run = run
        try:
            model.forward(x, threads=a.threads)
        finally:
            Bl.BlankRun.run = skipping

    with threadpool_limits(1):
        model.forward(x[:2000], threads=a.threads)  # warm-up: threads and their buffers
        times = interleaved({"Model.forward (blank tiles skipped)": lambda: forward(skipping),
                             "every chunk by the plain plan": lambda: forward(plain)}, a.rounds)
    print(f"Model.forward on {len(x)} test rows, {a.threads} thread(s), MIN_BLANK "
          f"{Wf.MIN_BLANK}, s (medians of {a.rounds} interleaved rounds)")
    for label, t in times.items():
        print(f"  {label:40s} {statistics.median(t):7.3f}  (min {min(t):.3f})")


if __name__ == "__main__":
    main()
