"""How well `predict-image` reads digits photographed on paper: train.csv digits put on
synthetic photos (tests/test_imageio.py's `photo`: a lighting gradient, a shadowed edge, noise,
either polarity, small to large), prepared by imageio.to_mnist and read by the tests' small MLP.

    .venv/bin/python scripts/photo_check.py [--per-label 6] [--against COMMIT]

Prints, per kind of photo, how many digits were misread and how close the prepared 28x28 is to
the clean digit prepared the same way (correlation). `--against COMMIT` also runs the
`imageio.py` of that commit (e.g. aaa9c92, before the photo handling) on the same photos.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def imageio_at(commit: str):
    """pipeline/imageio.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:pipeline/imageio.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "imageio_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pipeline.imageio_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-label", type=int, default=6, help="digits of each label")
    parser.add_argument("--against", help="also run imageio.py of this git commit")
    args = parser.parse_args()
    import test_imageio as t
    from conftest import find_real_zip

    from pipeline.imageio import to_mnist
    real = find_real_zip()
    if real is None:
        sys.exit("the competition zip was not found (see tests/conftest.py)")
    rows = t.load_rows(real)
    classify = t.train_classifier(rows)
    picks = t.pick(rows, classify, n=args.per_label)
    versions = {"now": to_mnist}
    if args.against:
        versions[args.against] = imageio_at(args.against).to_mnist
    for shape, dark, shadow, *_ in t.CASES:
        for name, prepare in versions.items():
            start, wrong, similarity = time.perf_counter(), 0, []
            for k, (digit, label, clean) in enumerate(picks):
                try:
                    got = prepare(t.photo(digit, shape, dark_ink=dark, shadow=shadow, seed=k))
                except Exception:  # "no digit" and the like count as misread
                    wrong += 1
                    similarity.append(0.0)
                    continue
                similarity.append(np.corrcoef(got.ravel().astype(float),
                                              clean.ravel().astype(float))[0, 1])
                wrong += int(classify(got.reshape(1, -1)).argmax() != label)
            ms = 1000 * (time.perf_counter() - start) / len(picks)
            ink = "dark ink" if dark else "light ink"
            print(f"{name:>8}  {shape[0]}x{shape[1]} {ink}, shadow {shadow:6}: misread "
                  f"{wrong}/{len(picks)}, similarity median {np.median(similarity):.2f} "
                  f"min {min(similarity):.2f}, {ms:.0f} ms per photo")


if __name__ == "__main__":
    main()
