"""The battery's cases (see battery.py): the tools that damage a project's files, and each case
as (name, damage, command, expected exit code, extra check)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

TRAIN = ["--model", "mlp", "--epochs", "1", "--hidden", "32"]


# --------------------------------------------------------------------------------- damage kit


def npz_edit(path: Path, fn):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays = fn(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def spec_edit(fn):
    """Edit model 0's spec and params together (self-consistent)."""
    def edit(a):
        spec = json.loads(str(a["m0/spec"]))
        params = {k[3:]: v for k, v in a.items() if k.startswith("m0/") and k != "m0/spec"}
        spec, params = fn(spec, params)
        rest = {k: v for k, v in a.items() if not k.startswith("m0/")}
        return {**rest, "m0/spec": np.array(json.dumps(spec)),
                **{f"m0/{k}": v for k, v in params.items()}}
    return edit


def out_five(spec, p):
    spec["layers"][-1]["out"] = 5
    p["out.w"], p["out.b"] = p["out.w"][:, :5], p["out.b"][:5]
    return spec, p


def wrong_input(spec, p):
    spec["layers"][1]["in"] = 392
    p["fc1.w"] = p["fc1.w"][:392]
    return spec, p


def unknown_layer(spec, p):
    spec["layers"].insert(1, {"type": "attention", "name": "att"})
    return spec, p


def bad_act(spec, p):
    for ly in spec["layers"]:
        if ly["type"] == "act":
            ly["fn"] = "swish"
    return spec, p


def nan_weights(a):
    k = next(k for k in a if k.endswith(".w"))
    a[k] = a[k].copy()
    a[k][0, 0] = np.nan
    return a


def write(path: Path, data: bytes | str):
    path.unlink(missing_ok=True) if path.is_file() or path.is_symlink() else None
    if path.is_dir():
        shutil.rmtree(path)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def to_dir(path: Path):
    path.unlink()
    path.mkdir()


def to_device(path: Path):
    path.unlink()
    path.symlink_to("/dev/zero")


