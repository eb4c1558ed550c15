"""Security: no pickle outside the owner-only cache, no shell or eval, and a credential that never
reaches a log, an error, a ledger, a report or a cache key."""

from __future__ import annotations

import ast
import base64
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from pipeline.fileio import read_npz
from tests.conftest import REPO, make_competition_zip

PACKAGE = REPO / "pipeline"
SECRET_KEY = "f4k3s3cr3tK3y0123456789abcdefXYZ"
SECRET_TOKEN = "KGAT_f4k3T0k3n_9876543210fedcba"


def package_calls():
    """(file, line, call node) for every call in the package source."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                yield path.relative_to(REPO), node.lineno, node


def call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_no_eval_exec_shell_or_pickle_load_in_the_package():
    # the package never calls eval/exec, never runs a shell, never unpickles by itself
    bad = [(str(f), n, call_name(c)) for f, n, c in package_calls()
           if call_name(c) in ("eval", "exec", "os.system", "os.popen", "pickle.load",
                               "pickle.loads", "joblib.load")
           or keyword(c, "shell") not in (None, False)]
    assert bad == []


def test_every_np_load_refuses_pickles():
    # every np.load in the package passes allow_pickle=False explicitly
    loads = [(str(f), n, keyword(c, "allow_pickle")) for f, n, c in package_calls()
             if call_name(c) in ("np.load", "numpy.load")]
    assert loads and all(flag is False for _, _, flag in loads), loads


def test_npz_with_an_object_array_is_refused(tmp_path):
    # an .npz smuggling a pickled object array is refused by read_npz and by load_models
    from pipeline.nn import load_models
    path = tmp_path / "model.npz"
    np.savez(path, format=np.array("x"), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npz(path)
    with pytest.raises(Exception) as e:
        load_models(path)
    assert "pickle" in str(e.value).lower() or "format" in str(e.value).lower()


def test_cache_is_owner_only_and_the_readme_says_to_trust_it(tmp_path):
    # the joblib cache (pickles) lives in data/cache with mode 0700; the README warns about it
    from pipeline.cache import Cache
    from pipeline.config import Paths
    paths = Paths(tmp_path)
    Cache(paths.cache)
    assert paths.cache.is_relative_to(paths.root)
    assert stat.S_IMODE(paths.cache.stat().st_mode) == 0o700
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "must be trusted" in readme and "allow_pickle=False" in readme


def secret_forms() -> list[bytes]:
    """The fake secrets as they could leak: raw, and inside a Basic auth header."""
    basic = base64.b64encode(f"fakeuser:{SECRET_KEY}".encode())
    return [SECRET_KEY.encode(), SECRET_TOKEN.encode(), basic, SECRET_KEY[:12].encode()]


def test_fake_secret_never_written_anywhere(tmp_path):
    # with a known fake key and token in the environment and in kaggle.json, a full offline run
    # (and the submissions listing) writes neither to any file, file name, log or message
    make_competition_zip(tmp_path / "src" / "digit-recognizer.zip")
    config = tmp_path / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(f'{{"username": "fakeuser", "key": "{SECRET_KEY}"}}')
    os.chmod(config / "kaggle.json", 0o600)
    env = {**os.environ, "KAGGLE_USERNAME": "fakeuser", "KAGGLE_KEY": SECRET_KEY,
           "KAGGLE_API_TOKEN": SECRET_TOKEN, "KAGGLE_CONFIG_DIR": str(config),
           "PYTHONPATH": str(REPO)}
    root = tmp_path / "project"
    transcript = []
    for args in (["run", "--mirror", str(tmp_path / "src"), "--model", "mlp", "--epochs", "1",
                  "--hidden", "32"],
                 ["validate"], ["submissions", "--offline"], ["validate", "/nonexistent.csv"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline", "--root", str(root), *args],
                              env=env, capture_output=True, timeout=120)
        transcript += [proc.stdout, proc.stderr]
    assert (root / "submissions" / "ledger.jsonl").is_file()
    written = [p for p in root.rglob("*") if p.is_file()]
    assert len(written) > 10
    for form in secret_forms():
        assert not [p for p in written if form in p.read_bytes()], form
        assert not [p for p in root.rglob("*") if form.decode() in str(p)], form
        assert not [t for t in transcript if form in t], form
