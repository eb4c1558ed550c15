"""The `digits` command: one thin click command per stage, plus `run` for all of them.

Each command settles its parameters (the options derived from `params.py`, make variables and
params.toml, see `cli_params.py`) into the frozen configs, calls one function of `stages.py` and
prints one result line. A UserError anywhere becomes one line on stderr and exit code 1; bad
usage is click's exit code 2. The library below never sees click.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from pathlib import Path

import click

from . import cli_params
from .cli_params import param_options, settle
from .config import Paths, UserError, command_hint
from .text import pct


def sources(mirror: str | None):
    from .config import kaggle_input
    from .stages import Sources
    return Sources(kaggle_input=kaggle_input(), mirror=Path(mirror) if mirror else None)


def default_mirror(root: Path) -> str | None:
    """$KAGGLE_MIRROR, else ../shared/data beside the checkout when it exists."""
    if os.environ.get("KAGGLE_MIRROR"):
        return os.environ["KAGGLE_MIRROR"]
    shared = root.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


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
    from .parallel import ParallelConfig
    return ParallelConfig(jobs=kw.pop("jobs"), backend=kw.pop("backend"),
                          scheduler=kw.pop("scheduler") or "")


def cv_config(split_cfg, train_cfg, default_folds: int = 0):
    """The folds: K from --folds (FOLDS), rows and seed from the split's --max-train and
    --split-seed."""
    from .cv import CVConfig
    folds = train_cfg.folds if (train_cfg.folds or 0) >= 2 else default_folds
    return CVConfig(folds=folds, seed=split_cfg.seed, max_rows=split_cfg.max_train)


def _oof(m: dict) -> str:
    lo, hi = m["oof_accuracy_ci95"]
    return (f"out-of-fold accuracy {pct(m['oof_accuracy'])} (95% CI {pct(lo)}-{pct(hi)}, "
            f"{m['folds']} folds)")


def locked_ctx(f):
    """`locked` for a command that takes the click context."""
    @functools.wraps(f)
    def wrapper(ctx, *args, **kwargs):
        from .stages import project_lock
        with project_lock(ctx.obj["paths"]):
            out = f(ctx, *args, **kwargs)
            cli_params.save_settled(ctx, ctx.obj["paths"])  # only once the command succeeded
            return out
    return wrapper


def locked(f):
    """Run the command under the project lock so two runs never write the same outputs."""
    @functools.wraps(f)
    def wrapper(ctx_obj, *args, **kwargs):
        from .stages import project_lock
        with project_lock(ctx_obj["paths"]):
            return f(ctx_obj, *args, **kwargs)
    return wrapper


class UserFacingError(click.ClickException):
    """A UserError shown as one line on stderr; exit code 1 (130 when interrupted)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"digits: error: {self.message}", err=True)


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def nn_user_errors() -> tuple:
    """pipeline.nn's ModelFileError, a problem the user can fix like a UserError (pipeline.nn
    imports nothing from the package, so it has its own), once that module is loaded: the CLI
    starts without numpy, and an `except` clause evaluates this only when something is raised."""
    nn_model = sys.modules.get("pipeline.nn.model")
    return () if nn_model is None else (nn_model.ModelFileError,)


class DigitsGroup(click.Group):
    """Lists the commands in pipeline order, and turns the library's UserError (and Ctrl-C) into
    a message and exit code, not a traceback."""

    def list_commands(self, ctx):
        return list(self.commands)  # the order they are defined in: the pipeline's

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise UserFacingError(str(e)) from None
        except nn_user_errors() as e:
            raise UserFacingError(str(e)) from None
        except KeyboardInterrupt:
            raise UserFacingError("interrupted; finished outputs are intact, rerun to "
                                  "continue.", exit_code=130) from None
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            raise UserFacingError(f"no space left (or file too large){where}: "
                                  f"{os.strerror(e.errno)}. Earlier outputs are intact; free "
                                  f"some space and rerun.") from None


@click.group(cls=DigitsGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                "max_content_width": 100})
@click.version_option(package_name="digits-pipeline", prog_name="digits")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project directory holding data/ and submissions/. [default: $DIGITS_ROOT "
                   "or the current directory]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or stage log lines.")