def truncate(path: Path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip(path: Path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def zip_members(path: Path, change) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members = change(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)


def drop_last_row(members):
    for n in ("test.csv", "sample_submission.csv"):
        members[n] = members[n].rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n"
    return members


def encrypt_flag(path: Path):
    """Set the 'encrypted' bit of every member in the local and central headers."""
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(sig)
        while i >= 0:
            flags = struct.unpack_from("<H", data, i + off)[0]
            struct.pack_into("<H", data, i + off, flags | 1)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def five_row_zip(members):
    members["train.csv"] = b"\n".join(members["train.csv"].split(b"\n")[:6]) + b"\n"
    return members


def submission(labels) -> str:
    return "ImageId,Label\n" + "".join(f"{i},{k}\n" for i, k in enumerate(labels, 1))


def png(path: Path, size=(14000, 14000)):
    from PIL import Image
    Image.new("1", size).save(path, optimize=True)


def ledger_line(root: Path, raw: bytes):
    p = root / "submissions" / "ledger.jsonl"
    with open(p, "ab") as f:
        f.write(raw + b"\n")


def runs_line(root: Path, raw: bytes):
    with open(root / "data" / "runs.jsonl", "ab") as f:
        f.write(raw + b"\n")


# ------------------------------------------------------------------------------------- cases

D, S, N = "data/interim/digits.npz", "data/interim/split.npz", "data/processed/normalizer.json"
M, ME, H = "data/models/model.npz", "data/models/metrics.json", "data/models/history.json"
L, R, Z = "submissions/ledger.jsonl", "data/runs.jsonl", "data/raw/digit-recognizer.zip"
SUB = "submissions/submission.csv"
MAY_CHANGE = {"raw zip 5-row train.csv": {D}}  # the download stage parses the new zip first


def ledger_grew(root, before):
    lines = (root / L).read_bytes().split(b"\n")
    return json.loads(lines[-2]).get("kind") == "written"


def submission_valid(root, before):
    text = (root / SUB).read_text()
    return text.startswith("ImageId,Label\n") and text.count("\n") == 28001


TRAIN_CMD = ["train", *TRAIN]


def big_file(path: Path, size=2 << 30):
    path.touch()
    os.truncate(path, size)  # sparse: 2 GB long, no disk used


def kaggle_json(root: Path, text: str):
    (root / "kaggle").mkdir(exist_ok=True)
    write(root / "kaggle" / "kaggle.json", text)


def npz_case(name, rel, fn, cmd):
    return (name, lambda r: npz_edit(r / rel, fn), cmd, 1, None)


CASES = [
    # digits.npz
    ("digits truncated", lambda r: truncate(r / D), ["split", "--split-seed", "3"], 1, None),
    ("digits empty", lambda r: write(r / D, b""), ["normalize"], 1, None),
    ("digits random bytes", lambda r: write(r / D, os.urandom(5000)), ["predict"], 1, None),
    ("digits bit flipped", lambda r: flip(r / D, 0.3), ["split", "--split-seed", "3"], 1, None),
    npz_case("digits wrong keys", D, lambda a: {("X" if k == "train_x" else k): v
                                                for k, v in a.items()}, ["normalize"]),
    npz_case("digits float pixels", D, lambda a: {**a, "train_x": a["train_x"].astype(float)},
             ["split", "--split-seed", "3"]),
    npz_case("digits 783 columns", D, lambda a: {**a, "test_x": a["test_x"][:, :783]},
             ["predict"]),
    npz_case("digits label 12", D, lambda a: {**a, "train_y": np.where(
        np.arange(len(a["train_y"])) == 7, 12, a["train_y"]).astype(np.uint8)},
        ["split", "--split-seed", "3"]),
    npz_case("digits labels/rows mismatch", D, lambda a: {**a, "train_y": a["train_y"][:-3]},
             ["split", "--split-seed", "3"]),
    npz_case("digits test_ids shuffled", D, lambda a: {**a, "test_ids": a["test_ids"][::-1]
                                                       .copy()}, ["predict", "--tta"]),
    ("digits is a folder", lambda r: to_dir(r / D), ["normalize"], 1, None),
    ("digits -> /dev/zero", lambda r: to_device(r / D), ["split", "--split-seed", "3"], 1, None),
    ("digits damaged, show", lambda r: truncate(r / D, 0.9), ["show", "3"], 1, None),
    ("digits damaged, validate", lambda r: truncate(r / D, 0.9), ["validate"], 1, None),
    # split.npz
    npz_case("split index out of range", S, lambda a: {**a, "dev_idx": a["dev_idx"] + 10**6},
             ["normalize"]),
    npz_case("split overlap", S, lambda a: {**a, "dev_idx": np.sort(np.concatenate(
        [a["dev_idx"], a["train_idx"][:5]]))}, ["normalize"]),
    npz_case("split empty dev", S, lambda a: {**a, "dev_idx": a["dev_idx"][:0]}, TRAIN_CMD),
    npz_case("split empty train", S, lambda a: {**a, "train_idx": a["train_idx"][:0]},
             ["normalize"]),
    npz_case("split negative index", S, lambda a: {**a, "train_idx": a["train_idx"] - 50},
             ["normalize"]),
    npz_case("split float indices", S, lambda a: {**a, "dev_idx": a["dev_idx"] * 1.0},
             ["normalize"]),
    ("split truncated", lambda r: truncate(r / S), ["normalize"], 1, None),
    # normalizer.json
    ("normalizer malformed", lambda r: write(r / N, '{"mean": 0.1, "std":'), ["predict"], 1,
     None),
    ("normalizer a string", lambda r: write(r / N, '"hello"'), ["predict", "--tta"], 1, None),
    ("normalizer NaN", lambda r: write(r / N, '{"mean": NaN, "std": 0.3}'), ["predict"], 1,
     None),
    ("normalizer std 0", lambda r: write(r / N, '{"mean": 0.1, "std": 0}'), TRAIN_CMD, 1, None),
    ("normalizer std negative", lambda r: write(r / N, '{"mean": 0.1, "std": -0.3}'),
     ["predict"], 1, None),
    ("normalizer missing key", lambda r: write(r / N, '{"mean": 0.1}'), ["show", "2"], 1, None),
    ("normalizer std a string", lambda r: write(r / N, '{"mean": 0.1, "std": "0.3"}'),
     ["predict"], 1, None),
    ("normalizer not UTF-8", lambda r: write(r / N, b'{"mean": \xff}'), ["predict"], 1, None),
    # model.npz
    ("model truncated", lambda r: truncate(r / M), ["predict"], 1, None),
    npz_case("model NaN weights", M, nan_weights, ["predict"]),
    npz_case("model 5 outputs", M, spec_edit(out_five), ["predict"]),
    npz_case("model wrong input width", M, spec_edit(wrong_input), ["predict"]),
    npz_case("model unknown layer", M, spec_edit(unknown_layer), ["predict"]),
    npz_case("model unknown activation", M, spec_edit(bad_act), ["show", "1"]),
    npz_case("model spec not JSON", M, lambda a: {**a, "m0/spec": np.array("{oops")},
             ["predict"]),
    npz_case("model no models", M, lambda a: {**a, "n_models": np.array(0)}, ["predict"]),
    npz_case("model format", M, lambda a: {**a, "format": np.array("v0")}, ["predict"]),
    ("model is a folder", lambda r: to_dir(r / M), ["predict"], 1, None),
    # metrics / history
    ("metrics malformed", lambda r: write(r / ME, "{"), ["predict", "--tta"], 0,
     "metrics.json: is not valid JSON"),  # predict goes on: it only labels its ledger line
    ("metrics a list", lambda r: write(r / ME, "[1, 2]"), ["predict", "--tta"], 0,
     "metrics.json: the content is a list"),
    ("metrics accuracy a string", lambda r: write(r / ME, '{"model": "mlp", "dev_accuracy": '
                                                  '"high"}'), ["report"], 1, None),
    ("history malformed", lambda r: write(r / H, "[{"), ["report"], 1, None),
    ("history wrong types", lambda r: write(r / H, '[{"seed": "a", "best_epoch": 1, '
                                               '"epochs": []}]'), ["report"], 1, None),
    # ledger: survived, one warning, a new line kept
    ("ledger non-UTF-8 line", lambda r: ledger_line(r, b"\xff\xfe bad"), ["predict", "--tta"],
     0, ledger_grew),
    ("ledger not-JSON line", lambda r: ledger_line(r, b"{{{"), ["predict", "--tta"], 0,
     ledger_grew),
    ("ledger JSON list line", lambda r: ledger_line(r, b"[1, 2]"), ["predict", "--tta"], 0,
     ledger_grew),
    ("ledger wrong field types", lambda r: ledger_line(r, b'{"kind": 5, "ref": [1]}'),
     ["predict", "--tta"], 0, ledger_grew),
    ("ledger damaged, submissions", lambda r: ledger_line(r, b"\xff[1]"),
     ["submissions", "--offline"], 0, None),
    ("ledger upload line bad ref", lambda r: ledger_line(
        r, b'{"kind": "upload", "ref": {"a": 1}, "sha256": 3}'), ["submissions", "--offline"],
     0, None),
    ("ledger is a folder", lambda r: to_dir(r / L), ["predict", "--tta"], 1, None),
    # runs.jsonl
    ("runs non-UTF-8", lambda r: runs_line(r, b"\xff"), ["runs"], 0, None),
    ("runs JSON not object", lambda r: runs_line(r, b'"x"'), ["runs"], 0, None),
    ("runs wrong types", lambda r: runs_line(r, b'{"time": 5, "dev_accuracy": "x"}'), ["runs"],
     0, None),
    ("runs is a folder", lambda r: to_dir(r / R), ["train", "--model", "mlp", "--epochs", "2",
                                                   "--hidden", "32"], 1, "runs.jsonl"),
    # raw zip
    ("raw zip is a folder", lambda r: (r / Z).unlink() or (r / Z).mkdir(), ["download"], 1,
     None),
    ("raw zip -> /dev/zero", lambda r: to_device(r / Z), ["download"], 1, None),
    ("raw zip encrypted", lambda r: encrypt_flag(r / Z), ["download"], 1, None),
    ("raw zip truncated", lambda r: truncate(r / Z), ["download"], 1, None),
    ("raw zip empty", lambda r: write(r / Z, b""), ["download"], 1, None),
    ("raw zip 27999 test rows", lambda r: zip_members(r / Z, drop_last_row), ["download"], 1,
     None),
    ("raw zip 5-row train.csv", lambda r: zip_members(r / Z, five_row_zip), ["run", *TRAIN], 1,
     None),
    # submissions
    ("submission 2 GB", lambda r: big_file(r / "big.csv"), ["validate", "big.csv"], 1, None),
    ("submission all zeros", lambda r: write(r / SUB, submission([0] * 28000)), ["validate"], 1,
     "degenerate"),
    ("submission three labels", lambda r: write(r / SUB, submission(
        [(i % 3) for i in range(28000)])), ["validate"], 1, "degenerate"),
    ("upload degenerate", lambda r: write(r / SUB, submission([7] * 28000)),
     ["upload", "-m", "x"], 1, "degenerate"),
    ("upload 27999 rows", lambda r: write(r / SUB, submission([i % 10 for i in range(27999)])),
     ["upload", "-m", "x"], 1, "rows"),
    # credentials
    ("kaggle.json malformed", lambda r: kaggle_json(r, '{"username": "a", "key": '),
     ["submissions"], 1, "not valid JSON"),
    ("kaggle.json key a number", lambda r: kaggle_json(r, '{"username": "a", "key": 12345}'),
     ["submissions"], 1, "expected a string"),
    ("kaggle.json a list", lambda r: kaggle_json(r, '["a", "b"]'), ["upload", "-m", "x"], 1,
     "expected an object"),
    ("submission is a FIFO", lambda r: os.mkfifo(r / "fifo.csv"), ["validate", "fifo.csv"], 1,
     None),
    ("submission is a folder", lambda r: (r / "d.csv").mkdir(), ["validate", "d.csv"], 2,
     None),  # click's usage error naming the argument
    # images
    ("image 14000x14000", lambda r: png(r / "big.png"), ["predict-image", "big.png"], 1, None),
    ("image not an image", lambda r: write(r / "x.png", "hello"), ["predict-image", "x.png"], 1,
     None),
    ("image truncated", lambda r: png(r / "t.png", (300, 300)) or truncate(r / "t.png", 0.3),
     ["predict-image", "t.png"], 1, None),
    ("image empty", lambda r: write(r / "e.png", b""), ["predict-image", "e.png"], 1, None),
    ("image -> /dev/zero", lambda r: (r / "z.png").symlink_to("/dev/zero"),
     ["predict-image", "z.png"], 1, None),
    # options
    ("dev-fraction 0.0001", None, ["split", "--dev-fraction", "0.0001"], 1, None),
    ("dev-fraction 0.99999", None, ["split", "--dev-fraction", "0.99999"], 1, None),
    ("hidden 100000000", None, ["train", "--model", "mlp", "--hidden", "100000000"], 1, None),
    ("batch-size 10^9 cnn, all rows", None, ["run", "--model", "cnn", "--max-train", "0",
                                            "--batch-size", "1000000000"], 1, "memory"),
    ("lr 1e30 then predict", None, ["train", "--model", "mlp", "--epochs", "1", "--hidden", "32",
                                    "--lr", "1e30"], 1, "then-predict"),
    # params.toml
    ("params.toml malformed", lambda r: write(r / "params.toml", "[train\nlr = "), ["predict"],
     1, "params.toml"),
    ("params.toml -> /dev/zero", lambda r: (r / "params.toml").unlink(missing_ok=True) or
     (r / "params.toml").symlink_to("/dev/zero"), ["split"], 1, "params.toml"),
    ("params.toml wrong type", lambda r: write(r / "params.toml", '[split]\ndev_fraction = "a"'),
     ["split"], 1, "params.toml"),
    # environment
    ("data/cache is a file", lambda r: shutil.rmtree(r / "data/cache", ignore_errors=True) or
     write(r / "data/cache", "x"), ["split", "--split-seed", "4"], 1, None),
    ("submission mode kept", lambda r: os.chmod(r / SUB, 0o640), ["predict", "--tta"], 0,
     lambda r, b: oct((r / SUB).stat().st_mode & 0o777) == "0o640"),
]
