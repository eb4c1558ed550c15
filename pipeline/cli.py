"""The `digits` command: one thin click command per stage, plus `run` for all of them.

Each command packs its options into the frozen config objects of `config.py`, calls one function
of `stages.py` and prints one result line. A UserError anywhere becomes one line on stderr and
exit code 1; bad usage is click's exit code 2. The library below never sees click.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import sys
from pathlib import Path

import click

from .config import Paths, PredictConfig, SplitConfig, TrainConfig, UserError

MODELS = ("cnn", "mlp", "seed")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")


class Hidden(click.ParamType):
    """Hidden layer sizes written as "256,128"."""

    name = "SIZES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
        except ValueError:
            self.fail(f"expected comma-separated integers like 256,128, got {value!r}", param, ctx)
        if not sizes or min(sizes) <= 0:
            self.fail(f"hidden sizes must be > 0, got {list(sizes)}", param, ctx)
        return sizes


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which compare False to every bound)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


def positive(kind=float):
    return (FiniteRange(min=0, min_open=True) if kind is float
            else click.IntRange(min=1))


SPLIT_OPTIONS = [
    click.option("--dev-fraction", type=FiniteRange(0, 1, min_open=True, max_open=True),
                 default=SplitConfig.dev_fraction, show_default=True,
                 help="Share of train.csv held out (stratified) to measure accuracy."),
    click.option("--split-seed", type=int, default=SplitConfig.seed, show_default=True,
                 help="Seed of the train/dev shuffle."),
    click.option("--max-train", type=click.IntRange(min=0), default=SplitConfig.max_train,
                 show_default=True, help="Train on at most this many rows (stratified), for "
                                         "quick experiments; 0 = all."),
]

TRAIN_OPTIONS = [
    click.option("--model", type=click.Choice(MODELS), default=TrainConfig.model,
                 show_default=True, help="Network: cnn (best), mlp, or seed (784-10-10 baseline)."),
    click.option("--epochs", type=positive(int), default=None,
                 help="Training epochs (iterations for `seed`). [default: the model's own]"),
    click.option("--batch-size", type=positive(int), default=None,
                 help="Mini-batch size. [default: the model's own]"),
    click.option("--lr", type=positive(), default=None,
                 help="Peak learning rate, > 0. [default: the model's own]"),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                 help="Optimizer. [default: the model's own]"),
    click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
                 help="Learning-rate schedule. [default: the model's own]"),
    click.option("--weight-decay", type=FiniteRange(min=0), default=None,
                 help="Decoupled weight decay, >= 0. [default: the model's own]"),
    click.option("--hidden", type=Hidden(), default=None,
                 help="MLP hidden layer sizes, e.g. 256,128. [default: the model's own]"),
    click.option("--activation", type=click.Choice(ACTIVATIONS), default=None,
                 help="MLP activation. [default: the model's own]"),
    click.option("--dropout", type=FiniteRange(0, 1, max_open=True), default=None,
                 help="Dropout rate in [0, 1). [default: the model's own]"),
    click.option("--label-smoothing", type=FiniteRange(0, 1, max_open=True), default=None,
                 help="Label smoothing in [0, 1). [default: the model's own]"),
    click.option("--augment", type=str, default=None,
                 help='Augmentation: "none", "default" or e.g. "shift=2,rotate=10,zoom=0.1,'
                      'elastic=0". [default: the model\'s own]'),
    click.option("--patience", type=click.IntRange(min=0), default=TrainConfig.patience,
                 show_default=True, help="Stop after this many epochs without dev improvement "
                                         "(0: never stop early)."),
    click.option("--refit/--no-refit", default=TrainConfig.refit, show_default=True,
                 help="Retrain on all labelled rows for the chosen number of epochs."),
    click.option("--seed", type=int, default=TrainConfig.seed, show_default=True,
                 help="Seed of initialization, shuffling and augmentation."),
    click.option("--resume/--no-resume", default=True, show_default=True,
                 help="Continue an interrupted training from its last epoch checkpoint (the "
                      "result equals an uninterrupted run); --no-resume starts afresh."),
    click.option("--ensemble", type=positive(int), default=TrainConfig.ensemble,
                 show_default=True, help="Train this many models (seeds seed, seed+1, ...) "
                                         "and average their probabilities."),
]

PREDICT_OPTIONS = [
    click.option("--predict-batch-size", type=positive(int), default=PredictConfig.batch_size,
                 show_default=True, help="Rows per forward pass at prediction (speed/memory)."),
    click.option("--tta/--no-tta", default=PredictConfig.tta, show_default=True,
                 help="Test-time augmentation: average over shifted copies of each image."),
]


def options(opts):
    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def split_config(kw) -> SplitConfig:
    return SplitConfig(dev_fraction=kw["dev_fraction"], seed=kw["split_seed"],
                       max_train=kw["max_train"])


def train_config(kw) -> TrainConfig:
    defaults = {"epochs": 0, "batch_size": 0, "lr": 0.0, "optimizer": "", "schedule": "",
                "weight_decay": -1.0, "hidden": (), "activation": "", "dropout": -1.0,
                "label_smoothing": -1.0, "augment": ""}
    values = {k: (defaults[k] if kw[k] is None else kw[k]) for k in defaults}
    if values["augment"]:
        _check_augment(values["augment"])
    return TrainConfig(model=kw["model"], patience=kw["patience"], refit=kw["refit"],
                       seed=kw["seed"], ensemble=kw["ensemble"], **values)


def _check_augment(spec: str) -> None:
    from .nn.augment import parse_augment
    try:
        parse_augment(spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--augment'") from None


def predict_config(kw) -> PredictConfig:
    return PredictConfig(batch_size=kw["predict_batch_size"], tta=kw["tta"])


def sources(mirror: str | None):
    from .stages import Sources
    return Sources(mirror=Path(mirror) if mirror else None)


def default_mirror(root: Path) -> str | None:
    """$KAGGLE_MIRROR, else ../shared/data beside the checkout when it exists."""
    if os.environ.get("KAGGLE_MIRROR"):
        return os.environ["KAGGLE_MIRROR"]
    shared = root.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


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


class DigitsGroup(click.Group):
    """Turns the library's UserError (and Ctrl-C) into a message and exit code, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
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
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project directory holding data/ and submissions/. [default: $DIGITS_ROOT "
                   "or the current directory]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or stage log lines.")
