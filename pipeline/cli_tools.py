"""The `digits` tools around the stages: the parameters, the run history, a look at one digit,
your own image, and the gradient check."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli_params
from .cli import cli
from .cli_params import param_options, settle
from .config import UserError, command_hint
from .nn.layers import ACTIVATIONS
from .params import MODELS


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
        lines = paramfile.stamps(values)
        if mirror is not None or not (stamps / "download.params").exists():
            lines["download"] = mirror or ""  # no MIRROR given: the data there stays current
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


@cli.command(short_help="Check backpropagation against finite differences, layer by layer.")
@click.option("--model", "name", type=click.Choice(MODELS), default="cnn", show_default=True,
              help="Architecture to check, with its default hyperparameters (freshly initialized).")
@click.option("--batch", type=click.IntRange(4, 64), default=4, show_default=True,
              help="Random images in the batch (at least 4: BatchNorm over fewer rows is "
                   "nearly flat, so its gradient is too small to check).")
@click.option("--samples", type=click.IntRange(1, 1000), default=12, show_default=True,
              help="Entries compared per gradient tensor.")
@click.option("--activation", type=click.Choice(sorted(ACTIVATIONS)), default=None,
              help="Hidden activation to check instead of the model's own.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the weights, the batch, the dropout masks and the entries drawn.")
def gradcheck(name, batch, samples, activation, seed):
    """Check backpropagation against finite differences, layer by layer: float64, a small
    random batch, dropout with a fixed mask. Prints each gradient's relative error
    ||backprop - numeric|| / (||backprop|| + ||numeric||); exit 1 if any is 1e-6 or more.
    The same check the tests run (pipeline/nn/gradcheck.py)."""
    from .nn import gradcheck as gc
    hp = {"activation": activation} if activation else {}
    rows = gc.check_architecture(name, batch=batch, samples=samples, seed=seed, **hp)
    click.echo(gc.table(rows))
    culprit = gc.culprit(rows)
    if culprit:
        raise UserError(f"gradient check failed: {culprit}")


def write_if_changed(path: Path, text: str) -> None:
    """A Makefile stamp: rewritten only when its text changes, so make sees what changed."""
    from .fileio import write_text
    if not path.exists() or path.read_text(errors="replace") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)


