"""Smoke tests of scripts/bench.py on a tiny synthetic zip: it runs without torch and ends with
one JSON line holding every figure the README table is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_competition_zip

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench.py"
REQUIRED = ("mlp_samples_per_s", "torch_mlp_samples_per_s", "mlp_speedup_vs_torch",
            "mlp_fraction_of_sgemm_peak", "cnn_epoch_s", "torch_cnn_epoch_s",
            "cnn_time_ratio_vs_torch", "cnn_wall_ratio_vs_torch_best", "predict_28000_s",
            "load_csv_s", "noop_submit_s", "peak_rss_mb")
TINY = ["--skip-torch", "--threads", "1", "--epochs", "1", "--rows", "256", "--cnn-rows", "64",
        "--sgemm-n", "128"]


def run_bench(args, timeout=300, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "DIGITS_ROOT"}
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory):
    return make_competition_zip(tmp_path_factory.mktemp("bench") / "digit-recognizer.zip",
                                n_train=300, n_test=40)


def test_json_line_has_every_figure_without_torch(tiny_zip):
    # the last stdout line is one JSON object with every required key; torch figures are null
    proc = run_bench(["--zip", str(tiny_zip), "--skip-submit", *TINY], timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(REQUIRED) <= set(result)
    assert result["torch"] is None
    for key in ("torch_mlp_samples_per_s", "mlp_speedup_vs_torch", "torch_cnn_epoch_s",
                "cnn_time_ratio_vs_torch", "cnn_wall_ratio_vs_torch_best", "noop_submit_s",
                "peak_rss_mb"):
        assert result[key] is None, key
    for key in ("mlp_samples_per_s", "mlp_fraction_of_sgemm_peak", "cnn_epoch_s",
                "cnn_wall_best_s", "predict_28000_s", "load_csv_s", "sgemm_gflops"):
        assert result[key] > 0, key
    assert result["threads"] == 1 and result["mlp_rows"] == 256 and result["cnn_rows"] == 64
    assert result["targets_met"]["mlp_speedup_vs_torch"] is None
    assert "MLP train samples/s" in proc.stdout  # the table precedes the JSON line


def test_runs_when_torch_is_not_installed(tiny_zip, tmp_path):
    # an `import torch` that fails (a stub package first on the path) leaves our figures alone
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no torch here')\n")
    tiny = [a for a in TINY if a != "--skip-torch"]
    proc = run_bench(["--zip", str(tiny_zip), "--skip-submit", *tiny], timeout=120,
                     extra_env={"PYTHONPATH": str(stub.parent)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is None and result["torch_mlp_samples_per_s"] is None
    assert result["mlp_samples_per_s"] > 0
    assert "torch is not installed" in proc.stderr


def test_scratch_submit_measures_noop_and_memory(tiny_zip):
    # the scratch `make submit` runs every stage once, then times a no-op rerun
    proc = run_bench(["--zip", str(tiny_zip), "--submit-model", "mlp", *TINY])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["submit_model"] == "mlp"
    assert 0 < result["noop_submit_s"] < 60
    assert 10 < result["peak_rss_mb"] < 4096


def test_macs_per_sample_counts_dense_and_conv_layers():
    # the FLOP count behind the *_fraction_of_sgemm_peak figures, against hand counts
    sys.path.insert(0, str(SCRIPT.parent))
    import bench

    from pipeline.nn.models import build_spec
    from pipeline.params import TrainConfig
    from pipeline.train import hyperparameters
    mlp = build_spec("mlp", hyperparameters(TrainConfig(**bench.MLP)))
    assert bench.macs_per_sample(mlp) == 784 * 256 + 256 * 128 + 128 * 10
    conv = {"input_shape": [28, 28, 1], "layers": [
        {"type": "conv", "cin": 1, "cout": 8, "k": 5, "pad": 0},  # 24x24
        {"type": "pool"},  # 12x12
        {"type": "conv", "cin": 8, "cout": 16, "k": 3, "pad": 1},  # 12x12
        {"type": "flatten"},
        {"type": "dense", "in": 12 * 12 * 16, "out": 10}]}
    expected = 24 * 24 * 25 * 8 + 12 * 12 * 9 * 8 * 16 + 12 * 12 * 16 * 10
    assert bench.macs_per_sample(conv) == expected
    assert callable(bench.torch_twin)  # scripts/experiments/cvexp.py imports it from bench


def test_bad_sizes_are_refused():
    # a non-positive size is a usage error (exit 2) naming the option
    for bad in (["--epochs", "0"], ["--cnn-rows", "-1"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *bad], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2
        assert f"{bad[0]} must be > 0, got {bad[1]}" in proc.stderr


def test_profile_mode_prints_layer_table_and_cprofile(tiny_zip):
    # --profile mlp times each layer of one step, then prints cProfile rows of train()
    proc = run_bench(["--zip", str(tiny_zip), "--profile", "mlp", "--threads", "1",
                      "--rows", "256"], timeout=120)
    assert "fc1" in proc.stdout and "optimizer step (adam" in proc.stdout
    assert "ncalls" in proc.stdout and "dense_backward" in proc.stdout


def test_profile_follows_the_default_cnn_step_by_step(tiny_zip):
    # --profile cnn times the default cnn's plan steps, fused pairs by their joined names
    from pipeline.nn.models import DEFAULTS
    proc = run_bench(["--zip", str(tiny_zip), "--profile", "cnn", "--threads", "1",
                      "--rows", "256"], timeout=120)
    assert DEFAULTS["cnn"]["plan"] in proc.stdout
    from pipeline.nn.model import Model
    from pipeline.nn.models import build_spec
    from pipeline.params import TrainConfig, resolve
    model = Model(build_spec("cnn", resolve(TrainConfig(model="cnn"))))
    names = [step.name for step in model.plan]  # the default's steps, fused pairs joined by +
    assert any("+" in n for n in names)
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert all(n in rows for n in names), (names, proc.stdout[:2000])
    assert "ncalls" in proc.stdout and "_backward" in proc.stdout


def test_package_never_imports_torch():
    # torch is for scripts/bench.py alone: importing every module of the package leaves it out
    code = ("import pkgutil, importlib, sys, pipeline\n"
            "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "assert 'torch' not in sys.modules, 'the package imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_step_table_is_timed_inside_train_and_leaves_it_as_it_was():
    # --profile's table times every plan step, the loss and the optimizer as train() calls them,
    # and the wrappers are gone afterwards: a later train() runs the package's own functions
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchlib import profile
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from pipeline import train as train_module
    from pipeline.nn import model as model_module
    from pipeline.nn.optim import Optimizer
    before = (model_module.make_plan, Optimizer.step,
              train_module.softmax_cross_entropy_forward,
              train_module.softmax_cross_entropy_backward)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((384, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 384)
    settings = dict(model="mlp", hidden=(32,), batch_size=128, augment="none")
    model, fwd, bwd, shapes, rest, step = profile.step_times(settings, x, y, 0, 1)
    assert before == (model_module.make_plan, Optimizer.step,
                      train_module.softmax_cross_entropy_forward,
                      train_module.softmax_cross_entropy_backward)
    names = [st.name for st in model.plan]
    assert len(fwd) == len(names) and (fwd > 0).all()  # every step's forward was timed
    assert bwd[names.index("fc1")] > 0 and bwd[names.index("out")] > 0
    assert shapes[0] == (128, 28, 28, 1) and shapes[-1] == (128, 10)
    assert all(t > 0 for name, t in rest.items() if not name.startswith("the rest"))
    *timed, remainder = rest.values()  # the last row: what no wrapper timed, of a whole step
    assert remainder == pytest.approx(max(0.0, step - fwd.sum() - bwd.sum() - sum(timed)))
