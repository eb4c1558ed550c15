"""Faults: a stage killed or interrupted mid-run, a resumed training, a damaged cache entry, two
runs at once and a full disk. Each runs the real `digits` command in a subprocess on the small
synthetic zip (an mlp for a few epochs), so the whole file takes well under a minute."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.submission import validate_submission
from tests.conftest import REPO, make_competition_zip

TRAIN = ["--model", "mlp", "--epochs", "2", "--hidden", "64"]

# Runs `digits ARGS`, first installing the hook named by $DIGITS_TEST_HOOK:
#   replace:NAME:SIGNAL  send SIGNAL to itself just before an output NAME is renamed into place
#   epoch:K:SIGNAL       send SIGNAL to itself right after the checkpoint of epoch K is written
RUNNER = r"""
import os, signal, sys, time
from pathlib import Path
hook = os.environ.get("DIGITS_TEST_HOOK", "")
if hook:
    kind, where, sig = hook.split(":")
    def die():
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(30)  # SIGINT surfaces here as KeyboardInterrupt
    if kind == "replace":
        real_replace = os.replace
        def replace(src, dst, *a, **k):
            if Path(dst).name == where:
                die()
            return real_replace(src, dst, *a, **k)
        os.replace = replace
    elif kind == "epoch":
        import pipeline.checkpoint as ck
        real_save = ck.save
        def save(path, key, rng, state, phase, first):
            real_save(path, key, rng, state, phase, first)
            if state.epoch == int(where):
                die()
        ck.save = save
from pipeline.cli import main
sys.argv = ["digits", *sys.argv[1:]]
main()
"""


def digits(root: Path, *args: str, hook: str = "", fsize: int | None = None,
           background: bool = False):
    """Run `digits --root ROOT ARGS` in a fresh process; a CompletedProcess (or a Popen)."""
    env = {**os.environ, "DIGITS_TEST_HOOK": hook, "PYTHONPATH": str(REPO)}
    env.pop("KAGGLE_MIRROR", None)

    def prepare_child():
        # a shell's background job starts with SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default disposition a terminal would
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-c", RUNNER, "--root", str(root), *args]
    kw = dict(env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              preexec_fn=prepare_child)
    if background:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=120, **kw)


def outputs(root: Path) -> dict[str, str]:
    """sha256 of every output a stage reads or a person keeps (cache, lock, checkpoints aside)."""
    skip = ("data/cache/", "data/.lock", "data/models/checkpoints/")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)
            and not p.name.endswith(".tmp")}


def stray_temporaries(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*.tmp")]


def model_arrays(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / "data" / "models" / "model.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files if z[k].dtype.kind == "f"}


def one_error_line(proc) -> str:
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("digits: error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A project after a complete `digits run` (mlp, 2 epochs) on the small zip."""
    base = tmp_path_factory.mktemp("finished")
    make_competition_zip(base / "src" / "digit-recognizer.zip")
    root = base / "project"
    done = digits(root, "run", "--mirror", str(base / "src"), *TRAIN)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def project(finished, tmp_path) -> Path:
    """A private copy of the finished project."""
    root = tmp_path / "project"
    shutil.copytree(finished, root, symlinks=True)
    return root


# ----------------------------------------------------------------------- interrupted stages


@pytest.mark.parametrize("args, output, sig", [
    (["split", "--split-seed", "1"], "split.npz", "SIGKILL"),
    (["normalize"], "normalizer.json", "SIGINT"),
    (["train", *TRAIN[:-1], "32"], "model.npz", "SIGKILL"),
    (["predict", "--tta"], "submission.csv", "SIGINT"),
])
def test_interrupted_stage_keeps_previous_outputs(project, args, output, sig):
    # a stage killed (SIGKILL) or interrupted (Ctrl-C) as it writes leaves every earlier output
    # byte-identical and no partial file under a name a stage reads; the rerun then completes
    before = outputs(project)
    if args[0] == "normalize":  # make normalize have something new to write
        digits(project, "split", "--split-seed", "2")
        before = outputs(project)
    proc = digits(project, *args, hook=f"replace:{output}:{sig}")
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and "interrupted" in one_error_line(proc)
    assert outputs(project) == before
    again = digits(project, *args)
    assert again.returncode == 0, again.stderr
    assert "reused from cache" in again.stderr or args[0] in ("normalize", "split")
    assert not stray_temporaries(project / "submissions")


def test_interrupted_download_leaves_nothing(tmp_path):
    # a first download killed as it writes digits.npz leaves no digits.npz; the rerun completes
    make_competition_zip(tmp_path / "src" / "digit-recognizer.zip")
    root = tmp_path / "project"
    proc = digits(root, "download", "--mirror", str(tmp_path / "src"),
                  hook="replace:digits.npz:SIGKILL")
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "data" / "interim" / "digits.npz").exists()
    assert digits(root, "download").returncode == 0
    assert np.load(root / "data" / "interim" / "digits.npz")["train_x"].shape == (200, 784)


# ----------------------------------------------------------------------------- resume