@click.pass_context
def cli(ctx, root, quiet):
    """Kaggle Digit Recognizer, end to end, with a network written from scratch in NumPy.

    Stages: download -> split -> normalize -> train -> predict -> validate. Each caches its
    result and logs whether it reused it or recomputed it and why; `run` does them all.
    """
    paths = Paths(root.resolve()) if root else Paths.default()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="digits: %(message)s", stream=sys.stderr, force=True)
    ctx.obj = {"paths": paths, "progress": not quiet and sys.stderr.isatty()}


MIRROR_OPTION = click.option(
    "--mirror", type=click.Path(file_okay=False), default=None,
    help="Directory holding digit-recognizer.zip, tried before the Kaggle API. "
         "[default: $KAGGLE_MIRROR, else ../shared/data when it exists]")


@cli.command()
@MIRROR_OPTION
@click.pass_obj
@locked
def download(obj, mirror):
    """Fetch and check the competition data; parse it into uint8 arrays."""
    from . import stages
    paths = obj["paths"]
    out = stages.download(paths, sources(mirror or default_mirror(paths.root)),
                          progress=obj["progress"])
    click.echo(f"data: {out}")


@cli.command()
@options(SPLIT_OPTIONS)
@click.pass_obj
@locked
def split(obj, **kw):
    """Split train.csv into train and dev rows (seeded, stratified by label)."""
    from . import stages
    click.echo(f"split: {stages.split(obj['paths'], split_config(kw))}")


