"""Reports: figures from a small trained run are real images, the confusion matrix agrees with
the predictions, report.md links files that exist, reports are reused; `digits runs`, `show`,
and `predict-image` on a digit rendered from a dev example (inverted, on a larger canvas)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_competition_zip

from pipeline import figures, metrics, report
from pipeline.cli import cli
from pipeline.config import Paths
from pipeline.imageio import ImageError, text_art, to_gray, to_mnist
from pipeline.nn import Model, load_models
from pipeline.nn.models import DEFAULTS, build_spec
from pipeline.predict import predict_proba
from pipeline.preprocess import normalize

TRAIN = ["--model", "mlp", "--epochs", "2", "--hidden", "32", "--batch-size", "32",
         "--augment", "none"]


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--root", str(root), *args], catch_exceptions=False)


def run_folder(root: Path) -> Path:
    return (root / "data" / "reports" / "latest").resolve()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny MLP trained on the synthetic zip, with its report written."""
    root = tmp_path_factory.mktemp("project")
    src = make_competition_zip(root.parent / f"{root.name}-src" / "digit-recognizer.zip",
                               n_train=300, n_test=60)
    assert invoke(root, "run", "--mirror", str(src.parent), *TRAIN).exit_code == 0
    result = invoke(root, "report")
    assert result.exit_code == 0, result.output
    return root


def dev_rows(root: Path):
    paths = Paths(root)
    parsed = np.load(paths.parsed)
    dev_idx = np.load(paths.split)["dev_idx"]
    return parsed["train_x"][dev_idx], parsed["train_y"][dev_idx]


def test_figures_are_real_images_of_the_expected_size(project):
    # every figure decodes as a PNG of its fixed size and is not blank
    folder = run_folder(project)
    pngs = sorted(folder.glob("*.png"))
    assert {p.stem for p in pngs} == {"learning_curves", "confusion", "mistakes", "weights",
                                      "class_distribution", "activations"}
    for png in pngs:
        img = mpimg.imread(png)  # (H, W, 4) float in [0, 1]
        w, h = figures.FIGSIZE[png.stem]
        assert img.shape[:2] == (h * figures.DPI, w * figures.DPI), png.name
        gray = img[:, :, :3].mean(axis=2)
        assert gray.std() > 0.02 and (gray < 0.5).mean() > 0.001, f"{png.name} looks blank"


