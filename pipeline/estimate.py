"""The expected score of a fold submission, as words: the out-of-fold estimate of cv.json or
metrics.json, with or without TTA, and what it estimates (a refit submission's models trained on
more rows than the fold models the estimate comes from; pseudo-labels make it transductive)."""

from __future__ import annotations

from pathlib import Path

from .fileio import read_json
from .text import pct


def estimate(metrics: dict, tta: bool) -> dict:
    """The OOF figures of a submission predicted with or without TTA (cv.json or metrics)."""
    return {**metrics, **metrics["tta"]} if tta and metrics.get("tta") else metrics


def _caveats(m: dict) -> str:
    """", submission refit on all 42000 rows, transductive: 27310 pseudo-labelled test rows"."""
    out = ""
    if m.get("submission_models") == "refit":
        k = m.get("folds")
        out += (f"; each fold model trained on {k - 1}/{k} of the rows, the submission's models "
                f"refit on all {m.get('refit', {}).get('rows', m.get('rows', '?'))}"
                if isinstance(k, int) else "; the submission's models refit on every row")
    if m.get("transductive"):
        out += (f"; transductive: pseudo-labels on test rows with p >= "
                f"{m.get('pseudo_threshold')}")
    return out


def estimate_line(summary: dict, tta: bool = False) -> str:
    """One line: the OOF accuracy with its interval, what it is, and where it comes from."""
    e = estimate(summary, tta)
    lo, hi = e["oof_accuracy_ci95"]
    return (f"expected score (out-of-fold, {e['folds']} folds, {e.get('rows', '?')} rows"
            f"{', with TTA' if tta else ''}{_caveats(summary)}): {100 * e['oof_accuracy']:.2f}% "
            f"(95% CI {100 * lo:.2f}-{100 * hi:.2f}%), log loss {e['oof_loss']:.4f}")


def first_round_line(summary: dict) -> str | None:
    """With pseudo-labels, the first round's estimate beside it (None without)."""
    first = summary.get("first_round")
    if not first:
        return None
    lo, hi = first["oof_accuracy_ci95"]
    return (f"first round, without pseudo-labels (out-of-fold): {100 * first['oof_accuracy']:.2f}%"
            f" (95% CI {100 * lo:.2f}-{100 * hi:.2f}%), log loss {first['oof_loss']:.4f}")


def read_cv(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def ledger_estimate(metrics: dict, tta: bool) -> dict:
    """A fold ensemble's out-of-fold estimate for the ledger: the TTA one when predicting so;
    what the submission's models are, and, with pseudo-labels, that it is transductive."""
    if metrics.get("oof_accuracy") is None:
        return {}
    e = estimate(metrics, tta)
    out = {"oof_accuracy": e["oof_accuracy"], "oof_accuracy_ci95": e["oof_accuracy_ci95"],
           "folds": e.get("folds"), "oof_tta": bool(tta and metrics.get("tta"))}
    for key in ("submission_models", "transductive", "pseudo_threshold", "pseudo_rows"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def estimate_words(e: dict) -> str:
    """", out-of-fold accuracy 99.40% (95% CI 99.31-99.48%, 5 folds)" of a ledger entry, with
    ", models refit on every row" and ", transductive (pseudo-labels p >= 0.995)" when so."""
    lo, hi = e.get("oof_accuracy_ci95") or (float("nan"), float("nan"))
    extra = ", models refit on every row" if e.get("submission_models") == "refit" else ""
    if e.get("transductive"):
        extra += f", transductive (pseudo-labels p >= {e.get('pseudo_threshold')})"
    return (f", out-of-fold accuracy {100 * e['oof_accuracy']:.2f}% (95% CI {100 * lo:.2f}-"
            f"{100 * hi:.2f}%, {e.get('folds')} folds{', TTA' if e.get('oof_tta') else ''})"
            f"{extra}")


def oof_words(m: dict) -> str:
    """"out-of-fold accuracy 99.40% (95% CI 99.31-99.48%, 5 folds)" of metrics.json, with
    "; of the fold models, each on 4/5 of the rows" for refit models, "; transductive"."""
    lo, hi = m["oof_accuracy_ci95"]
    k = m["folds"]
    of = (f"; of the fold models, each on {k - 1}/{k} of the rows"
          if m.get("submission_models") == "refit" else "")
    return (f"out-of-fold accuracy {pct(m['oof_accuracy'])} (95% CI {pct(lo)}-{pct(hi)}, "
            f"{k} folds{of}{'; transductive' if m.get('transductive') else ''})")


def models_words(m: dict) -> str:
    """What the submission's models are: "5 fold models", "2 models refit on all 42000 rows"
    (with "and 27000 pseudo-labelled test rows")."""
    pseudo = m.get("pseudo_rows")
    also = f" and {'/'.join(map(str, pseudo))} pseudo-labelled test rows" if pseudo else ""
    if m.get("submission_models") == "refit":
        return f"{len(m['members'])} model(s) refit on all {m['refit']['rows']} rows{also}"
    return f"{m['folds']} fold models" + (f" (each with{also[4:]})" if also else "")