@cli.command()
@click.pass_obj
@locked
def normalize(obj):
    """Fit the pixel normalization on the train rows only."""
    from . import stages
    click.echo(f"normalizer: {stages.normalize(obj['paths'])}")


@cli.command()
@options(TRAIN_OPTIONS)
@click.pass_obj
@locked
def train(obj, **kw):
    """Train the network (or an ensemble) and save weights, history and metrics."""
    from . import stages
    metrics = stages.train(obj["paths"], train_config(kw), progress=obj["progress"],
                           resume=kw["resume"])
    click.echo(f"model: {obj['paths'].model} ({metrics['model']}, dev accuracy "
               f"{_pct(metrics['dev_accuracy'])})")


@cli.command()
@options(PREDICT_OPTIONS)
@click.pass_obj
@locked
def predict(obj, **kw):
    """Label the 28000 test rows and write a validated submission.csv."""
    from . import stages
    out = stages.predict(obj["paths"], predict_config(kw))
    click.echo(f"submission: {out['path']} ({out['rows']} rows)")


@cli.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def validate(obj, path):
    """Check a submission file (default: submissions/submission.csv) is one Kaggle accepts."""
    from . import stages
    _summary(stages.validate(obj["paths"], path))


@cli.command()
@click.option("-m", "--message", required=True,
              help="Description of this submission, shown on Kaggle and kept in the ledger.")
@click.option("--force", is_flag=True,
              help="Upload even when this exact file was uploaded before.")
@click.option("--timeout", type=positive(), default=600.0, show_default=True,
              help="Seconds to wait for Kaggle's score before giving up waiting.")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
@locked
def upload(obj, message, force, timeout, path):
    """Validate a submission (default: submissions/submission.csv), upload it to Kaggle, wait
    for its public score and record it in submissions/ledger.jsonl."""
    from . import kaggle_io
    paths = obj["paths"]
    entry = kaggle_io.upload_submission(path or paths.submission, message, ledger=paths.ledger,
                                        force=force, poll=kaggle_io.Poll(timeout=timeout),
                                        progress=obj["progress"])
    click.echo(f"public score: {entry['public_score']} (submission {entry['ref']}, "
               f"{entry['file']})")


@cli.command()
@click.option("--offline", is_flag=True, help="Show the ledger alone, without asking Kaggle.")
@click.pass_obj
def submissions(obj, offline):
    """Uploaded submissions, newest first: the ledger joined with Kaggle's status and score."""
    from . import kaggle_io
    rows = kaggle_io.list_submissions(obj["paths"].ledger, remote=not offline)
    click.echo(kaggle_io.submissions_table(rows) if rows else "no submissions yet")


@cli.command()
@MIRROR_OPTION
@options(SPLIT_OPTIONS + TRAIN_OPTIONS + PREDICT_OPTIONS)
@click.option("--report/--no-report", "with_report", default=True, show_default=True,
              help="End with the report stage (figures and report.md under data/reports).")
@click.pass_obj
@locked
def run(obj, mirror, with_report, **kw):
    """Run every stage in order (each reused from cache when nothing changed)."""
    from . import stages
    paths = obj["paths"]
    train_cfg = train_config(kw)  # checked before any work starts
    stages.download(paths, sources(mirror or default_mirror(paths.root)), progress=obj["progress"])
    stages.split(paths, split_config(kw))
    stages.normalize(paths)
    stages.train(paths, train_cfg, progress=obj["progress"], resume=kw["resume"])
    stages.predict(paths, predict_config(kw))
    _summary(stages.validate(paths))
    if with_report:
        out = stages.report(paths, predict_config(kw))
        click.echo(f"report: {out['path'] / 'report.md'}")


