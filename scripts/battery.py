"""A battery of bad inputs run through the real `digits` command, each in a fresh copy of a tiny
project: damaged state files, odd zips, bad submissions and images, extreme options.

A case passes when the command exits as expected (1 with ONE `digits: error:` line and no
traceback; or 0 where the damage must be survived), no file outside data/cache and data/logs
changed unless the case allows it, and its own check holds (e.g. the ledger gained a line).

    python scripts/battery.py [--code DIR] [--keep DIR] [-k SUBSTRING] [-v]

The cases and the tools that damage files are in `battery_cases.py`. `--code DIR` runs another
checkout's package (e.g. an export of an older commit), to count how many cases it handles.
Needs the competition zip in ../shared/data (or $KAGGLE_MIRROR).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from battery_cases import CASES, MAY_CHANGE, SUB, TRAIN, D, L  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SKIP = ("data/cache/", "data/logs/", "data/.lock", "data/.make/")


def digits(code: Path, root: Path, *args, env=None, timeout=300):
    e = {**os.environ, "PYTHONPATH": str(code), "KAGGLE_CONFIG_DIR": str(root / "kaggle"),
         "HOME": str(root / "home"), **(env or {})}
    for k in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_MIRROR"):
        e.pop(k, None)
    e.pop("DIGITS_ANY_TEST_ROWS", None)
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "pipeline", "--root", str(root), "-q", *args],
                          env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=root)


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (rel + "/").startswith(SKIP) or p.name.endswith(".tmp"):
            continue
        if p.is_symlink() or not p.is_file():
            out[rel] = f"<{'link' if p.is_symlink() else 'dir'}>"
        else:
            h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            out[rel] = f"{h}:{oct(p.stat().st_mode & 0o777)}"
    return out


def build(code: Path, base: Path) -> Path:
    root = base / "pristine"
    mirror = Path(os.environ.get("KAGGLE_MIRROR") or REPO.parent / "shared" / "data")
    for args in (["download", "--mirror", str(mirror)], ["split", "--max-train", "500"],
                 ["normalize"], ["train", *TRAIN], ["predict"]):
        proc = digits(code, root, *args)
        if proc.returncode:
            sys.exit(f"building the project failed at {args[0]}: {proc.stderr[-500:]}")
    shutil.rmtree(root / "data" / "cache", ignore_errors=True)  # each case starts cold
    return root


def run_case(code: Path, pristine: Path, work: Path, case) -> tuple[bool, str]:
    name, damage, args, want, check = case
    root = work / "p"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(pristine, root, symlinks=True)
    if damage:
        damage(root)
    before = tree(root)
    t0 = time.perf_counter()
    try:
        proc = digits(code, root, *args, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "timed out (120 s)"
    secs = time.perf_counter() - t0
    if check == "then-predict":  # whatever train did, no silently wrong submission may follow
        sub = (root / SUB).read_bytes()
        proc2 = digits(code, root, "predict")
        ok = (root / SUB).read_bytes() == sub and (proc.returncode == 1 or proc2.returncode == 1)
        failed = proc if proc.returncode else proc2
        return ok and _one_line(failed), f"train {proc.returncode}, predict {proc2.returncode}"
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("digits: error:")]
    problems = []
    if proc.returncode != want:
        problems.append(f"exit {proc.returncode}, expected {want}")
    if "Traceback" in proc.stderr + proc.stdout:
        problems.append("traceback")
    if want == 1 and not _one_line(proc):
        problems.append(f"{len(err)} error lines")
    after = tree(root)
    allowed = MAY_CHANGE.get(name, set())
    if want == 0:  # a survived damage: the command's own outputs may change
        allowed = allowed | {L, SUB, "submissions/history", "params.toml"}
    changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)
               and not any(k.startswith(a) for a in allowed)]
    if changed:
        problems.append(f"changed {sorted(changed)[:3]}")
    if callable(check) and want == proc.returncode and not check(root, before):
        problems.append("its check failed")
    said = err if want else proc.stderr.splitlines()  # a survived damage is told as a warning
    if isinstance(check, str) and not any(check.lower() in ln.lower() for ln in said):
        problems.append(f"message does not say {check!r}")
    shown = (err[0] if err else proc.stderr.strip().splitlines()[-1:] or ["(no message)"])
    detail = "; ".join(problems) or (shown[0] if isinstance(shown, list) else shown)
    return not problems, f"{detail[:150]} [{secs:.1f}s]"


def _one_line(proc) -> bool:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("digits: error:")]
    return len(err) == 1 and "Traceback" not in proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose package to run")
    ap.add_argument("--keep", type=Path, default=None, help="build the project here and keep it")
    ap.add_argument("-k", default="", help="run only the cases whose name contains one of these "
                                           "comma-separated substrings")
    ap.add_argument("-x", default="", help="skip the cases whose name contains one of these")
    ap.add_argument("-v", action="store_true", help="print every case, not only failures")
    opts = ap.parse_args()
    base = opts.keep or Path(tempfile.mkdtemp(prefix="digits-battery-"))
    base.mkdir(parents=True, exist_ok=True)
    pristine = base / "pristine" if (base / "pristine" / D).exists() else build(opts.code, base)
    cases = [c for c in CASES if any(k in c[0] for k in opts.k.split(","))
             and not (opts.x and any(x in c[0] for x in opts.x.split(",")))]
    passed = 0
    for case in cases:
        ok, detail = run_case(opts.code, pristine, base, case)
        passed += ok
        if opts.v or not ok:
            print(f"{'PASS' if ok else 'FAIL'}  {case[0]:32s} {detail}", flush=True)
    print(f"{passed}/{len(cases)} cases handled ({opts.code})")
    if opts.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