def test_resume_equals_uninterrupted_run(project, tmp_path):
    # training interrupted by Ctrl-C after epoch 1 and killed after epoch 3 resumes from its
    # checkpoints (--resume, the default) to exactly the weights of an uninterrupted run
    args = ["train", "--model", "mlp", "--epochs", "5", "--hidden", "48", "--seed", "7"]
    reference = tmp_path / "reference"
    shutil.copytree(project, reference, symlinks=True)
    assert digits(reference, *args).returncode == 0

    first = digits(project, *args, hook="epoch:1:SIGINT")
    assert first.returncode == 130 and "interrupted" in one_error_line(first)
    second = digits(project, *args, "--resume", hook="epoch:3:SIGKILL")
    assert second.returncode == -signal.SIGKILL
    assert "resuming from the checkpoint after epoch 1" in second.stderr
    third = digits(project, *args)
    assert third.returncode == 0, third.stderr
    assert "resuming from the checkpoint after epoch 3" in third.stderr

    got, want = model_arrays(project), model_arrays(reference)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    history = [[{k: v for k, v in e.items() if k != "seconds"} for e in m["epochs"]]
               for m in (json.loads((r / "data/models/history.json").read_text())[0]
                         for r in (project, reference))]
    assert history[0] == history[1]
    assert not list((project / "data" / "models" / "checkpoints").glob("*.npz"))


def test_no_resume_and_damaged_checkpoint_start_afresh(project, tmp_path):
    # --no-resume discards a checkpoint; a truncated checkpoint is reported in one line and
    # training starts over; both give the uninterrupted run's weights
    args = ["train", "--model", "mlp", "--epochs", "3", "--hidden", "40"]
    assert digits(project, *args, hook="epoch:2:SIGKILL").returncode == -signal.SIGKILL
    (ckpt,) = (project / "data" / "models" / "checkpoints").glob("*.npz")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    damaged = digits(project, *args)
    assert damaged.returncode == 0, damaged.stderr
    assert [ln for ln in damaged.stderr.splitlines() if "unreadable" in ln] != []
    want = model_arrays(project)

    fresh = tmp_path / "fresh"
    shutil.copytree(project, fresh, symlinks=True)
    shutil.rmtree(fresh / "data" / "cache")
    assert digits(fresh, *args, hook="epoch:1:SIGKILL").returncode == -signal.SIGKILL
    redo = digits(fresh, *args, "--no-resume")
    assert redo.returncode == 0 and "discarded the checkpoint" in redo.stderr
    got = model_arrays(fresh)
    assert all(np.array_equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------ the cache


def test_damaged_cache_entries_are_reported_and_recomputed(project):
    # a truncated, a garbage and a bit-flipped cache entry are each reported in one line and
    # recomputed; every output comes out byte-identical
    before = outputs(project)
    entries = {p.parent.parent.name: p for p in project.glob("data/cache/joblib/**/output.pkl")}
    parse, split, train = entries["_parse"], entries["_split"], entries["_train"]
    parse.write_bytes(parse.read_bytes()[: parse.stat().st_size // 2])
    split.write_bytes(b"not a pickle at all")
    raw = bytearray(train.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the weights: unpickles fine, so only the digest sees it
    train.write_bytes(bytes(raw))
    proc = digits(project, "run", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    corrupt = [ln for ln in proc.stderr.splitlines() if "is corrupt" in ln]
    assert [ln.split(":")[1].strip() for ln in corrupt] == ["parse", "split", "train"], corrupt
    after = outputs(project)
    for name in ("data/interim/digits.npz", "data/interim/split.npz", "submissions/submission.csv"):
        assert after[name] == before[name], name
    assert model_arrays(project).keys()
    again = digits(project, "run", *TRAIN)
    assert "is corrupt" not in again.stderr and "recomputing" not in again.stderr


# ------------------------------------------------------------------------- two runs at once


def test_second_run_waits_for_the_lock(project):
    # while one run holds the project lock a second one waits, says so, then finishes
    with open(project / "data" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = digits(project, "split", "--split-seed", "3", background=True)
        time.sleep(3)
        assert waiting.poll() is None  # still waiting
        fcntl.flock(held, fcntl.LOCK_UN)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert "another digits run is in progress; waiting" in err


def test_two_runs_at_once_both_succeed(project):
    # two `digits run` (what two `make submit` do) started together both finish and the
    # submission they leave is valid and uncorrupted
    runs = [digits(project, "run", *TRAIN[:-1], "24", "--seed", str(s), background=True)
            for s in (11, 12)]
    results = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], results
    assert len(validate_submission(project / "submissions" / "submission.csv",
                                   np.arange(1, 51))) == 50
    assert not stray_temporaries(project)


# ------------------------------------------------------------------------------- full disk


def test_full_disk_is_one_line_and_keeps_outputs(project):
    # with files capped at 256 KB (RLIMIT_FSIZE) training a bigger model fails in one clear line,
    # exit 1, and every earlier output is intact with no temporary left behind
    before = outputs(project)
    proc = digits(project, "train", "--model", "mlp", "--epochs", "1", "--hidden", "512",
                  fsize=256 << 10)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert "no space left (or file too large) writing" in line and "free some space" in line
    assert outputs(project) == before
    assert not stray_temporaries(project)


def test_full_disk_on_first_download(tmp_path):
    # a first download into a too-small disk names the file and leaves data/raw without a zip
    make_competition_zip(tmp_path / "src" / "digit-recognizer.zip")
    root = tmp_path / "project"
    proc = digits(root, "download", "--mirror", str(tmp_path / "src"), fsize=32 << 10)
    assert proc.returncode == 1, proc.stderr
    assert "digit-recognizer.zip" in one_error_line(proc)
    assert not list((root / "data" / "raw").iterdir())
