"""report.md: a run's figures tied to its parameters and metrics, as Markdown text."""

from __future__ import annotations

import datetime as dt

import numpy as np

from .config import N_CLASSES
from .params import applies, section
from .runs import _duration, _short
from .text import pct as _pct


def markdown(name: str, when: dt.datetime, inputs, facts: dict) -> str:
    """report.md of `inputs` (a report.ReportInputs) and the figures' `facts`."""
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
    if hp.get("ema") or params.get("ema"):
        out += [f"> Each model is the moving average of its weights (ema "
                f"{hp.get('ema') or params.get('ema')}) at the end of training, with BatchNorm "
                "statistics recomputed over its train rows; the per-epoch curves are of the "
                "trained weights, not of the average.", ""]
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