@cli.command()
@options(PREDICT_OPTIONS)
@click.pass_obj
@locked
def report(obj, **kw):
    """Write data/reports/<run>/: learning curves, dev confusion matrix, the most confident
    mistakes, what the first layer learned, test class shares, and a report.md tying them to the
    run's parameters and metrics. Reused (quick) when the current model already has one."""
    from . import stages
    out = stages.report(obj["paths"], predict_config(kw))
    click.echo(f"report: {out['path'] / 'report.md'}")


@cli.command()
@click.option("-n", "--last", type=click.IntRange(min=1), default=None,
              help="Show only the last N runs.")
@click.pass_obj
def runs(obj, last):
    """Past training runs, oldest first: when, model, dev accuracy, training time and the
    options changed from their defaults (data/runs.jsonl)."""
    from .report import read_runs, runs_table
    rows = read_runs(obj["paths"].runs)
    click.echo(runs_table(rows[-last:] if last else rows) if rows else
               "no training runs recorded yet; run `make train`")


@cli.command()
@click.argument("n", type=click.IntRange(min=1))
@click.option("--train", "from_train", is_flag=True,
              help="Show row N of train.csv, with its label, instead of test.csv.")
@click.option("--activations", is_flag=True,
              help="Also print what each hidden layer makes of the digit, and draw it (with the "
                   "first-layer weights of an MLP's most responsive units) in "
                   "data/reports/activations-<test|train>-N.png.")
@click.pass_obj
def show(obj, n, from_train, activations):
    """Print test digit N (its ImageId, from 1) as text art with the model's prediction and
    top-3 probabilities."""
    from . import glance
    result = glance.show(obj["paths"], n, train=from_train, layers=activations)
    click.echo(glance.describe(result))
    if activations:
        click.echo(glance.describe_layers(result))
        png = obj["paths"].reports / f"activations-{'train' if from_train else 'test'}-{n}.png"
        click.echo(f"figure: {glance.draw_layers(result, png)}")


@cli.command("predict-image")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def predict_image(obj, image):
    """Classify your own handwritten digit: a PNG of any size, dark-on-light or light-on-dark,
    prepared the way MNIST digits were (grayscale, cropped, scaled into 20x20, centered by mass
    in 28x28)."""
    from . import glance
    click.echo(glance.describe(glance.predict_image(obj["paths"], image), top=10))


@cli.command()
@click.option("--model", "name", type=click.Choice(MODELS), default="cnn", show_default=True,
              help="Architecture to check, with its default hyperparameters (freshly initialized).")
@click.option("--batch", type=click.IntRange(4, 64), default=4, show_default=True,
              help="Random images in the batch (at least 4: BatchNorm over fewer rows is "
                   "nearly flat, so its gradient is too small to check).")
@click.option("--samples", type=click.IntRange(1, 1000), default=12, show_default=True,
              help="Entries compared per gradient tensor.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the weights, the batch, the dropout masks and the entries drawn.")
def gradcheck(name, batch, samples, seed):
    """Check backpropagation against finite differences, layer by layer: float64, a small
    random batch, dropout with a fixed mask. Prints each gradient's relative error
    ||backprop - numeric|| / (||backprop|| + ||numeric||); exit 1 if any is 1e-6 or more.
    The same check the tests run (pipeline/nn/gradcheck.py)."""
    from .nn import gradcheck as gc
    rows = gc.check_architecture(name, batch=batch, samples=samples, seed=seed)
    click.echo(gc.table(rows))
    culprit = gc.culprit(rows)
    if culprit:
        raise UserError(f"gradient check failed: {culprit}")


def _summary(result: dict) -> None:
    model = f" ({result['model']})" if result.get("model") else ""
    click.echo(f"{result['path']}: valid, {result['rows']} rows, dev accuracy "
               f"{_pct(result['dev_accuracy'])}{model}, sha256 {result['sha256'][:12]}")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def main() -> None:
    """Entry point of `digits` and `python -m pipeline`."""
    cli(prog_name="digits")
