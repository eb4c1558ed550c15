"""The benchmark's report: the targets, the table printed before the JSON line, and rounding."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# (figure, target, how it is met) for the README table
TARGETS = (
    ("mlp_speedup_vs_torch", 1.5, ">="),
    ("mlp_fraction_of_sgemm_peak", 0.65, ">="),
    ("cnn_time_ratio_vs_torch", 1.2, "<="),
    ("cnn_wall_ratio_vs_torch_best", 1.0, "<="),
    ("predict_28000_s", 2.0, "<="),
    ("peak_rss_mb", 1536.0, "<"),
    ("noop_submit_s", 2.0, "<"),
)


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores available, {platform.system()}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def met(value, target, how):
    if value is None:
        return None
    return {">=": value >= target, "<=": value <= target, "<": value < target}[how]


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def rounded(v):
    """Floats to 4 significant decimals, inside dicts and lists too, for the JSON line."""
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: rounded(e) for k, e in v.items()}
    if isinstance(v, (list, tuple)):
        return [rounded(e) for e in v]
    return v


def print_table(r):
    rows = [
        ("sgemm float32 GFLOP/s", r["sgemm_gflops"], None, None),
        ("MLP train samples/s", r["mlp_samples_per_s"], r["torch_mlp_samples_per_s"],
         r["mlp_speedup_vs_torch"]),
        ("MLP training GFLOP/s", r["mlp_gflops"], r["torch_mlp_gflops"], None),
        ("MLP fraction of sgemm", r["mlp_fraction_of_sgemm_peak"],
         r["torch_mlp_fraction_of_sgemm_peak"], None),
        ("CNN epoch s, 1 thread", r["cnn_epoch_s"], r["torch_cnn_epoch_s"],
         r["cnn_time_ratio_vs_torch"]),
        (f"CNN epoch s, best (ours {r['cnn_best_threads']}, torch {r['torch_cnn_best_threads']})",
         r["cnn_wall_best_s"], r["torch_cnn_wall_best_s"], r["cnn_wall_ratio_vs_torch_best"]),
        ("CNN fraction of sgemm", r["cnn_fraction_of_sgemm_peak"],
         r["torch_cnn_fraction_of_sgemm_peak"], None),
        ("predict 28000 s (CNN)", r["predict_28000_s"], r["torch_predict_28000_s"],
         ratio(r["predict_28000_s"], r["torch_predict_28000_s"])),
        ("load CSVs s", r["load_csv_s"], None, None),
        ("no-op make submit s", r["noop_submit_s"], None, None),
        ("peak RSS make submit MB", r["peak_rss_mb"], None, None),
    ]
    width = max(len(name) for name, *_ in rows) + 1
    print(f"{'figure':<{width}} {'ours':>12} {'torch':>12} {'ours/torch':>11}")
    for name, ours, theirs, q in rows:
        print(f"{name:<{width}} {fmt(ours):>12} {fmt(theirs):>12} {fmt(q):>11}")
    print()
    if r["submit_error"]:
        print(f"note: the scratch `make submit` failed: {r['submit_error']}")
    if r["under_load"]:
        print(f"note: load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the "
              f"end: other processes shared the CPU, absolute figures are low and noisy")
    print(f"{'target':<30} {'value':>12} {'goal':>12} {'met':>11}")
    for key, target, how in TARGETS:
        ok = r["targets_met"][key]
        print(f"{key:<30} {fmt(r[key]):>12} {how + ' ' + fmt(target):>12} "
              f"{'-' if ok is None else ('yes' if ok else 'NO'):>11}")
