"""filekind: what a file is, judged on real files written by the libraries that make them."""

from __future__ import annotations

import gzip
import zipfile

import matplotlib.image as mpimg
import numpy as np
import pytest

from pipeline.filekind import describe, describe_bytes


def write(tmp_path, kind):
    path = tmp_path / f"file-{kind}"
    picture = np.random.default_rng(0).random((8, 8))
    if kind in ("png", "jpeg", "bmp", "gif", "tiff", "webp"):
        from PIL import Image
        Image.fromarray((picture * 255).astype(np.uint8)).save(path, format=kind.upper())
    elif kind == "matplotlib png":
        mpimg.imsave(path, picture, format="png")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("submission.csv", "ImageId,Label\n1,0\n")
    elif kind == "gzip":
        path.write_bytes(gzip.compress(b"ImageId,Label\n1,0\n"))
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, picture)
    elif kind == "utf-16":
        path.write_text("ImageId,Label\n1,0\n", encoding="utf-16")
    elif kind == "latin-1":
        path.write_bytes("ImageId,Label\n1,0 café\n".encode("latin-1"))
    elif kind == "utf-8":
        path.write_text("ImageId,Label\n1,0 café\n", encoding="utf-8")
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, expected", [
    ("png", "a PNG image"), ("matplotlib png", "a PNG image"), ("jpeg", "a JPEG image"),
    ("bmp", "a BMP image"), ("gif", "a GIF image"), ("tiff", "a TIFF image"),
    ("webp", "a WebP image"), ("zip", "a zip archive"), ("gzip", "a gzip-compressed file"),
    ("npy", "a NumPy .npy array"), ("utf-16", "UTF-16 text"),
    ("latin-1", "an encoding other than UTF-8"),
    ("utf-8", "UTF-8 text"), ("empty", "an empty file"),
])
def test_each_kind_of_file_is_named(tmp_path, kind, expected):
    # a file of each kind, made by the library that writes it, is described by what it is
    assert expected in describe(write(tmp_path, kind))


def test_random_bytes_are_binary_data_and_a_cut_character_is_still_text():
    # bytes with no known signature are "binary data"; UTF-8 cut mid-character at the end of the
    # sample is still text
    rng = np.random.default_rng(1)
    assert describe_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()) == "binary data"
    text = b"a" + ("é" * 3000).encode()[:4095]  # 4096 bytes, the last character cut
    assert describe_bytes(text) == "UTF-8 text"
