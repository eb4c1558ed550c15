"""A run's report: a folder of figures, a `report.md` that ties them to the run's parameters and
metrics, and a `metrics.json`. The metrics themselves are `metrics.py`'s, the run history
`runs.py`'s.

The folder is built under a temporary name and renamed into place, so a report is whole or
absent. The figures themselves are drawn by `figures.py`; which files feed a report, and when an
existing one is reused, is `stages.report`'s business.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import IMAGE_SIDE, N_CLASSES
from .metrics import confident_mistakes, confusion_matrix, dev_metrics, per_class
from .params import applies, section
from .runs import _duration, _short, run_name, utc_now
from .text import pct as _pct

KEY_FILE = ".report-key.json"  # what a report was made from; a match means it can be reused
LATEST = "latest"  # data/reports/latest: a symlink to the newest report
N_UNITS = 64  # first-layer units or filters shown at most


# ------------------------------------------------------------------------ what the network learned


def first_layer(model) -> tuple[str, int] | None:
    """("dense" | "conv", index in model.spec["layers"]) of the first layer with weights."""
    for i, ly in enumerate(model.spec["layers"]):
        if ly.get("type") in ("dense", "conv") and f"{ly['name']}.w" in model.params:
            return ly["type"], i
        if ly.get("type") in ("dense", "conv", "bn"):
            return None  # a first layer we do not know how to show
    return None


def truncated(model, stop: int):
    """A Model made of the layers [0, stop) of `model`, sharing its parameters."""
    from .nn import Model
    layers = model.spec["layers"][:stop]
    names = {ly["name"] for ly in layers}
    params = {k: v for k, v in model.params.items() if k.rsplit(".", 1)[0] in names}
    return Model({**model.spec, "layers": layers}, params)


def feature_maps(model, conv_index: int, x: np.ndarray) -> np.ndarray:
    """One normalized image x (28, 28, 1) -> (F, H, W) outputs of a conv layer after its
    BatchNorm (eval mode) and activation, at the conv's full resolution. A max pool inside the
    block, before or after the BatchNorm, is skipped: it only subsamples the same maps."""
    from .nn.layers import ACTIVATIONS, BN_EPS
    layers = model.spec["layers"]
    out = truncated(model, conv_index + 1).forward(x[None])[0]  # (H, W, F)
    for ly in layers[conv_index + 1:]:
        kind = ly.get("type")
        if kind == "pool":
            continue
        if kind == "bn":
            p = {k.rsplit(".", 1)[1]: v for k, v in model.params.items()
                 if k.rsplit(".", 1)[0] == ly["name"]}
            out = (out - p["mean"]) / np.sqrt(p["var"] + BN_EPS) * p["gamma"] + p["beta"]
            continue
        if kind == "act":
            out = ACTIVATIONS[ly["fn"]][0](out)[0]
        break
    return np.moveaxis(out, -1, 0).astype(np.float32)


# ------------------------------------------------------------------------ run names and history


# ------------------------------------------------------------------------ the run folder


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report is drawn from, already read from the project's files."""

    models: list  # the trained models (an ensemble when more than one)
    history: list[dict]  # history.json: one {"seed", "best_epoch", "epochs"} per member
    metrics: dict  # data/models/metrics.json, written by the train stage
    dev_pixels: np.ndarray  # (N_dev, 784) uint8, as in train.csv
    dev_x: np.ndarray  # (N_dev, 28, 28, 1) float32, normalized
    dev_y: np.ndarray  # (N_dev,) labels
    train_y: np.ndarray  # (42000,) every train.csv label
    test_proba: np.ndarray  # (28000, 10) probabilities on test.csv
    key: dict  # digests of the inputs; stored so an identical report is reused


def find_report(reports: Path, key: dict) -> Path | None:
    """The newest report folder made from exactly `key`, or None."""
    for folder in sorted(Path(reports).glob("*/"), reverse=True):
        if folder.is_symlink() or folder.name.startswith("."):
            continue
        try:
            if json.loads((folder / KEY_FILE).read_text(encoding="utf-8")) == key:
                return folder
        except (OSError, ValueError):
            continue
    return None


