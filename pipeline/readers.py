"""Checked readers: each project file is read through one function that checks it against its
schema (`schemas.py`) and fails with one `StateFileError` line naming the file, what is wrong and
what to do. Append-only files (the ledger, the run history) never fail: a damaged line is
skipped with one warning.

Bounded before read: a file must be a regular file (not a folder, a device or a FIFO) under a
size cap, and an .npz member's declared shape must fit the bytes it holds, so a forged header
cannot make numpy allocate gigabytes. Writing files is `fileio.py`'s job.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from . import schemas as S
from .config import UserError
from .schemas import HISTORY, METRICS  # noqa: F401  (re-exported for the stages)

log = logging.getLogger("pipeline")

MAX_NPZ_BYTES = 4 << 30  # digits.npz is ~55 MB, model.npz a few MB
KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe (FIFO)",
         stat.S_IFSOCK: "a socket"}


class StateFileError(UserError):
    """A project file that is missing, damaged or does not hold what its schema says."""


def display(path: Path) -> str:
    """`path` relative to the current directory when inside it (data/interim/digits.npz)."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def fail(path: Path, problem: str, fix: str) -> StateFileError:
    return StateFileError(f"{display(path)}: {problem}. {fix}".strip())


def require_file(path: Path, fix: str, *, max_bytes: int | None = None,
                 missing: str | None = None) -> int:
    """Check `path` is a regular file (symlinks followed) of at most max_bytes; -> its size."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise fail(path, "is a symbolic link to nothing", fix) from None
        raise StateFileError(missing or f"{display(path)} is missing. {fix}") from None
    except OSError as e:
        raise fail(path, f"cannot be read ({e.strerror})", fix) from None
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise fail(path, f"is {kind}, not a regular file", fix)
    if max_bytes is not None and st.st_size > max_bytes:
        raise fail(path, f"is {st.st_size:,} bytes, more than the {max_bytes:,} such a file can "
                         f"hold", fix)
    if not os.access(path, os.R_OK):
        raise fail(path, "is not readable (permission denied)", fix)
    return st.st_size


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(raw: bytes):
    """Strict JSON from bytes: UTF-8, no NaN/Infinity; ValueError (UnicodeError) otherwise."""
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)


# -------------------------------------------------------------------------------------- JSON


def read_json(path: Path, schema: S.JsonFile):
    """The document in `path`, checked against `schema`; StateFileError otherwise."""
    require_file(path, schema.fix, max_bytes=schema.max_bytes)
    try:
        value = parse_json(Path(path).read_bytes())
    except UnicodeDecodeError:
        raise fail(path, f"is not UTF-8 text (is it {schema.what}?)", schema.fix) from None
    except ValueError as e:
        raise fail(path, f"is not valid JSON ({str(e).splitlines()[0][:80]})", schema.fix) from None
    except RecursionError:
        raise fail(path, "is nested too deeply to be " + schema.what, schema.fix) from None
    if (problem := S.check(value, schema.root)) is not None:
        raise fail(path, f"{problem} (in {schema.what})", schema.fix)
    return value


def read_json_or_none(path: Path, schema: S.JsonFile):
    """Like read_json, but a missing file is None (e.g. metrics before any training)."""
    return read_json(path, schema) if Path(path).exists() or Path(path).is_symlink() else None


def read_json_or_warn(path: Path, schema: S.JsonFile):
    """For a file the caller can do without (metrics for a ledger line): the checked document,
    or None when it is missing, or None after ONE warning saying what is wrong with it."""
    try:
        return read_json_or_none(path, schema)
    except StateFileError as e:
        log.warning("%s; going on without it", str(e).split(". ")[0])
        return None


def read_normalizer(path: Path) -> dict[str, float]:
    return read_json(path, S.NORMALIZER)


# -------------------------------------------------------------------------------------- JSONL


def read_jsonl(path: Path, schema: S.JsonlFile) -> list[dict]:
    """Every record of an append-only file that fits `schema`, oldest first. Damaged lines (not
    UTF-8, not JSON, not an object, wrong field types) are skipped with ONE warning; an
    unreadable file is an empty history, with a warning. Never raises for the file's content."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    try:
        require_file(path, "")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > schema.max_bytes:  # keep the newest records
                f.seek(size - schema.max_bytes)
                f.readline()
            raw = f.read()
    except (UserError, OSError) as e:
        log.warning("%s: cannot read %s (%s); treating it as empty", display(path), schema.what,
                    str(e).split(": ", 1)[-1])
        return []
    records, bad, first = [], 0, ""
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line)
            problem = S.check(rec, schema.record)
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except (ValueError, RecursionError):
            problem = "not JSON"
        if problem is None:
            records.append(rec)
            continue
        bad += 1
        first = first or f"line {number}: {problem}"
    if bad:
        log.warning("%s: skipped %d damaged line%s of %s (%s); the file is left as it is",
                    display(path), bad, "s" if bad > 1 else "", schema.what, first)
    return records


