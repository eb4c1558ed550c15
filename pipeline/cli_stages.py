"""The `digits` commands of the pipeline's stages, in order, plus `run` (`cv` and `sweep` are in
cli_cv.py): each settles its parameters, calls one function of `stages.py` and prints one result
line."""

from __future__ import annotations

from pathlib import Path

import click

from .cli import cli, default_mirror, locked, locked_ctx, sources
from .cli_params import param_options, settle
from .estimate import models_words as _models
from .estimate import oof_words as _oof
from .text import pct

MIRROR_OPTION = click.option(
    "--mirror", type=click.Path(file_okay=False), default=None,
    help="Directory holding digit-recognizer.zip, tried before the Kaggle API. "
         "[default: $KAGGLE_MIRROR, else ../shared/data when it exists]")



RESUME_OPTION = click.option(
    "--resume/--no-resume", default=True, show_default=True,
    help="Continue an interrupted training from its last epoch checkpoint (the result equals "
         "an uninterrupted run); --no-resume starts afresh. [make: RESUME=0]")


# ---- cross-validation and parallel training (cv.py, cvstages.py, parallel.py)

PARALLEL_OPTIONS = [
    click.option("--jobs", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Models trained at once, each on one BLAS thread; 0 = the cores "
                      "available. [make: JOBS]"),
    click.option("--backend", type=click.Choice(("loky", "dask")), default="loky",
                 show_default=True, help="Where fold models train: loky, worker processes on "
                 "this machine; dask, a dask.distributed cluster (--scheduler). [make: BACKEND]"),
    click.option("--scheduler", envvar="DASK_SCHEDULER_ADDRESS", default="",
                 help="The dask scheduler's address, e.g. tcp://127.0.0.1:8786. [default: "
                      "$DASK_SCHEDULER_ADDRESS] [make: SCHEDULER]"),
]


def parallel_options(f):
    for opt in reversed(PARALLEL_OPTIONS):
        f = opt(f)
    return f


def parallel_config(kw):
    """How members train (--jobs, --backend, --scheduler); they log per-epoch lines unless -q."""
    from .parallel import ParallelConfig
    shown = click.get_current_context().obj["progress"] is not None
    return ParallelConfig(jobs=kw.pop("jobs"), backend=kw.pop("backend"),
                          scheduler=kw.pop("scheduler") or "", progress=shown)


def cv_config(split_cfg, train_cfg, default_folds: int = 0):
    """The folds: K from --folds (FOLDS), rows and seed from the split's --max-train and
    --split-seed."""
    from .cv import CVConfig
    folds = train_cfg.folds if (train_cfg.folds or 0) >= 2 else default_folds
    return CVConfig(folds=folds, seed=split_cfg.seed, max_rows=split_cfg.max_train)


def _pseudo_rows(train_cfg) -> int:
    """At most every test row joins a second-round model's rows (the memory check's bound)."""
    return 28000 if getattr(train_cfg, "pseudo", None) else 0


def _check_pseudo(train_cfg) -> None:
    """--pseudo needs --folds: a usage error (exit 2) before any work."""
    if getattr(train_cfg, "pseudo", None) and (train_cfg.folds or 0) < 2:
        raise click.UsageError("--pseudo (PSEUDO=) needs --folds K (FOLDS=5): its second round "
                               "is scored out-of-fold; set FOLDS or PSEUDO=0.")


@cli.command(short_help="Fetch and check the competition data; parse it into arrays.")
@MIRROR_OPTION
@click.pass_obj
@locked
def download(obj, mirror):
    """Fetch and check the competition data; parse the CSVs into uint8 arrays."""
    from . import stages
    paths = obj["paths"]
    out = stages.download(paths, sources(mirror or default_mirror(paths.root)),
                          progress=obj["progress"])
    click.echo(f"data: {out}")


@cli.command(short_help="Split train.csv into train and dev rows (seeded, stratified).")
@param_options("split")
@click.pass_context
@locked_ctx
def split(ctx, **kw):
    """Split train.csv into train and dev rows (seeded, stratified by label)."""
    from . import stages
    split_cfg, _, _ = settle(ctx, kw, ctx.obj["paths"])
    click.echo(f"split: {stages.split(ctx.obj['paths'], split_cfg)}")


@cli.command(short_help="Fit the pixel normalization on the train rows only.")
@click.pass_obj
@locked
def normalize(obj):
    """Fit the pixel normalization on the train rows only."""
    from . import stages
    click.echo(f"normalizer: {stages.normalize(obj['paths'])}")


@cli.command(short_help="Train the network (or an ensemble); save weights and metrics.")
@param_options("train", "model")
@RESUME_OPTION
@parallel_options
@click.pass_context
@locked_ctx
def train(ctx, resume, **kw):
    """Train the network (or an ensemble, or --folds K fold models) and save weights, history
    and metrics.

    A per-model option (epochs, lr, ...) is kept in that model's table of params.toml."""
    from . import stages
    from .readers import npz_rows
    from .resources import check_train_memory
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    paths = ctx.obj["paths"]  # parameters that cannot fit are refused before any work
    _check_pseudo(train_cfg)
    check_train_memory(train_cfg, (npz_rows(paths.split, "train_idx") or 42000) + _pseudo_rows(
        train_cfg))
    if (train_cfg.folds or 0) >= 2:
        from . import cvstages
        metrics = cvstages.train_folds(ctx.obj["paths"], train_cfg,
                                     cv_config(split_cfg, train_cfg), par)
        click.echo(f"model: {ctx.obj['paths'].model} ({metrics['model']}, {_models(metrics)}; "
                   f"{_oof(metrics)})")
        return
    metrics = stages.train(ctx.obj["paths"], train_cfg, progress=ctx.obj["progress"],
                           resume=resume, par=par)
    click.echo(f"model: {ctx.obj['paths'].model} ({metrics['model']}, dev-split accuracy "
               f"{pct(metrics['dev_accuracy'])})")


