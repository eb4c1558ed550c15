"""The report's figures as PNG files, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain arrays and dicts, draws one figure of a fixed pixel size (FIGSIZE at
DPI, never cropped) and saves it to the path it is given. What to draw (which rows, which layer)
is decided in `report.py`; reading project files is not done here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import IMAGE_SIDE, N_CLASSES

DPI = 100
CAPTION_SIZE = 13  # points: the captions of digit grids, readable at the PNG's own size
FIGSIZE = {  # inches; at DPI these are the PNGs' pixel sizes (width x height / 100)
    "learning_curves": (11, 4),
    "confusion": (15, 5),
    "mistakes": (12, 7.2),
    "weights": (8, 8),
    "filters": (8, 4),
    "feature_maps": (8, 4),
    "class_distribution": (8, 4),
    "activations": (10, 8),  # rows share it: the digit, one per hidden layer, the weights
}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png")
    _pyplot().close(fig)
    return Path(path)


def _figure(name: str, *args, **kwargs):
    return _pyplot().subplots(*args, figsize=FIGSIZE[name], dpi=DPI, **kwargs)


def learning_curves(members: list[dict], path: Path, *, xlabel: str = "epoch") -> Path:
    """Train/dev loss and accuracy (%) per epoch, the learning rate on a second axis from 0.

    members: one {"seed", "best_epoch", "epochs": [{"epoch", "train_loss", "dev_loss",
    "train_acc", "dev_acc", "lr"}, ...]} per ensemble member (history.json). Epochs are whole
    numbers on the x axis however few there are (one epoch is one point, not a zoomed axis).
    """
    fig, (ax_loss, ax_acc) = _figure("learning_curves", 1, 2, layout="constrained")
    for i, m in enumerate(members):
        rows = m["epochs"]
        ep = [r["epoch"] for r in rows]
        tag = f" (seed {m['seed']})" if len(members) > 1 else ""
        alpha = 1.0 if i == 0 else 0.4
        dots = 4 if len(rows) <= 60 else 0  # hundreds of full-batch iterations: lines only
        for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "acc", 100)):
            ax.plot(ep, [scale * r[f"train_{key}"] for r in rows], "o-", color="C0",
                    alpha=alpha, label=f"train{tag}", markersize=dots)
            dev = [np.nan if r.get(f"dev_{key}") is None else scale * r[f"dev_{key}"]
                   for r in rows]
            if not np.all(np.isnan(dev)):
                ax.plot(ep, dev, "s-", color="C1", alpha=alpha, label=f"dev{tag}",
                        markersize=dots)
        if i == 0 and m.get("best_epoch"):
            for ax in (ax_loss, ax_acc):
                ax.axvline(m["best_epoch"], color="gray", linestyle=":", linewidth=1)
    last = max([r["epoch"] for m in members for r in m["epochs"]], default=1)
    for ax, title in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _epoch_axis(ax, last)
    rows = members[0]["epochs"]
    lr = [r["lr"] for r in rows]
    lr_ax = ax_loss.twinx()  # the learning rate on a second axis of the loss panel
    lr_ax.plot([r["epoch"] for r in rows], lr, "--", marker="^", color="C2", linewidth=1,
               markersize=4 if len(rows) <= 60 else 0, label="learning rate (end of epoch)")
    top = max(lr, default=0.0)
    lr_ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)  # from 0: no zoom into a flat line
    lr_ax.set_ylabel("learning rate", color="C2")
    lr_ax.tick_params(axis="y", colors="C2")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lines, labels = ax_loss.get_legend_handles_labels()
    lr_lines, lr_labels = lr_ax.get_legend_handles_labels()
    ax_loss.legend(lines + lr_lines, labels + lr_labels, fontsize=8, loc="upper right")
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    fig.suptitle("learning curves (dotted line: the epoch kept)")
    return _save(fig, path)


def _epoch_axis(ax, last: int) -> None:
    """Whole epochs 1..last on the x axis, half an epoch of margin either side."""
    from matplotlib.ticker import MaxNLocator
    ax.set_xlim(0.5, last + 0.5)
    if last <= 15:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))


def confusion(cm: np.ndarray, precision: np.ndarray, recall: np.ndarray, path: Path) -> Path:
    """Confusion matrix (rows true, columns predicted) as counts and row-normalized, and
    per-class precision and recall as bars."""
    fig, (ax_n, ax_r, ax_pr) = _figure("confusion", 1, 3, layout="constrained")
    row_sums = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    normalized = cm / row_sums  # (10, 10) share of each true class
    for ax, values, title, fmt in ((ax_n, cm, "counts", "{:d}"),
                                   (ax_r, 100 * normalized,
                                    "% of each true digit (recall on the diagonal)", "{:.1f}")):
        shown = np.log1p(cm) if values is cm else normalized  # log: the errors stay visible
        ax.imshow(shown, cmap="Blues")
        for (i, j), v in np.ndenumerate(values):
            if cm[i, j]:
                dark = shown[i, j] > 0.6 * shown.max()
                ax.text(j, i, fmt.format(int(v) if values is cm else float(v)), ha="center",
                        va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(N_CLASSES))
        ax.set_yticks(range(N_CLASSES))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    _precision_recall(ax_pr, 100 * np.asarray(precision), 100 * np.asarray(recall))
    fig.suptitle(f"dev confusion matrix ({int(cm.sum())} digits)")
    return _save(fig, path)


def _precision_recall(ax, precision: np.ndarray, recall: np.ndarray) -> None:
    """Per-class precision and recall (%) as bars. When all are high the axis starts near the
    lowest (else the differences vanish), and the cut is marked on the axis and in the title."""
    k = np.arange(N_CLASSES)
    ax.bar(k - 0.2, precision, width=0.4, label="precision")
    ax.bar(k + 0.2, recall, width=0.4, label="recall")
    low = float(min(np.min(precision), np.min(recall)))
    bottom = 0.0 if low < 50 else float(np.floor((low - 2) / 5) * 5)  # a round number below
    ax.set_ylim(bottom, 100)
    title = "per-class precision and recall (%)"
    if bottom > 0:
        title += f"\n(axis cut: starts at {bottom:.0f}%)"
        kw = {"transform": ax.transAxes, "color": "black", "clip_on": False, "linewidth": 1}
        for dy in (0.0, 0.025):  # a break mark on the left spine, where the axis is cut
            ax.plot([-0.025, 0.025], [dy - 0.01, dy + 0.01], **kw)
    ax.set_xticks(k)
    ax.set_xlabel("class")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)  # off the bars
    ax.grid(axis="y", alpha=0.3)


def digit_grid(images: np.ndarray, titles: list[str], path: Path, *, title: str,
               name: str = "mistakes", cols: int = 8) -> Path:
    """(n, 784) uint8 digits in a grid, each with its title; empty cells when n < rows*cols."""
    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = _figure(name, rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(np.asarray(img).reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(t, fontsize=CAPTION_SIZE, linespacing=1.1)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes on dev", ha="center", va="center")
    fig.suptitle(title, fontsize=14)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.86, wspace=0.08, hspace=0.45)
    return _save(fig, path)


def tiles(maps: np.ndarray, path: Path, *, title: str, name: str, diverging: bool = True,
          labels: list[str] | None = None) -> Path:
    """(n, h, w) maps as a grid of small images: weights in a diverging map centered on 0
    (red positive, blue negative), activations in grayscale."""
    n = len(maps)
    cols = int(np.ceil(np.sqrt(n * 2))) if name != "weights" else int(np.ceil(np.sqrt(n)))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = _figure(name, rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, m) in enumerate(zip(axes.flat, maps)):
        if diverging:
            v = float(np.abs(m).max()) or 1.0
            ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
        else:
            ax.imshow(m, cmap="gray", vmin=0, vmax=float(m.max()) or 1.0, interpolation="nearest")
        if labels is not None:
            ax.set_title(labels[i], fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.1, hspace=0.3)
    return _save(fig, path)


def class_distribution(train_share: np.ndarray, test_share: np.ndarray, path: Path) -> Path:
    """Share of each class among the train labels and among the predictions on test.csv."""
    fig, ax = _figure("class_distribution", layout="constrained")
    k = np.arange(N_CLASSES)
    ax.bar(k - 0.2, 100 * train_share, width=0.4, label="train.csv labels")
    ax.bar(k + 0.2, 100 * test_share, width=0.4, label="predicted on test.csv")
    ax.axhline(100 / N_CLASSES, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(k)
    ax.set_xlabel("digit")
    ax.set_ylabel("% of rows")
    ax.set_title("class distribution")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def activations(pixels: np.ndarray, layers: list[dict], first_weights: np.ndarray | None,
                path: Path, *, title: str, maps: int = 8) -> Path:
    """What a network makes of one digit, layer by layer (glance.hidden_layers): the digit and
    the output probabilities; then per hidden layer its units' responses as bars (dense) or its
    `maps` strongest feature maps (conv); for a dense first layer, the weights of the units that
    respond most, as 28x28 images titled with their response."""
    plt = _pyplot()
    hidden = layers[:-1]
    first = hidden[0]["values"] if hidden else None
    show_w = first_weights is not None and first is not None and first.ndim == 1
    rows = 1 + len(hidden) + int(show_w)
    fig = plt.figure(figsize=FIGSIZE["activations"], dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(rows, maps)
    ax = fig.add_subplot(grid[0, :2])
    ax.imshow(np.asarray(pixels).reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray_r", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title("input", fontsize=8)
    ax = fig.add_subplot(grid[0, 2:])
    proba = layers[-1]["values"]
    ax.bar(np.arange(N_CLASSES), proba, color=["C3" if k == proba.argmax() else "C0"
                                               for k in range(N_CLASSES)])
    ax.set_xticks(range(N_CLASSES))
    ax.set_ylim(0, 1)
    ax.set_title("output: softmax probabilities", fontsize=8)
    for r, layer in enumerate(hidden, start=1):
        v = layer["values"]
        label = f"{layer['name']} ({layer['fn']})"
        if v.ndim == 1:
            ax = fig.add_subplot(grid[r, :])
            ax.bar(np.arange(v.size), v, width=1.0 if v.size > 40 else 0.8, color="C0")
            ax.axhline(0, color="gray", linewidth=0.5)
            ax.set_xlim(-0.5, v.size - 0.5)
            if v.size <= 20:
                ax.set_xticks(range(v.size))
            ax.set_title(f"{label}: the {v.size} hidden units' responses "
                         f"({int((v > 0).sum())} above 0)", fontsize=8)
            continue
        mean = v.reshape(-1, v.shape[-1]).mean(axis=0)  # (C,)
        for c, j in enumerate(np.argsort(-mean, kind="stable")[:maps]):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(v[..., j], cmap="gray", vmin=0, vmax=float(v[..., j].max()) or 1.0,
                      interpolation="nearest")
            ax.axis("off")
            ax.set_title(f"{label} #{j}" if c == 0 else f"#{j}", fontsize=7)
    if show_w:
        for c, j in enumerate(np.argsort(-first, kind="stable")[:maps]):
            ax = fig.add_subplot(grid[rows - 1, c])
            m = first_weights[:, j].reshape(IMAGE_SIDE, IMAGE_SIDE)
            vmax = float(np.abs(m).max()) or 1.0
            ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.axis("off")
            ax.set_title(f"unit {j}: {first[j]:.2f}", fontsize=7)
        fig.text(0.01, 0.5 / rows, "weights of the most\nresponsive first-layer\nunits "
                 "(red +, blue -)", fontsize=7, va="center", rotation=90)
    fig.suptitle(title)
    return _save(fig, path)


__all__ = ["DPI", "FIGSIZE", "activations", "class_distribution", "confusion", "digit_grid",
           "learning_curves", "tiles"]