def check_appendable(path: Path, what: str) -> None:
    """Refuse, before anything is written, an append-only file that cannot take a line."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        require_file(path, f"Move it aside so {what} can be kept.")
        if not os.access(path, os.W_OK):
            raise fail(path, "is not writable (permission denied)",
                       f"Fix its permissions so {what} can be kept.")


# ---------------------------------------------------------------------------------------- npz


def _npy_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def check_npz_members(path: Path, fix: str, names=None) -> None:
    """Each member (or those named) is a plain .npy whose declared size fits its bytes."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            for name in names if names is not None else [n[:-4] for n in infos]:
                info = infos.get(f"{name}.npy")
                if info is None:
                    continue  # reported as missing by the caller
                with z.open(info) as f:
                    shape, _, dtype = _npy_header(f)
                if dtype.hasobject:
                    raise fail(path, f"{name} holds Python objects (pickle), refused", fix)
                if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
                    raise fail(path, f"{name} declares shape {shape} of {dtype}, more than "
                                     f"its {info.file_size:,} bytes", fix)
    except UserError:
        raise
    except Exception as e:  # BadZipFile, ValueError from the header parser, EOFError, ...
        raise fail(path, f"is truncated or not an .npz file ({type(e).__name__})", fix) from None


def read_npz(path: Path, schema: S.NpzFile) -> dict[str, np.ndarray]:
    """The arrays of `schema` from `path`, with dtypes, shapes, ranges and cross checks verified."""
    require_file(path, schema.fix, max_bytes=MAX_NPZ_BYTES)
    check_npz_members(path, schema.fix, list(schema.arrays))
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in schema.arrays if k not in z.files]
            if missing:
                raise fail(path, f"has no array {', '.join(missing)} (is it {schema.what}?)",
                           schema.fix)
            arrays = {k: z[k] for k in schema.arrays}
    except UserError:
        raise
    except Exception as e:  # a CRC error, a truncated member, ...
        raise fail(path, f"is damaged ({type(e).__name__}: {str(e)[:60]})", schema.fix) from None
    dims: dict[str, int] = {}
    for name, spec in schema.arrays.items():
        if (problem := _check_array(arrays[name], spec, dims)) is not None:
            raise fail(path, f"{name} {problem}", schema.fix)
    for dim, low in schema.min_sizes.items():
        if dims.get(dim, low) < low:
            empty = [k for k, a in schema.arrays.items() if dim in a.shape]
            raise fail(path, f"{', '.join(empty)} has {dims[dim]} rows, expected at least {low}",
                       schema.fix)
    for cross in schema.checks:
        if (problem := cross(arrays, dims)) is not None:
            raise fail(path, problem, schema.fix)
    return arrays