@cli.command(short_help="Label the 28000 test rows; write a validated submission.csv.")
@param_options("predict")
@click.pass_context
@locked_ctx
def predict(ctx, **kw):
    """Label the 28000 test rows with the trained model and write a validated submission.csv.

    Uses the model that is there (data/models/model.npz); it never trains."""
    from . import stages
    _, _, predict_cfg = settle(ctx, kw, ctx.obj["paths"])
    out = stages.predict(ctx.obj["paths"], predict_cfg)
    click.echo(f"submission: {out['path']} ({out['rows']} rows)")


@cli.command(short_help="Check a submission file is one Kaggle accepts.")
@click.argument("submission", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def validate(obj, submission):
    """Check a submission file (default: submissions/submission.csv) is one Kaggle accepts,
    and say which model made it."""
    from . import stages
    _summary(stages.validate(obj["paths"], submission))


@cli.command(short_help="Figures and report.md of the trained model (data/reports/).")
@param_options("predict")
@click.pass_context
@locked_ctx
def report(ctx, **kw):
    """Write data/reports/<run>/: learning curves, dev confusion matrix, the most confident
    mistakes, what the first layer learned, test class shares, and a report.md tying them to the
    run's parameters and metrics. Reused (quick) when the current model already has one."""
    from . import stages
    _, _, predict_cfg = settle(ctx, kw, ctx.obj["paths"])
    out = stages.report(ctx.obj["paths"], predict_cfg)
    click.echo(f"report: {out['path'] / 'report.md'}")


@cli.command(short_help="Upload a validated submission to Kaggle and wait for its score.")
@click.option("-m", "--message", default="digits pipeline submission", show_default=True,
              help="Description of this submission, shown on Kaggle and kept in the ledger. "
                   "[make: MESSAGE]")
@click.option("--force", is_flag=True,
              help="Upload even when this exact file was uploaded before, or when its labels "
                   "look degenerate (see `digits validate`). [make: FORCE=1]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds to wait for Kaggle's score before giving up "
                                      "waiting. [make: TIMEOUT]")
@click.argument("submission", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
@locked
def upload(obj, message, force, timeout, submission):
    """Validate a submission (default: submissions/submission.csv), upload it to Kaggle, wait
    for its public score and record it in submissions/ledger.jsonl."""
    from . import kaggle_submit
    from .readers import submission_reference
    paths = obj["paths"]
    entry = kaggle_submit.upload_submission(submission or paths.submission, message,
                                            ledger=paths.ledger, force=force,
                                            poll=kaggle_submit.Poll(timeout=timeout),
                                            progress=obj["progress"] is not None,
                                            **submission_reference(paths.parsed))
    click.echo(f"public score: {entry['public_score']} (submission {entry['ref']}, "
               f"{entry['file']})")


@cli.command(short_help="Uploaded submissions, newest first, with Kaggle's scores.")
@click.option("--offline", is_flag=True,
              help="Show the ledger alone, without asking Kaggle. [make: OFFLINE=1]")
@click.pass_obj
def submissions(obj, offline):
    """Uploaded submissions, newest first: the ledger joined with Kaggle's status and score."""
    from . import kaggle_submit
    rows = kaggle_submit.list_submissions(obj["paths"].ledger, remote=not offline)
    click.echo(kaggle_submit.submissions_table(rows) if rows else "no submissions yet")


@cli.command(short_help="Every stage in order, each reused when nothing changed.")
@MIRROR_OPTION
@param_options("split", "train", "model", "predict")
@RESUME_OPTION
@parallel_options
@click.option("--report/--no-report", "with_report", default=True, show_default=True,
              help="End with the report stage (figures and report.md under data/reports).")
@click.pass_context
@locked_ctx
def run(ctx, mirror, resume, with_report, **kw):
    """Run every stage in order (each reused from cache when nothing changed)."""
    from . import stages
    paths, progress = ctx.obj["paths"], ctx.obj["progress"]
    par = parallel_config(kw)
    split_cfg, train_cfg, predict_cfg = settle(ctx, kw, paths)  # checked before any work
    from .resources import check_train_memory
    _check_pseudo(train_cfg)
    check_train_memory(train_cfg, (split_cfg.max_train or 42000) + _pseudo_rows(train_cfg))
    stages.download(paths, sources(mirror or default_mirror(paths.root)), progress=progress)
    stages.split(paths, split_cfg)
    stages.normalize(paths)
    if (train_cfg.folds or 0) >= 2:
        from . import cvstages
        metrics = cvstages.train_folds(paths, train_cfg, cv_config(split_cfg, train_cfg), par)
    else:
        metrics = stages.train(paths, train_cfg, progress=progress, resume=resume, par=par)
    stages.predict(paths, predict_cfg)
    _summary(stages.validate(paths))
    if with_report:
        out = stages.report(paths, predict_cfg)
        click.echo(f"report: {out['path'] / 'report.md'}")
    if metrics.get("oof_accuracy") is not None:  # the last line: the expected score
        from .estimate import estimate_line, first_round_line
        if first_round_line(metrics):
            click.echo(first_round_line(metrics))
        click.echo(estimate_line(metrics, tta=predict_cfg.tta))


def _summary(result: dict) -> None:
    made_by = f" ({result['made_by']})" if result.get("made_by") else ""
    click.echo(f"{result['path']}: valid, {result['rows']} rows{made_by}, "
               f"sha256 {result['sha256'][:12]}")
    if result.get("note"):
        click.echo(f"note: {result['note']}")


