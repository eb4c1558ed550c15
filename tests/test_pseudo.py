"""Pseudo-labels (`--pseudo P`): the second round trains on its labelled rows plus exactly the
test rows its own first-round models label with probability >= P; fold models are still scored
on labelled held-out rows only; the second round's key holds the threshold and the test data;
every output is marked transductive, and only then."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import cvstages, pseudo, stages
from pipeline.fileio import read_json
from pipeline.parallel import ParallelConfig
from pipeline.params import PredictConfig, TrainConfig, resolve
from tests.test_cv import FOLDS, ONE, TINY, prepared


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from tests.conftest import make_competition_zip
    return make_competition_zip(tmp_path_factory.mktemp("src") / "digit-recognizer.zip",
                                n_train=700, n_test=60)


def normalized_test(paths):
    from pipeline.preprocess import normalize
    return normalize(np.load(paths.parsed)["test_x"], read_json(paths.normalizer))


def middle_threshold(proba: np.ndarray) -> float:
    """A threshold that takes about half the rows: the median top probability."""
    return float(np.median(proba.max(axis=1)))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), t=st.floats(0.05, 0.999))
def test_select_takes_exactly_the_rows_at_or_above_the_threshold(seed, t):
    # rows with top probability >= t (the boundary included), labelled by their argmax
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.full(10, 0.3), size=200).astype(np.float32)  # (200, 10)
    proba[0] = 0.0
    proba[0, 3] = np.float32(t)  # exactly at the threshold: taken
    rows, labels = pseudo.select(proba, t)
    top = proba.max(axis=1)
    assert rows.tolist() == [i for i in range(200) if top[i] >= np.float32(t)]
    assert 0 in rows and labels[0] == 3
    assert np.array_equal(labels, proba[rows].argmax(axis=1))


def test_each_fold_model_learns_from_its_own_folds_first_round(source, tmp_path):
    # round 2 of fold f = fit_rows on the other folds' rows + exactly the test rows fold f's
    # round-1 model labels with p >= t; it is scored on fold f's labelled rows; cv.json keeps
    # both rounds, the first equal to a plain CV's
    from pipeline.nn import load_models
    from pipeline.predict import predict_proba
    from pipeline.refit import fit_rows
    plain = prepared(tmp_path / "plain", source)
    cvstages.train_folds(plain, TINY, FOLDS, ONE)
    first_models, first_cv = load_models(plain.model), read_json(plain.models / "cv.json")
    x = normalized_test(plain)
    teach = [predict_proba([m], x) for m in first_models]  # each fold's round-1 model
    t = middle_threshold(teach[0])
    paths = prepared(tmp_path / "p", source)
    metrics = cvstages.train_folds(paths, TINY.replace(pseudo=t), FOLDS, ONE)
    cv = read_json(paths.models / "cv.json")
    want = [int(np.sum(p.max(axis=1) >= np.float32(t))) for p in teach]
    assert 0 < want[0] < 60 and cv["pseudo_rows"] == want == metrics["pseudo_rows"]
    assert cv["transductive"] is True and cv["pseudo_threshold"] == t
    assert cv["pseudo_test_rows"] == 60 and cv["rows"] == 600 and sum(cv["fold_rows"]) == 600
    for key in ("oof_accuracy", "oof_accuracy_ci95", "oof_loss", "fold_accuracy"):
        assert cv["first_round"][key] == first_cv[key], key
    assert metrics["first_round"]["oof_accuracy"] == first_cv["oof_accuracy"]
    with np.load(paths.models / "oof.npz") as z:
        rows, fold = z["rows"], z["fold"]
    parsed, norm = np.load(paths.parsed), read_json(paths.normalizer)
    sel, labels = pseudo.select(teach[2], t)
    hp = {k: v for k, v in resolve(TINY).items() if k != "pseudo"}
    hp = json.loads(json.dumps({**hp, "folds": 3, "refit": False}, default=list))
    data = {"pixels": parsed["train_x"][rows], "labels": parsed["train_y"][rows],
            "normalizer": norm, "test_pixels": parsed["test_x"]}
    by_hand = fit_rows(data, {"cfg": hp, "train_rows": np.flatnonzero(fold != 2),
                              "eval_rows": np.flatnonzero(fold == 2), "pseudo_rows": sel,
                              "pseudo_labels": labels})
    second = load_models(paths.model)
    assert len(second) == 3
    assert all(np.array_equal(by_hand["model"].params[k], second[2].params[k])
               for k in second[2].params)
    assert by_hand["train_rows"] == 400 and by_hand["pseudo_rows"] == want[2]
    assert cv["fold_accuracy"][2] == pytest.approx(by_hand["eval_accuracy"])


def test_refit_round_two_is_the_submission(source, tmp_path):
    # with --refit, the refit models relabel the test rows from their mean; the submission
    # averages the second-round refit models, which trained on 600 + n rows
    from pipeline.nn import load_models
    from pipeline.predict import predict_proba
    cfg = TINY.replace(refit=True, ensemble=2)
    plain = prepared(tmp_path / "plain", source)
    cvstages.train_folds(plain, cfg, FOLDS, ONE)
    first = load_models(plain.model)
    x = normalized_test(plain)
    t = middle_threshold(predict_proba(first, x))
    want = int(np.sum(predict_proba(first, x).max(axis=1) >= np.float32(t)))
    paths = prepared(tmp_path / "p", source)
    metrics = cvstages.train_folds(paths, cfg.replace(pseudo=t), FOLDS, ONE)
    stages.predict(paths, PredictConfig())
    assert metrics["submission_models"] == "refit" and metrics["pseudo_rows"] == [want]
    assert [(m["train_rows"], m["pseudo_rows"]) for m in metrics["members"]] == [(600, want)] * 2
    second = load_models(paths.model)
    labels = np.loadtxt(paths.submission, delimiter=",", skiprows=1, dtype=int)[:, 1]
    assert np.array_equal(labels, predict_proba(second, x).argmax(1))
    assert not np.allclose(predict_proba(second, x), predict_proba(first, x), atol=1e-5)


def test_round_two_key_holds_the_threshold_and_the_test_data(source, tmp_path, caplog,
                                                             monkeypatch):
    # a rerun reuses both rounds; another threshold retrains round 2 only; the key changes
    # with the threshold, with the test images and with the teachers
    paths = prepared(tmp_path / "p", source)
    cvstages.cv(paths, TINY.replace(pseudo=0.6), FOLDS, ONE)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        caplog.clear()
        cvstages.cv(paths, TINY.replace(pseudo=0.6), FOLDS, ONE)
        assert not any("training" in r.getMessage() for r in caplog.records)
        caplog.clear()
        cvstages.cv(paths, TINY.replace(pseudo=0.7), FOLDS, ONE)
    logged = [r.getMessage() for r in caplog.records]
    assert "cv fold 1/3: reused from cache" in logged
    assert "pseudo: training 3 of 3 member(s) on 1 local worker(s)" in logged, logged
    teacher = cvstages.Unit(({}, {"digits.npz": "a"}, {"fold": 0}, "code"), "cv fold 1/3", {},
                            np.arange(4), np.arange(2), None)
    monkeypatch.setattr(pseudo, "_teacher_proba", lambda *a: np.eye(10, dtype=np.float32))

    def key(threshold, digest, teacher=teacher):
        [u], _ = pseudo._round_two(paths, [teacher], [{}], None, digest, threshold, "c", "x")
        return json.dumps(u.key, sort_keys=True, default=list)
    other = cvstages.Unit(({}, {"digits.npz": "a"}, {"fold": 1}, "code"), "cv fold 2/3", {},
                          np.arange(4), np.arange(2), None)
    keys = [key(0.9, "d1"), key(0.95, "d1"), key(0.9, "d2"), key(0.9, "d1", other)]
    assert len(set(keys)) == 4 and key(0.9, "d1") == keys[0]
    monkeypatch.setattr(pseudo, "_teacher_proba", lambda *a: np.full((5, 10), 0.1, np.float32))
    made, n = pseudo._round_two(paths, [teacher], [{}], None, "d1", 0.5, "c", "x")
    assert (made, n) == ([teacher], 0)  # no row at the threshold: round 2 is round 1, reused
    parsed = np.load(paths.parsed)
    assert pseudo.test_digest(parsed["test_x"]) != pseudo.test_digest(parsed["test_x"][::-1])


def test_transductive_is_marked_everywhere_and_only_when_on(source, tmp_path):
    # cv.json, metrics.json, the ledger line and the run history carry transductive (with the
    # threshold and the counts) with --pseudo, and no such key without it
    from pipeline.submission import read_ledger
    for t, root in ((0.0, "off"), (0.6, "on")):
        paths = prepared(tmp_path / root, source)
        cvstages.train_folds(paths, TINY.replace(pseudo=t), FOLDS, ONE)
        stages.predict(paths, PredictConfig())
        outs = [read_json(paths.models / "cv.json"), read_json(paths.metrics),
                read_ledger(paths.ledger)[-1], json.loads(paths.runs.read_text().splitlines()[-1])]
        for out in outs:
            if t:
                assert out["transductive"] is True and out["pseudo_threshold"] == t
                assert len(out["pseudo_rows"]) == 3
            else:
                assert not {"transductive", "pseudo_threshold", "pseudo_rows",
                            "first_round"} & set(out)
        from click.testing import CliRunner

        from pipeline.cli import cli
        r = CliRunner().invoke(cli, ["--root", str(paths.root), "validate"])
        assert ("transductive (pseudo-labels p >= 0.6)" in r.output) == bool(t), r.output


def test_two_workers_give_the_pseudo_bytes_of_one(source, tmp_path):
    # both rounds, with refit, on one process and on two loky workers: the same bytes
    from tests.test_cv import outputs
    cfg = TINY.replace(refit=True, pseudo=0.6)
    out = []
    for name, par in (("one", ONE), ("two", ParallelConfig(jobs=2))):
        paths = prepared(tmp_path / name, source)
        cvstages.train_folds(paths, cfg, FOLDS, par)
        stages.predict(paths, PredictConfig())
        out.append(outputs(paths))
    assert out[0] == out[1]


def test_sweep_ranks_without_pseudo_labels(source, tmp_path, caplog):
    # a sweep with pseudo set warns and cross-validates the plain recipe (one round)
    paths = prepared(tmp_path / "p", source)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        caplog.clear()
        [s] = cvstages.sweep(paths, TINY.replace(pseudo=0.6), FOLDS, ONE, [{"epochs": 2}])
    assert "transductive" not in s and s["params"]["pseudo"] == 0.0
    assert any("without pseudo-labels" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage().startswith("pseudo") for r in caplog.records)
    assert TrainConfig().pseudo == 0.0


def test_cv_command_prints_both_rounds(source, tmp_path):
    # `digits cv --pseudo`: the second round's estimate marked transductive, then the first's
    from click.testing import CliRunner

    from pipeline.cli import cli
    root = tmp_path / "p"
    paths = prepared(root, source)
    r = CliRunner().invoke(cli, ["--root", str(root), "cv", "--model", "mlp", "--hidden", "32",
                                 "--batch-size", "32", "--augment", "none", "--epochs", "2",
                                 "--folds", "3", "--pseudo", "0.6", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    first = read_json(paths.models / "cv.json")["first_round"]
    lines = r.stdout.splitlines()
    assert "transductive: pseudo-labels on test rows with p >= 0.6" in lines[-2]
    assert lines[-1].startswith("first round, without pseudo-labels (out-of-fold): "
                                f"{100 * first['oof_accuracy']:.2f}%")