@click.pass_context
def cli(ctx, root, quiet):
    """Kaggle Digit Recognizer, end to end, with a network written from scratch in NumPy.

    Stages, in order: download -> split -> normalize -> train -> predict -> validate -> report
    (-> upload). Each caches its result and logs whether it reused it or recomputed it and why;
    `run` does them all. Parameters persist in params.toml: an option you pass sticks
    (`digits params` shows them all).
    """
    paths = Paths.default(root)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="digits: %(message)s", stream=sys.stderr, force=True)
    # progress: a bar in a terminal, one line per epoch in a log or notebook, nothing with -q
    ctx.obj = {"paths": paths,
               "progress": None if quiet else ("bar" if sys.stderr.isatty() else "lines")}
    ctx.default_map = cli_params.make_defaults(cli)


MIRROR_OPTION = click.option(
    "--mirror", type=click.Path(file_okay=False), default=None,
    help="Directory holding digit-recognizer.zip, tried before the Kaggle API. "
         "[default: $KAGGLE_MIRROR, else ../shared/data when it exists]")



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
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    if (train_cfg.folds or 0) >= 2:
        metrics = stages.train_folds(ctx.obj["paths"], train_cfg,
                                     cv_config(split_cfg, train_cfg), par)
        click.echo(f"model: {ctx.obj['paths'].model} ({metrics['model']}, "
                   f"{metrics['folds']} fold models; {_oof(metrics)})")
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
              help="Upload even when this exact file was uploaded before. [make: FORCE=1]")
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
    paths = obj["paths"]
    entry = kaggle_submit.upload_submission(submission or paths.submission, message,
                                            ledger=paths.ledger, force=force,
                                            poll=kaggle_submit.Poll(timeout=timeout),
                                            progress=obj["progress"] is not None)
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
    stages.download(paths, sources(mirror or default_mirror(paths.root)), progress=progress)
    stages.split(paths, split_cfg)
    stages.normalize(paths)
    if (train_cfg.folds or 0) >= 2:
        metrics = stages.train_folds(paths, train_cfg, cv_config(split_cfg, train_cfg), par)
    else:
        metrics = stages.train(paths, train_cfg, progress=progress, resume=resume, par=par)
    stages.predict(paths, predict_cfg)
    _summary(stages.validate(paths))
    if with_report:
        out = stages.report(paths, predict_cfg)
        click.echo(f"report: {out['path'] / 'report.md'}")
    if metrics.get("oof_accuracy") is not None:  # the last line: the expected score
        from .cvstages import estimate_line
        click.echo(estimate_line(metrics))


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
    from . import stages
    from .cvstages import estimate_line
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    summary = stages.cv(ctx.obj["paths"], train_cfg, cv_config(split_cfg, train_cfg, 5), par)
    click.echo("folds: " + " ".join(pct(a) for a in summary["fold_accuracy"]))
    click.echo(f"cv: {ctx.obj['paths'].models / 'cv.json'}")
    click.echo(estimate_line(summary))


@cli.command(short_help="Cross-validate every combination of a grid, ranked.")
@click.option("--grid", required=True,
              help='The combinations: space-separated name=v1,v2 terms over the training '
                   'parameters, e.g. "lr=1e-3,3e-3 epochs=15,20" (layer sizes as '
                   'hidden=512x256,256). [make: GRID]')
@param_options("split", "train", "model")
@parallel_options
@click.pass_context
@locked_ctx
def sweep(ctx, grid, **kw):
    """Cross-validate every combination of --grid (all their members in parallel), print them
    ranked by out-of-fold accuracy, write data/models/sweep.json and add each to
    data/runs.jsonl."""
    from . import stages
    from .cv import parse_grid, sweep_table
    par = parallel_config(kw)
    split_cfg, train_cfg, _ = settle(ctx, kw, ctx.obj["paths"])
    try:
        points = parse_grid(grid, train_cfg)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--grid'") from None
    cv_cfg = cv_config(split_cfg, train_cfg, 5)
    results = stages.sweep(ctx.obj["paths"], train_cfg, cv_cfg, par, points)
    click.echo(sweep_table(results))
    click.echo(f"sweep: {ctx.obj['paths'].models / 'sweep.json'} ({len(points)} points, "
               f"{cv_cfg.folds} folds each)")