def test_confusion_matrix_sums_to_dev_size_and_agrees_with_predictions(project):
    # the report's confusion matrix counts every dev row once and matches the model's predictions
    pixels, y = dev_rows(project)
    paths = Paths(project)
    saved = json.loads((run_folder(project) / "metrics.json").read_text())
    cm = np.array(saved["report"]["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == len(y) == saved["report"]["dev_size"]
    x = normalize(pixels, json.loads(paths.normalizer.read_text()))
    pred = predict_proba(load_models(paths.model), x).argmax(axis=1)
    assert np.array_equal(cm, metrics.confusion_matrix(y, pred))
    assert np.array_equal(cm.sum(axis=1), np.bincount(y, minlength=10))
    # the train stage's per-class figures come from the same predictions (no refit here)
    recall = [c["recall"] for c in saved["per_class"]]
    assert np.allclose(recall, metrics.per_class(cm)["recall"], atol=1e-6)
    assert saved["dev_loss"] > 0 and saved["hyperparameters"]["hidden"] == [32]


def test_report_md_links_files_that_exist(project):
    # report.md references every figure, each reference names a file in the run folder
    folder = run_folder(project)
    text = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert linked and all((folder / f).is_file() for f in linked)
    assert {p.name for p in folder.glob("*.png")} == set(linked)
    assert (folder / "metrics.json").is_file() and "`metrics.json`" in text
    assert "dev accuracy" in text and "| hidden | `32` | set |" in text


def test_report_is_reused_when_nothing_changed(project):
    # a second `digits report` finds the report of the same model and draws nothing
    before = sorted(p.name for p in (project / "data" / "reports").iterdir())
    result = invoke(project, "report")
    assert result.exit_code == 0 and "report: reused" in result.output
    assert sorted(p.name for p in (project / "data" / "reports").iterdir()) == before
    assert run_folder(project).name in result.output


def test_run_history_has_one_line_per_computed_training(project):
    # training appends to data/runs.jsonl; a cache reuse does not; `digits runs` tables it
    lines = (project / "data" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 1
    run = json.loads(lines[0])
    assert run["model"] == "mlp" and run["params"]["epochs"] == 2 and run["members"] == [0]
    assert invoke(project, "train", *TRAIN).exit_code == 0  # reused from the cache
    assert len((project / "data" / "runs.jsonl").read_text().splitlines()) == 1
    table = invoke(project, "runs").output
    assert "mlp" in table and f"{100 * run['dev_accuracy']:.2f}%" in table
    assert "hidden=32" in table


@pytest.mark.parametrize("command", ["report", "runs", "show", "predict-image"])
def test_commands_have_help(command, tmp_path):
    # each reporting command documents itself
    result = invoke(tmp_path, command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_runs_and_report_before_any_training(tmp_path):
    # with nothing trained, `runs` says so and `report` names the missing step (exit 1)
    assert "no training runs recorded yet" in invoke(tmp_path, "runs").output
    result = invoke(tmp_path, "report")
    assert result.exit_code == 1 and "digits train" in result.output


def test_show_prints_text_art_and_top3(project):
    # `show N` draws the digit in 28 text lines and names the prediction and 3 probabilities
    out = invoke(project, "show", "1").output.splitlines()
    assert out[-2].startswith("test row 1: predicted ") and out[-1].count("%") == 3
    train = invoke(project, "show", "3", "--train").output
    assert "labelled " in train and ("(right)" in train or "(WRONG)" in train)
    bad = invoke(project, "show", "61")
    assert bad.exit_code == 1 and "1..60" in bad.output


def test_failed_report_leaves_no_folder(project, monkeypatch):
    # an error while drawing leaves neither a half-written run folder nor its temporary one
    reports = project / "data" / "reports"
    before = sorted(p.name for p in reports.iterdir())
    inputs = report.ReportInputs(
        models=load_models(Paths(project).model),
        history=json.loads(Paths(project).history.read_text()), metrics={}, dev_pixels=None,
        dev_x=np.zeros((1, 28, 28, 1), np.float32), dev_y=np.zeros(1, int),
        train_y=np.zeros(1, int), test_proba=np.zeros((1, 10)), key={})
    def broken(*args, **kwargs):
        raise RuntimeError("the disk hiccuped")
    monkeypatch.setattr(figures, "confusion", broken)
    with pytest.raises(RuntimeError, match="hiccuped"):
        report.write_report(reports, inputs)
    assert sorted(p.name for p in reports.iterdir()) == before


def test_cnn_report_shows_filters_and_feature_maps(tmp_path):
    # a CNN's report draws its first conv filters and one example's feature maps
    spec = build_spec("cnn", {**DEFAULTS["cnn"], "plan": "6c5-p-fc8"})
    model = Model(spec, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 784)).astype(np.uint8)
    x = normalize(pixels, {"mean": 0.5, "std": 0.3})
    maps = report.feature_maps(model, 0, x[0])
    assert maps.shape == (6, 24, 24) and maps.min() >= 0  # after the ReLU, full resolution
    history = [{"seed": 0, "best_epoch": 1, "epochs": [
        {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "dev_loss": 1.1, "dev_acc": 0.4,
         "lr": 1e-3, "seconds": 1.0}]}]
    folder = report.write_report(tmp_path, report.ReportInputs(
        models=[model], history=history, metrics={"model": "cnn", "params_digest": "abc"},
        dev_pixels=pixels, dev_x=x, dev_y=np.arange(40) % 10, train_y=np.arange(100) % 10,
        test_proba=np.full((7, 10), 0.1), key={"k": 1}))
    for name in ("filters", "feature_maps", "activations"):
        img = mpimg.imread(folder / f"{name}.png")
        assert img.shape[:2] == tuple(figures.DPI * s for s in figures.FIGSIZE[name][::-1])
    assert "![feature maps](feature_maps.png)" in (folder / "report.md").read_text()
    assert report.find_report(tmp_path, {"k": 1}) == folder
    assert report.find_report(tmp_path, {"k": 2}) is None


# ---------------------------------------------------------------- a person's own digit


def mnist_like(seed=0) -> np.ndarray:
    """A (28, 28) uint8 stroke shaped like a handwritten 7, centered like MNIST."""
    img = np.zeros((28, 28))
    img[6:9, 8:21] = 255
    for r in range(8, 23):
        c = 20 - (r - 8) * 0.5
        img[r, int(c) - 1:int(c) + 2] = 255
    return img.astype(np.uint8)


def test_to_mnist_undoes_inversion_scaling_and_placement():
    # a digit, its inverse, and a 4x larger off-center copy all come back as the same 28x28
    img = mnist_like()
    ref = to_mnist(img / 255)
    dark_on_light = to_mnist(1 - img / 255)
    canvas = np.ones((180, 150))
    canvas[10:122, 30:142] = 1 - np.kron(img / 255, np.ones((4, 4)))
    for got in (dark_on_light, to_mnist(canvas)):
        assert np.abs(got.astype(int) - ref).mean() < 3
    ink_rows = np.flatnonzero(ref.any(axis=1))
    ink_cols = np.flatnonzero(ref.any(axis=0))
    assert max(len(ink_rows), len(ink_cols)) == 20  # scaled into a 20x20 box


def test_to_gray_composites_transparency_over_white():
    # a black stroke on a transparent background reads as dark ink on light paper
    rgba = np.zeros((30, 30, 4), np.float32)
    rgba[10:20, 14:16] = [0, 0, 0, 1]
    gray = to_gray(rgba)
    assert gray[0, 0] == 1.0 and gray[15, 15] == 0.0


def test_blank_image_is_a_user_error():
    # an image with no digit is refused with a message, not a crash
    with pytest.raises(ImageError, match="no digit"):
        to_mnist(np.full((50, 50), 0.8))


def test_text_art_is_28_lines():
    # text art shows ink as dense characters and background as spaces
    art = text_art(mnist_like()).split("\n")
    assert len(art) == 28 and "@@" in art[7] and art[0] == ""


@pytest.fixture(scope="module")
def real_project(tmp_path_factory, real_zip) -> Path:
    """A small MLP trained on a slice of the real competition data."""
    root = tmp_path_factory.mktemp("real")
    src = root.parent / f"{root.name}-src"
    src.mkdir()
    with zipfile.ZipFile(real_zip) as z, zipfile.ZipFile(src / "digit-recognizer.zip", "w") as out:
        for name, rows in (("train.csv", 4000), ("test.csv", 200),
                           ("sample_submission.csv", 200)):
            with z.open(name) as f:
                head = [line for _, line in zip(range(rows + 1), io.TextIOWrapper(f))]
            out.writestr(name, "".join(head))
    result = invoke(root, "run", "--mirror", str(src), "--model", "mlp", "--epochs", "4",
                    "--hidden", "128", "--augment", "none")
    assert result.exit_code == 0, result.output
    return root


def test_predict_image_matches_the_example_itself(real_project, tmp_path):
    # a dev digit saved as a PNG (dark on light, light on dark, 5x on a larger off-center
    # canvas) gets the label the model gives the example itself
    from pipeline.glance import classify
    pixels, _ = dev_rows(real_project)
    proba = classify(Paths(real_project), pixels)
    sure = np.flatnonzero(proba.max(axis=1) > 0.9)[:3]
    assert len(sure) == 3
    for i in sure:
        img = pixels[i].reshape(28, 28) / 255
        canvas = np.zeros((200, 170))
        canvas[30:170, 20:160] = np.kron(img, np.ones((5, 5)))
        for kind, picture in (("paper", 1 - img), ("screen", img), ("canvas", canvas)):
            png = tmp_path / f"{i}-{kind}.png"
            mpimg.imsave(png, picture, cmap="gray", vmin=0, vmax=1)
            result = invoke(real_project, "predict-image", str(png))
            assert result.exit_code == 0, result.output
            assert f"predicted {proba[i].argmax()}" in result.output, (kind, result.output)


def test_predict_image_errors_are_one_line(real_project, tmp_path):
    # a missing file and a file that is not an image are each a one-line error, exit 1
    assert invoke(real_project, "predict-image", str(tmp_path / "none.png")).exit_code == 1
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    result = invoke(real_project, "predict-image", str(bad))
    assert result.exit_code == 1 and "not an image" in result.output


# ---------------------------------------------------------------- inside the network


def test_show_activations_prints_each_hidden_layer_and_draws_them(project):
    # `show N --activations`: one line per hidden layer (the MLP's 32 units) and a real figure
    result = invoke(project, "show", "2", "--activations")
    assert result.exit_code == 0, result.output
    line = next(s for s in result.output.splitlines() if s.startswith("a1 (relu, 32 units)"))
    assert "above 0; strongest #" in line
    png = project / "data" / "reports" / "activations-test-2.png"
    assert f"figure: {png}" in result.output
    img = mpimg.imread(png)
    assert img.shape[:2] == tuple(figures.DPI * s for s in figures.FIGSIZE["activations"][::-1])


def test_hidden_layers_are_the_forward_pass_layer_by_layer():
    # each activation layer's output, chained through the rest, gives the model's probabilities;
    # the strongest units are the largest values and a dense first layer's weights are found
    from pipeline.glance import first_dense_weights, hidden_layers, strongest
    from pipeline.nn.losses import softmax
    for name, hp in (("mlp", {"hidden": (16, 8), "dropout": 0.2}), ("cnn", {"plan": "4c5-p-fc8"}),
                     ("seed", {})):
        model = Model(build_spec(name, {**DEFAULTS[name], **hp}), rng=np.random.default_rng(0))
        x = np.random.default_rng(1).standard_normal((1, 28, 28, 1)).astype(np.float32)
        layers = hidden_layers(model, x[0])
        acts = [ly for ly in model.spec["layers"] if ly["type"] == "act"]
        assert [d["name"] for d in layers] == [ly["name"] for ly in acts] + ["output"]
        np.testing.assert_allclose(layers[-1]["values"], softmax(model.forward(x))[0], rtol=1e-5)
        first = layers[0]["values"]
        assert (first.ndim == 3) == (name == "cnn")
        if first.ndim == 1:
            assert first[strongest(first, 3)].tolist() == sorted(first, reverse=True)[:3]
            assert first_dense_weights(model) is model.params["fc1.w"] or np.shares_memory(
                first_dense_weights(model), model.params["fc1.w"])
        else:
            assert first_dense_weights(model) is None


def test_full_batch_learning_curves_are_labelled_by_iteration(tmp_path, monkeypatch):
    # a seed-style (full-batch) run's curves are drawn per iteration, a mini-batch run's per epoch
    model = Model(build_spec("seed", DEFAULTS["seed"]), rng=np.random.default_rng(0))
    history = [{"seed": 0, "best_epoch": 3, "epochs": [
        {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "dev_loss": 2.1 / e,
         "dev_acc": 0.09 * e, "lr": 0.5, "seconds": 0.1} for e in range(1, 101)]}]
    labels, draw = [], figures.learning_curves

    def spy(*args, **kwargs):
        labels.append(kwargs.get("xlabel"))
        return draw(*args, **kwargs)

    monkeypatch.setattr(figures, "learning_curves", spy)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 784)).astype(np.uint8)
    for k, batch in enumerate((None, 128)):
        folder = report.write_report(tmp_path, report.ReportInputs(
            models=[model], history=history,
            metrics={"model": "seed", "hyperparameters": {"batch_size": batch}},
            dev_pixels=pixels, dev_x=normalize(pixels, {"mean": 0.5, "std": 0.3}),
            dev_y=np.arange(20) % 10, train_y=np.arange(50) % 10,
            test_proba=np.full((5, 10), 0.1), key={"k": k}))
        assert (folder / "activations.png").is_file() and (folder / "weights.png").is_file()
        full = "cost and accuracy per iteration" in (folder / "report.md").read_text()
        assert full == (batch is None)
    assert labels == ["iteration (one full-batch gradient step)", "epoch"]