def write_report(reports: Path, inputs: ReportInputs, *, when: dt.datetime | None = None) -> Path:
    """Build data/reports/<run>/ in a temporary folder, rename it into place, point `latest` at
    it, and return its path."""
    from .predict import predict_proba
    start = time.perf_counter()
    when = when or utc_now()
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    name = run_name(inputs.metrics, when)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=reports))
    try:
        dev_proba = predict_proba(inputs.models, inputs.dev_x)  # (N_dev, 10)
        facts = _draw(tmp, inputs, dev_proba)
        seconds = round(time.perf_counter() - start, 2)
        run_metrics = {**inputs.metrics, "run": name,
                       "report": {**facts["json"], "seconds": seconds}}
        _write(tmp / "metrics.json", json.dumps(run_metrics, indent=2, sort_keys=True) + "\n")
        _write(tmp / "report.md", markdown(name, when, inputs, facts))
        _write(tmp / KEY_FILE, json.dumps(inputs.key, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        final = reports / name
        if final.exists():  # the same name within one second: keep both
            final = reports / f"{name}-{tmp.name.rsplit('.', 1)[-1]}"
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_latest(reports, final.name)
    return final


def point_latest(reports: Path, name: str) -> None:
    """Make data/reports/latest a symlink to `name`, replacing any older link atomically."""
    link = reports / LATEST
    tmp_link = reports / f".{LATEST}.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    os.symlink(name, tmp_link)
    os.replace(tmp_link, link)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _draw(folder: Path, inputs: ReportInputs, dev_proba: np.ndarray) -> dict:
    """Draw every figure into `folder`; return the facts report.md and metrics.json state."""
    from . import figures
    y = np.asarray(inputs.dev_y, np.int64)
    pred = dev_proba.argmax(axis=1)
    cm = confusion_matrix(y, pred)
    pc = per_class(cm)
    files = {}

    full_batch = (inputs.metrics.get("hyperparameters") or {}).get("batch_size", 0) is None
    files["learning_curves"] = figures.learning_curves(
        inputs.history, folder / "learning_curves.png",
        xlabel="iteration (one full-batch gradient step)" if full_batch else "epoch")
    files["confusion"] = figures.confusion(cm, pc["precision"], pc["recall"],
                                           folder / "confusion.png")
    wrong = confident_mistakes(y, dev_proba)
    titles = [f"true {y[i]} -> {pred[i]}\n{100 * dev_proba[i, pred[i]]:.0f}%" for i in wrong]
    files["mistakes"] = figures.digit_grid(
        inputs.dev_pixels[wrong], titles, folder / "mistakes.png",
        title=f"the {len(wrong)} most confidently wrong dev digits (of {int((pred != y).sum())})")
    files.update(_draw_learned(folder, inputs))
    from .glance import first_dense_weights, hidden_layers  # what each layer makes of one digit
    files["activations"] = figures.activations(
        inputs.dev_pixels[0], hidden_layers(inputs.models[0], inputs.dev_x[0]),
        first_dense_weights(inputs.models[0]), folder / "activations.png",
        title=f"inside the network: dev digit 0 (a {int(inputs.dev_y[0])})")

    train_share = np.bincount(inputs.train_y, minlength=N_CLASSES) / len(inputs.train_y)
    test_pred = inputs.test_proba.argmax(axis=1)
    test_share = np.bincount(test_pred, minlength=N_CLASSES) / max(len(test_pred), 1)
    files["class_distribution"] = figures.class_distribution(
        train_share, test_share, folder / "class_distribution.png")

    off = cm - np.diag(np.diag(cm))
    pairs = sorted(((int(off[i, j]), i, j) for i in range(N_CLASSES) for j in range(N_CLASSES)
                    if off[i, j]), reverse=True)[:3]
    return {
        "files": {k: Path(v).name for k, v in files.items()},
        "cm": cm, "per_class": pc, "dev_accuracy": float(np.mean(pred == y)),
        "dev_loss": dev_metrics(y, dev_proba)["dev_loss"], "pairs": pairs,
        "n_wrong": int((pred != y).sum()), "train_share": train_share, "test_share": test_share,
        "json": {"dev_size": int(len(y)), "dev_accuracy": float(np.mean(pred == y)),
                 "confusion_matrix": cm.tolist(),
                 "test_prediction_share": [round(float(s), 6) for s in test_share],
                 "train_label_share": [round(float(s), 6) for s in train_share],
                 "figures": sorted(Path(v).name for v in files.values())},
    }


def _draw_learned(folder: Path, inputs: ReportInputs) -> dict:
    """First-layer weights of a dense network; filters and one example's feature maps of a CNN."""
    from . import figures
    model = inputs.models[0]
    found = first_layer(model)
    if found is None:
        return {}
    kind, i = found
    ly = model.spec["layers"][i]
    w = np.asarray(model.params[f"{ly['name']}.w"])
    if kind == "dense":
        if w.shape[0] != IMAGE_SIDE * IMAGE_SIDE:
            return {}
        units = w[:, :N_UNITS].T.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)  # (n, 28, 28)
        return {"weights": figures.tiles(
            units, folder / "weights.png", name="weights",
            title=f"first-layer weights of {min(N_UNITS, w.shape[1])} of {w.shape[1]} hidden "
                  f"units as 28x28 images (red +, blue -)")}
    filters = np.moveaxis(w.mean(axis=2), -1, 0)[:N_UNITS]  # (F, k, k), averaged over inputs
    maps = feature_maps(model, i, inputs.dev_x[0])[:N_UNITS]  # (F, H, W)
    return {
        "filters": figures.tiles(filters, folder / "filters.png", name="filters",
                                 title=f"first-layer {w.shape[0]}x{w.shape[1]} conv filters "
                                       f"({w.shape[-1]}; red +, blue -)"),
        "feature_maps": figures.tiles(maps, folder / "feature_maps.png", name="feature_maps",
                                      diverging=False,
                                      title=f"what those filters see in dev digit 0 "
                                            f"(a {int(inputs.dev_y[0])}), after the activation"),
    }


# ------------------------------------------------------------------------ report.md


def markdown(name: str, when: dt.datetime, inputs: ReportInputs, facts: dict) -> str:
    m, files = inputs.metrics, facts["files"]
    hp = m.get("hyperparameters") or {}
    params = m.get("params", {})
    best = [h.get("best_epoch") for h in inputs.history]
    n_epochs = [len(h.get("epochs", [])) for h in inputs.history]
    epoch_secs = [r.get("seconds", 0) for h in inputs.history for r in h.get("epochs", [])]
    out = [f"# Run {name}", "",
           f"A **{m.get('model')}** network ({_n_params(inputs.models[0]):,} parameters"
           f"{f', ensemble of {len(inputs.models)}' if len(inputs.models) > 1 else ''}), "
           f"reported {when:%Y-%m-%d %H:%M} UTC. "
           f"Dev accuracy **{_pct(m.get('dev_accuracy'))}** on {facts['json']['dev_size']} "
           f"held-out train.csv rows; {facts['n_wrong']} dev digits wrong.", ""]
    if params.get("refit"):
        out += ["> This model was refit on train + dev rows, so it has seen the dev digits: the "
                "figures below that use dev rows flatter it. The dev accuracy and loss in the "
                "metrics table come from the first fit, before refitting.", ""]
    if m.get("folds"):  # a fold ensemble (cvstages.train_folds): its estimate is out-of-fold
        lo, hi = m["oof_accuracy_ci95"]
        out += [f"> {m['folds']} fold models, each trained on all labelled rows but its own fold: "
                "together they have seen every dev digit, so the dev figures below flatter "
                f"them. The expected score is the out-of-fold accuracy, "
                f"**{_pct(m['oof_accuracy'])}** (95% CI {_pct(lo)}-{_pct(hi)}, "
                "`data/models/cv.json`).", ""]
    out += ["## Metrics", "", "| metric | value |", "| --- | --- |",
            f"| dev accuracy | {_pct(m.get('dev_accuracy'))} |",
            f"| dev loss (cross-entropy) | {_num(m.get('dev_loss', facts['dev_loss']))} |",
            f"| dev rows | {facts['json']['dev_size']} |",
            f"| epoch kept / epochs run | {_join(best)} / {_join(n_epochs)} |",
            f"| training time | {_duration(m.get('train_seconds') or 0)} "
            f"({_duration(np.mean(epoch_secs) if epoch_secs else 0)} per epoch) |",
            f"| params digest | `{m.get('params_digest')}` |", ""]
    if len(m.get("members", [])) > 1:
        out += ["| member seed | dev accuracy | epoch kept |", "| --- | --- | --- |"]
        out += [f"| {x.get('seed')} | {_pct(x.get('dev_accuracy'))} | {x.get('best_epoch')} |"
                for x in m["members"]]
        out += [""]
    out += ["## Parameters", "", "Resolved settings: the model's defaults, or the value set in "
            "params.toml, a make variable or an option (`digits params` explains each):", "",
            "| parameter | value | set by |", "| --- | --- | --- |"]
    changed = m.get("params_changed") or {}
    model = m.get("model") or "cnn"
    for p in section("train") + section("model"):
        if p.name in hp or p.name in params:
            if applies(p, model) and p.name != "model":
                value = hp.get(p.name, params.get(p.name))
                by = "set" if p.name in changed else "default"
                out.append(f"| {p.name} | `{_short(value)}` | {by} |")
    out += ["", "## Learning curves", "", f"![learning curves]({files['learning_curves']})", "",
            _curve_note(inputs.history)
            + (" This model is trained full-batch: each epoch is one gradient step over all "
               "train rows, so the curves are its cost and accuracy per iteration."
               if hp.get("batch_size", 0) is None else ""), "",
            "## Confusion matrix (dev)", "", f"![confusion matrix]({files['confusion']})", "",
            "Rows are the true digit, columns the prediction. " + _pairs_note(facts["pairs"]), "",
            "| class | precision | recall | dev rows |", "| --- | --- | --- | --- |"]
    pc = facts["per_class"]
    out += [f"| {k} | {_pct(pc['precision'][k])} | {_pct(pc['recall'][k])} | {pc['support'][k]} |"
            for k in range(N_CLASSES)]  # in percent, as the figure and every accuracy
    out += ["", "## Most confident mistakes (dev)", "", f"![mistakes]({files['mistakes']})", "",
            "Each digit shows its true label, the prediction and the probability the network "
            "gave it. Some are mislabelled or ambiguous; the rest are what to fix next.", ""]
    out += ["## What the network learned", ""]
    if "weights" in files:
        out += [f"![first-layer weights]({files['weights']})", "",
                "Each tile is one first-layer unit's 784 weights drawn as a 28x28 image: the "
                "pixels that push it on (red) or off (blue). A wide layer trained for a few "
                "epochs moves little from its random start, so tiles that still look like noise "
                "are expected; strokes and blobs emerge with longer training or fewer units.", ""]
    elif "filters" in files:
        out += [f"![conv filters]({files['filters']})", "",
                f"![feature maps]({files['feature_maps']})", "",
                "The first convolution's filters (each looks at a small patch), and the maps "
                "they produce for one dev digit: edges and strokes in different directions.", ""]
    else:
        out += ["(This model's first layer has no image-shaped weights to show.)", ""]
    if "activations" in files:
        out += [f"![activations]({files['activations']})", "",
                "One dev digit through the network: the output probabilities, each hidden "
                "layer's responses (the strongest feature maps of a conv layer) and, for a dense "
                "first layer, the weights of its most responsive units. `digits show N "
                "--activations` draws the same for any digit; docs/how-it-works.md explains "
                "each layer.", ""]
    test = facts["test_share"]
    gap = int(np.argmax(np.abs(test - facts["train_share"])))
    out += ["## Predictions on test.csv", "",
            f"![class distribution]({files['class_distribution']})", "",
            f"The share of each predicted digit on the {len(inputs.test_proba)} test rows next to "
            f"the train label shares; the largest gap is digit {gap} "
            f"({100 * test[gap]:.1f}% predicted vs {100 * facts['train_share'][gap]:.1f}% in "
            f"train). A large gap hints at a class the model over- or under-predicts.", "",
            "## Files", "", "- `metrics.json`: the numbers above, machine-readable "
            "(train-stage metrics plus this report's confusion matrix and class shares)", ""]
    return "\n".join(out)


def _curve_note(history: list[dict]) -> str:
    rows = history[0].get("epochs", []) if history else []
    if not rows:
        return "No epochs were recorded."
    last = rows[-1]
    note = (f"Kept epoch {history[0].get('best_epoch')} of {len(rows)}. "
            f"Last epoch: train loss {_num(last.get('train_loss'))}, "
            f"accuracy {_pct(last.get('train_acc'))}")
    if last.get("dev_loss") is not None:
        note += f"; dev loss {_num(last['dev_loss'])}, accuracy {_pct(last.get('dev_acc'))}. "
        if last["dev_loss"] < last.get("train_loss", 0):
            note += ("Dev loss below train loss is normal here: train figures are measured on "
                     "augmented batches with dropout on, which are harder than the dev rows. ")
        note += ("Dev loss rising while train loss falls means overfitting; both still falling "
                 "means more epochs would help")
    return note if note.endswith(".") else note + "."


def _pairs_note(pairs) -> str:
    if not pairs:
        return "No dev digit was misclassified."
    return "Most frequent confusions: " + ", ".join(
        f"{i} taken for {j} ({n}x)" for n, i, j in pairs) + "."


def _n_params(model) -> int:
    return int(getattr(model, "theta", np.zeros(0)).size)


def _num(x) -> str:
    return "n/a" if x is None else f"{float(x):.4f}"


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


__all__ = ["ReportInputs", "feature_maps", "find_report", "first_layer", "markdown",
           "point_latest", "write_report"]
