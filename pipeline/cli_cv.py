"""The cross-validation commands, `digits cv` and `digits sweep` (after `run` in `--help`): each
settles its parameters, calls one function of `cvstages.py` and prints its result."""

from __future__ import annotations

import click

from .cli import cli, locked_ctx
from .cli_params import param_options, settle
from .cli_stages import cv_config, parallel_config, parallel_options
from .text import pct


@cli.command(short_help="K-fold cross-validation: the out-of-fold estimate (cv.json).")
@param_options("split", "train", "model")
@parallel_options
@click.pass_context
@locked_ctx
def cv(ctx, **kw):
    """Cross-validate the training parameters: K fold models (--folds, 5 unless set; trained in
    parallel, each cached), each scored on the fold it never saw. Writes data/models/cv.json
    (the out-of-fold accuracy with its 95% interval, log loss, per fold and per class) and
    oof.npz. The rows: all labelled ones, or a stratified --max-train subset."""
    from .estimate import estimate_line, first_round_line
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    from . import cvstages
    summary = cvstages.cv(ctx.obj["paths"], train_cfg, cv_config(split_cfg, train_cfg, 5), par)
    click.echo("folds: " + " ".join(pct(a) for a in summary["fold_accuracy"]))
    click.echo(f"cv: {ctx.obj['paths'].models / 'cv.json'}")
    click.echo(estimate_line(summary, tta=True))
    click.echo(estimate_line(summary))
    if first_round_line(summary):
        click.echo(first_round_line(summary))


@cli.command(short_help="Cross-validate every combination of a grid, ranked.")
@click.option("--grid", required=True,
              help='The combinations: space-separated name=v1,v2 terms over the training '
                   'parameters, e.g. "lr=1e-3,3e-3 epochs=15,20" (layer sizes as '
                   'hidden=512x256,256). [make: GRID]')
@click.option("--keep-best", is_flag=True,
              help="Write the best point's values into params.toml, so the next `make submit` "
                   "trains with the settings CV chose. [make: KEEP_BEST=1]")
@param_options("split", "train", "model")
@parallel_options
@click.pass_context
@locked_ctx
def sweep(ctx, grid, keep_best, **kw):
    """Cross-validate every combination of --grid (all their members in parallel), print them
    ranked by out-of-fold accuracy, write data/models/sweep.json and add each to
    data/runs.jsonl; with --keep-best, keep the winner's values in params.toml."""
    from .cv import parse_grid, sweep_table
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    try:
        points = parse_grid(grid, train_cfg)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--grid'") from None
    cv_cfg = cv_config(split_cfg, train_cfg, 5)
    from . import cvstages
    results = cvstages.sweep(ctx.obj["paths"], train_cfg, cv_cfg, par, points)
    click.echo(sweep_table(results))
    click.echo(f"sweep: {ctx.obj['paths'].models / 'sweep.json'} ({len(points)} points, "
               f"{cv_cfg.folds} folds each)")
    if keep_best:  # saved with the options given, once the command succeeds (cli.py)
        from . import paramfile
        from .cv import ranked
        best = ranked(results)[0]
        values = ctx.obj.get("params_to_save") or paramfile.load(ctx.obj["paths"].params)
        ctx.obj["params_to_save"] = paramfile.apply(values, best["point"])
        click.echo(f"params: kept the best point, {best['label']}, in params.toml")
