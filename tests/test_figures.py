"""The report's figures, drawn and inspected before saving: whole epochs on the x axis and a
learning-rate axis from 0 even after one epoch, accuracy in percent as in the text, a cut
precision/recall axis marked as cut, and readable captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import figures


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn, kept open instead of saved: name -> matplotlib Figure."""
    kept = {}

    def keep(fig, path):
        kept[Path(path).stem] = fig
        return path

    monkeypatch.setattr(figures, "_save", keep)
    yield kept
    import matplotlib.pyplot as plt
    for fig in kept.values():
        plt.close(fig)


def history(n_epochs: int, lr: float = 3e-7) -> list[dict]:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "dev_loss": 0.9 / e, "train_acc": 0.5 + 0.04 * e,
             "dev_acc": 0.8 + 0.01 * e, "lr": lr / e} for e in range(1, n_epochs + 1)]
    return [{"seed": 0, "best_epoch": n_epochs, "epochs": rows}]


@pytest.mark.parametrize("n_epochs", [1, 2, 7])
def test_learning_curves_have_whole_epochs_and_a_learning_rate_axis_from_zero(drawn, n_epochs):
    # after 1, 2 or 7 epochs the ticks are the epochs themselves, and the learning-rate axis
    # starts at 0 (a single tiny value is not blown up to fill it)
    figures.learning_curves(history(n_epochs), Path("learning_curves.png"))
    fig = drawn["learning_curves"]
    ax_loss, ax_acc, lr_ax = fig.axes
    for ax in (ax_loss, ax_acc):
        assert list(ax.get_xticks()) == list(range(1, n_epochs + 1))
        assert ax.get_xlim() == (0.5, n_epochs + 0.5)
    low, high = lr_ax.get_ylim()
    assert low == 0 and 3e-7 <= high <= 4e-7  # the peak with a little room, not 2.85-3.15e-7


def test_accuracy_is_drawn_in_percent(drawn):
    # the accuracy panel shows percentages, as report.md and the CLI do
    figures.learning_curves(history(3), Path("learning_curves.png"))
    ax_acc = drawn["learning_curves"].axes[1]
    train, dev = (line.get_ydata() for line in ax_acc.get_lines()[:2])
    np.testing.assert_allclose(train, [54, 58, 62])
    np.testing.assert_allclose(dev, [81, 82, 83])
    assert "%" in ax_acc.get_ylabel() and "%" in ax_acc.get_title()


@pytest.mark.parametrize("low, cut", [(0.91, True), (0.97, True), (0.3, False)])
def test_precision_recall_axis_starts_at_zero_or_says_where_it_is_cut(drawn, low, cut):
    # high precision/recall: the axis starts just below the lowest bar and the title says so;
    # a low one: the axis starts at 0, no cut
    precision = np.linspace(low, 0.99, 10)
    recall = np.full(10, 0.99)
    figures.confusion(np.eye(10, dtype=int) * 50, precision, recall, Path("confusion.png"))
    ax = drawn["confusion"].axes[2]
    bottom, top = ax.get_ylim()
    heights = sorted(p.get_height() for p in ax.patches)
    assert top == 100 and heights[0] == pytest.approx(100 * low)  # bars in percent
    if cut:
        assert 0 < bottom < 100 * low and f"starts at {bottom:.0f}%" in ax.get_title()
    else:
        assert bottom == 0 and "cut" not in ax.get_title()


def test_mistake_captions_are_large(drawn):
    # each caption of the mistakes grid is at least 12 points and shows its text
    images = np.zeros((3, 784), np.uint8)
    figures.digit_grid(images, ["true 3 -> 7\n98%"] * 3, Path("mistakes.png"), title="t")
    titles = [ax.title for ax in drawn["mistakes"].axes if ax.get_title()]
    assert len(titles) == 3
    assert all(t.get_fontsize() >= 12 and t.get_text() == "true 3 -> 7\n98%" for t in titles)
