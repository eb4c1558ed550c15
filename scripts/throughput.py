"""Members per hour with 2 workers against 1: the same fold members trained through
`pipeline.parallel.run` (what `digits cv` uses) with --jobs 1, then 2, in one process.

Nothing is cached or written: each round trains the same members afresh from the project's
parsed data (run `make normalize` first). The loky workers are started by a warm-up call before
the clock starts, so the figures are steady-state throughput; a real CV (minutes per member)
pays the ~2 s worker start once. The load average is printed before and after, since two
workers only help when two cores are free.

    python scripts/throughput.py [--model mlp] [--epochs 2] [--rows 8000] [--folds 4]
        [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import Paths  # noqa: E402
from pipeline.cv import fit_member, stratified_folds, stratified_rows  # noqa: E402
from pipeline.fileio import read_json, read_npz  # noqa: E402
from pipeline.parallel import ParallelConfig, cores_per_task, run  # noqa: E402
from pipeline.params import TrainConfig, resolve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8000, help="labelled rows cross-validated")
    ap.add_argument("--folds", type=int, default=4, help="members per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating 1-worker/2-worker rounds")
    args = ap.parse_args()
    paths = Paths.default()
    parsed, norm = read_npz(paths.parsed), read_json(paths.normalizer)
    rows = stratified_rows(parsed["train_y"], args.rows, 0)
    data = {"pixels": parsed["train_x"][rows], "labels": parsed["train_y"][rows],
            "normalizer": norm}
    fold = stratified_folds(data["labels"], args.folds, 0)
    cfg = json.loads(json.dumps(resolve(TrainConfig(model=args.model, epochs=args.epochs)),
                                default=list))
    tasks = [{"cfg": cfg, "train_rows": np.flatnonzero(fold != f),
              "eval_rows": np.flatnonzero(fold == f)} for f in range(args.folds)]
    load0 = os.getloadavg()
    list(run(_noop, None, [0, 1], ParallelConfig(jobs=2)))  # start the two loky workers
    seconds = {1: [], 2: []}
    for _ in range(args.rounds):
        for jobs in (1, 2):
            t0 = time.perf_counter()
            par = ParallelConfig(jobs=jobs)
            cores = cores_per_task(par, len(tasks))  # as digits cv gives them
            out = dict(run(fit_member, data, [{**t, "cores": cores} for t in tasks], par))
            seconds[jobs].append(time.perf_counter() - t0)
            acc = np.mean([out[i]["eval_accuracy"] for i in range(len(tasks))])
            print(f"jobs={jobs}: {len(tasks)} members in {seconds[jobs][-1]:.1f} s "
                  f"(mean fold accuracy {100 * acc:.2f}%)", flush=True)
    per_hour = {j: len(tasks) * len(s) / sum(s) * 3600 for j, s in seconds.items()}
    result = {"model": args.model, "epochs": args.epochs, "rows": int(len(rows)),
              "members_per_round": len(tasks), "rounds": args.rounds,
              "members_per_hour_1_worker": round(per_hour[1], 1),
              "members_per_hour_2_workers": round(per_hour[2], 1),
              "speedup": round(per_hour[2] / per_hour[1], 3),
              "seconds": {str(j): [round(x, 2) for x in s] for j, s in seconds.items()},
              "load_before": [round(x, 2) for x in load0],
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "cores": len(os.sched_getaffinity(0))}
    print(f"members per hour: 1 worker {per_hour[1]:.0f}, 2 workers {per_hour[2]:.0f}: "
          f"{result['speedup']:.2f}x (load average {load0[0]:.2f} before, "
          f"{result['load_after'][0]:.2f} after)")
    print(json.dumps(result))


def _noop(shared, task):
    return task


if __name__ == "__main__":
    main()