@cli.command(short_help="Show, or set, the parameters kept in params.toml.")
@param_options("split", "train", "model", "predict")
@click.option("--stamps", type=click.Path(file_okay=False, path_type=Path), default=None,
              hidden=True, help="Write one stamp file per stage (for the Makefile).")
@click.option("--mirror", default=None, hidden=True)
@click.option("--make-help", is_flag=True, hidden=True,
              help="Print the make variables (for `make help`).")
@click.pass_context
def params(ctx, stamps, mirror, make_help, **kw):
    """Show the parameters in effect (value and where it comes from: params.toml or the
    model's default); any option given sets that value in params.toml first."""
    from . import paramfile
    paths = ctx.obj["paths"]
    if make_help:
        click.echo(cli_params.make_help())
        return
    from .stages import project_lock
    with project_lock(paths):
        settle(ctx, kw, paths, save_now=True)
        values = paramfile.load(paths.params)
    if stamps is not None:
        lines = {**paramfile.stamps(values), "download": mirror or ""}
        for stage, line in lines.items():
            write_if_changed(stamps / f"{stage}.params", line + "\n")
        return
    click.echo(cli_params.params_table(paramfile.describe(values)))


@cli.command(short_help="Past training runs: model, accuracy, time, what changed.")
@click.option("-n", "--last", type=click.IntRange(min=1), default=None,
              help="Show only the last N runs.")
@click.pass_obj
def runs(obj, last):
    """Past training runs, oldest first: when, model, dev accuracy, training time and the
    options changed from their defaults (data/runs.jsonl)."""
    from .runs import read_runs, runs_table
    rows = read_runs(obj["paths"].runs)
    click.echo(runs_table(rows[-last:] if last else rows) if rows else
               f"no training runs recorded yet; run `{command_hint('train')}`")


@cli.command(short_help="Print a test digit as text art with the model's prediction.")
@click.argument("n", type=click.IntRange(min=1))
@click.option("--train", "from_train", is_flag=True,
              help="Show row N of train.csv, with its label, instead of test.csv.")
@click.pass_obj
def show(obj, n, from_train):
    """Print test digit N (its ImageId, from 1) as text art with the model's prediction and
    top-3 probabilities."""
    from . import glance
    click.echo(glance.describe(glance.show(obj["paths"], n, train=from_train)))


@cli.command("predict-image", short_help="Classify your own handwritten digit image.")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def predict_image(obj, image):
    """Classify your own handwritten digit: an image in any format Pillow reads (PNG, JPEG, BMP,
    GIF, TIFF, WebP, ...), of any size, dark-on-light or light-on-dark, a photo of paper too
    (its lighting and shadows are removed), prepared the way MNIST digits were (cropped to the
    ink, scaled into 20x20, centered by mass in 28x28)."""
    from . import glance
    result = glance.predict_image(obj["paths"], image)
    click.echo(glance.describe(result, top=10))
    top = float(result["proba"].max())
    if top < UNSURE:
        click.echo(f"digits: warning: the model is unsure (top probability {100 * top:.0f}%, "
                   f"under {100 * UNSURE:.0f}%). Check the text art above: a digit cut off, "
                   f"touching the edge, or several digits in one image read badly; crop it to "
                   f"one digit with some margin.", err=True)


UNSURE = 0.6  # predict-image warns when the top probability is below this


def _summary(result: dict) -> None:
    made_by = f" ({result['made_by']})" if result.get("made_by") else ""
    click.echo(f"{result['path']}: valid, {result['rows']} rows{made_by}, "
               f"sha256 {result['sha256'][:12]}")
    if result.get("note"):
        click.echo(f"note: {result['note']}")


def write_if_changed(path: Path, text: str) -> None:
    """A Makefile stamp: rewritten only when its text changes, so make sees what changed."""
    from .fileio import write_text
    if not path.exists() or path.read_text(errors="replace") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)


def main() -> None:
    """Entry point of `digits` and `python -m pipeline`."""
    cli(prog_name="digits")