def _check_array(a: np.ndarray, spec: S.Array, dims: dict) -> str | None:
    kind_ok = a.dtype.kind == spec.dtype if len(spec.dtype) == 1 else a.dtype == spec.dtype
    if not kind_ok:
        want = {"i": "integers", "u": "unsigned integers", "f": "floats"}.get(spec.dtype,
                                                                              spec.dtype)
        return f"has dtype {a.dtype}, expected {want}"
    if a.ndim != len(spec.shape):
        return f"has shape {a.shape}, expected {len(spec.shape)} dimensions"
    for size, want in zip(a.shape, spec.shape):
        if isinstance(want, str):
            want = dims.setdefault(want, size)
        if size != want:
            return f"has shape {a.shape}, expected {_shape(spec.shape, dims)}"
    if a.size == 0:
        return None
    if spec.finite or a.dtype.kind == "f":
        if not np.isfinite(a).all():
            return "holds NaN or infinite values"
    lo, hi = (np.iinfo(a.dtype).min, np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else (None,
                                                                                        None)
    if spec.low is not None and (lo is None or spec.low > lo) and a.min() < spec.low:
        return f"holds {a.min()}, below the smallest allowed value {spec.low}"
    if spec.high is not None and (hi is None or spec.high < hi) and a.max() > spec.high:
        return f"holds {a.max()}, above the largest allowed value {spec.high}"
    return None


def _shape(shape: tuple, dims: dict) -> str:
    return "(" + ", ".join(str(dims.get(s, s)) for s in shape) + ")"


def npz_rows(path: Path, name: str) -> int | None:
    """The length of array `name` in an .npz, from its header alone; None when unreadable."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{name}.npy") as f:
            shape = _npy_header(f)[0]
        return int(shape[0]) if shape else None
    except Exception:  # any damage: the reader proper will name it
        return None


def read_digits(path: Path) -> dict[str, np.ndarray]:
    return read_npz(path, S.DIGITS)


def read_split(path: Path, n_rows: int) -> dict[str, np.ndarray]:
    return read_npz(path, S.split_schema(n_rows))


def submission_reference(parsed: Path) -> dict:
    """What a submission is checked against: sample_submission.csv's ImageIds and train.csv's
    labels from digits.npz when it exists, else ImageIds 1..28000 and uniform label shares."""
    if not Path(parsed).exists() and not Path(parsed).is_symlink():
        return {"image_ids": None, "train_labels": None}
    arrays = read_digits(parsed)
    return {"image_ids": arrays["test_ids"], "train_labels": arrays["train_y"]}


# -------------------------------------------------------------------------------------- model


def read_model(path: Path):
    """The models of model.npz, each checked: finite weights, BatchNorm variances >= 0, and a
    probe forward pass on a blank image giving 10 finite logits (so a spec that is consistent
    with its weights but not a digit classifier is refused here, not mid-prediction)."""
    from .nn import ModelFileError, load_models
    fix = "Delete it and run `make train` again."
    require_file(path, fix, max_bytes=MAX_NPZ_BYTES)
    check_npz_members(path, fix)
    try:
        models = load_models(path)
    except ModelFileError as e:
        raise StateFileError(str(e)) from None
    probe = np.zeros((2, 28, 28, 1), np.float32)
    for i, m in enumerate(models):
        which = f"model {i + 1} of {len(models)}" if len(models) > 1 else "the model"
        bad = [k for k, v in m.params.items() if not np.isfinite(v).all()]
        if bad:
            raise fail(path, f"{which} has NaN or infinite weights ({bad[0]}); the training "
                             f"diverged", "Retrain with a lower --lr (`make train`).")
        neg = [k for k, v in m.params.items() if k.endswith(".var") and (v < 0).any()]
        if neg:
            raise fail(path, f"{which} has a negative BatchNorm variance ({neg[0]})", fix)
        try:
            out = m.forward(probe)
        except Exception as e:  # shapes that do not chain, a bad layer option, ...
            raise fail(path, f"{which} cannot run on a 28x28 image ({type(e).__name__}: "
                             f"{str(e)[:80]})", fix) from None
        if out is None or out.shape != (2, 10) or not np.isfinite(out).all():
            got = None if out is None else out.shape
            raise fail(path, f"{which} does not map a 28x28 image to 10 finite scores (got "
                             f"{got})", fix)
    return models


__all__ = ["HISTORY", "METRICS", "StateFileError", "check_appendable",
           "check_npz_members", "display", "npz_rows", "parse_json", "read_digits", "read_json",
           "read_json_or_none", "read_json_or_warn", "read_jsonl", "read_model",
           "read_normalizer", "read_npz", "read_split", "require_file", "submission_reference"]
