"""Train one model (or an ensemble) through the pipeline's own stages, on its dev split, and print
one RESULT line with the dev-split accuracy and the seconds: a quick experiment that leaves your
project alone.

    python scripts/tune.py --model seed
    python scripts/tune.py --model cnn --epochs 15 --lr 3e-3 --ensemble 2 --tta

Every option is a parameter declared in `pipeline/params.py` (the same as `digits run`'s).
The runs happen in a scratch project (--root, default $TMPDIR/digits-tune) whose cache makes a
repeated run instant; the data come from --mirror (default: $KAGGLE_MIRROR, else ../shared/data
beside the checkout). A dev-split figure is for comparing runs quickly; the estimate to quote is
the cross-validated one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import paramfile, stages  # noqa: E402
from pipeline.config import Paths  # noqa: E402
from pipeline.params import PARAMS, ParamError  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "digits-tune")
    ap.add_argument("--mirror", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    for p in PARAMS:
        ap.add_argument(p.option, dest=p.name, default=None, help=p.help)
    args = ap.parse_args(argv)
    given = {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name) is not None}
    try:
        values = paramfile.apply(paramfile.empty(), given)
    except ParamError as e:
        ap.error(str(e))
    return args, values


def main(argv=None) -> None:
    import logging
    args, values = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="tune: %(message)s", stream=sys.stderr)
    split_cfg, train_cfg, predict_cfg = paramfile.configs(values)
    mirror = args.mirror or Path(os.environ.get("KAGGLE_MIRROR") or REPO.parent / "shared/data")
    paths = Paths(args.root.resolve())
    with stages.project_lock(paths):
        stages.download(paths, stages.Sources(mirror=mirror, use_api=False), progress=False)
        stages.split(paths, split_cfg)
        stages.normalize(paths)
        t0 = time.perf_counter()
        metrics = stages.train(paths, train_cfg, progress=None if args.quiet else "lines")
        train_s = time.perf_counter() - t0
        dev_tta = None
        if predict_cfg.tta:
            dev_tta = stages.dev_accuracy(paths, tta=True)
    members = " ".join(f"{100 * m['dev_accuracy']:.2f}%" for m in metrics["members"]
                       if m["dev_accuracy"] is not None)
    print(f"RESULT model={metrics['model']} members={len(metrics['members'])} "
          f"dev_acc={metrics['dev_accuracy']:.4f} dev_loss={metrics.get('dev_loss', 0):.4f} "
          + (f"dev_acc_tta={dev_tta:.4f} " if dev_tta is not None else "")
          + f"member_dev_acc=[{members}] train_seconds={metrics['train_seconds']:.1f} "
          f"wall_seconds={train_s:.1f} changed={json.dumps(metrics['params_changed'])}")


if __name__ == "__main__":
    main()
