"""What every project file must hold, written once as data: structure, types, ranges and shapes.

Each state file the pipeline reads has one schema here: an `NpzFile` (arrays with dtypes, symbolic
shapes and value ranges), a `JsonFile` (a tree of `Obj`, `ListOf`, `Num`, `Str`, ...) or a
`JsonlFile` (one record schema per line). `check(value, spec)` walks a JSON tree and returns the
first problem as a phrase ("field 'std' is 0, expected > 0"), or None. Reading files and turning
problems into errors is `readers.py`'s job; nothing here touches the disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import N_CLASSES, N_PIXELS

# ------------------------------------------------------------------------------- JSON values


@dataclass(frozen=True)
class Num:
    """A JSON number (bool refused) in [low, high] (open ends with low_open/high_open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    optional: bool = False  # null allowed


@dataclass(frozen=True)
class Str:
    choices: tuple[str, ...] = ()
    optional: bool = False
    max_len: int = 10_000


@dataclass(frozen=True)
class Bool:
    optional: bool = False


@dataclass(frozen=True)
class ListOf:
    item: object
    min_len: int = 0
    optional: bool = False


@dataclass(frozen=True)
class Obj:
    """A JSON object: `fields` must be present (unless the spec is optional), others allowed."""

    fields: dict = field(default_factory=dict)
    optional: bool = False


@dataclass(frozen=True)
class AnyOf:
    options: tuple
    optional: bool = False


ANY = AnyOf(())  # anything JSON


def _name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def check(value, spec, where: str = "") -> str | None:
    """The first way `value` breaks `spec`, as a phrase naming the field; None when it fits."""
    at = f"field '{where}'" if where else "the content"
    if value is None:
        return None if getattr(spec, "optional", False) or spec is ANY else f"{at} is null"
    if isinstance(spec, AnyOf):
        if not spec.options or any(check(value, s, where) is None for s in spec.options):
            return None
        return f"{at} is {_name(value)} of the wrong kind"
    if isinstance(spec, Num):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{at} is {_name(value)}, expected a number"
        if not math.isfinite(value):
            return f"{at} is {value}, expected a finite number"
        if spec.integer and value != int(value):
            return f"{at} is {value}, expected an integer"
        if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
            return f"{at} is {value}, expected {'>' if spec.low_open else '>='} {spec.low}"
        if spec.high is not None and value > spec.high:
            return f"{at} is {value}, expected <= {spec.high}"
        return None
    if isinstance(spec, Str):
        if not isinstance(value, str):
            return f"{at} is {_name(value)}, expected a string"
        if spec.choices and value not in spec.choices:
            return f"{at} is {value[:40]!r}, expected one of {', '.join(spec.choices)}"
        return f"{at} is {len(value)} characters long" if len(value) > spec.max_len else None
    if isinstance(spec, Bool):
        return None if isinstance(value, bool) else f"{at} is {_name(value)}, expected true/false"
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return f"{at} is {_name(value)}, expected a list"
        if len(value) < spec.min_len:
            return f"{at} has {len(value)} items, expected at least {spec.min_len}"
        for i, item in enumerate(value):
            if (problem := check(item, spec.item, f"{where}[{i}]")) is not None:
                return problem
        return None
    if isinstance(spec, Obj):
        if not isinstance(value, dict):
            return f"{at} is {_name(value)}, expected an object"
        for key, sub in spec.fields.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                if not getattr(sub, "optional", False):
                    return f"field '{name}' is missing"
                continue
            if (problem := check(value[key], sub, name)) is not None:
                return problem
        return None
    raise TypeError(f"not a schema: {spec!r}")  # a programmer's mistake


@dataclass(frozen=True)
class JsonFile:
    what: str  # e.g. "the normalizer"
    root: object  # the schema of the whole document
    fix: str  # what to do, e.g. "Delete it and run `make normalize`."
    max_bytes: int = 64 << 20


@dataclass(frozen=True)
class JsonlFile:
    what: str
    record: Obj  # each line's schema; a line that breaks it is skipped with a warning
    max_bytes: int = 256 << 20


# ------------------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class Array:
    """An array with a dtype ("uint8", or a kind "i"/"f"), a shape of ints and names (a name
    takes the same size everywhere in the file), and inclusive value bounds."""

    dtype: str
    shape: tuple
    low: float | None = None
    high: float | None = None
    finite: bool = False


@dataclass(frozen=True)
class NpzFile:
    what: str
    arrays: dict  # name -> Array
    fix: str
    # checks across arrays: (arrays, sizes of the named dims) -> a problem phrase or None
    checks: tuple[Callable[[dict, dict], str | None], ...] = ()
    min_sizes: dict = field(default_factory=dict)  # named dim -> smallest allowed size


# ------------------------------------------------------------------------------ project files

FIX_DATA = "Delete it and run `make data` (digits download) again."
FIX_SPLIT = "Delete it and run `make split` again."
FIX_TRAIN = "Delete it and run `make train` again."


def _ids_in_order(a: dict, dims: dict) -> str | None:
    ids = a["test_ids"]
    if len(ids) and (ids[0] != 1 or (len(ids) > 1 and (ids[1:] - ids[:-1] != 1).any())):
        return "test_ids do not run 1, 2, 3, ... in order"
    return None


DIGITS = NpzFile(
    what="the parsed competition arrays",
    arrays={"train_x": Array("uint8", ("N", N_PIXELS)),
            "train_y": Array("uint8", ("N",), 0, N_CLASSES - 1),
            "test_x": Array("uint8", ("M", N_PIXELS)),
            "test_ids": Array("i", ("M",), 1, None)},
    checks=(_ids_in_order,), min_sizes={"N": 1, "M": 1}, fix=FIX_DATA)


def _split_rows_ok(a: dict, dims: dict) -> str | None:
    for name in ("train_idx", "dev_idx"):
        idx = a[name]
        if len(idx) > 1 and (idx[1:] <= idx[:-1]).any():
            return f"{name} is not sorted without repeats"
    both = len(a["train_idx"]) + len(a["dev_idx"])
    overlap = both - len(set(a["train_idx"].tolist()) | set(a["dev_idx"].tolist()))
    return f"{overlap} rows are in both train_idx and dev_idx" if overlap else None


def split_schema(n_rows: int) -> NpzFile:
    """split.npz for a train.csv of n_rows rows: indices in range, no overlap, neither empty."""
    return NpzFile(
        what="the train/dev split",
        arrays={"train_idx": Array("i", ("T",), 0, n_rows - 1),
                "dev_idx": Array("i", ("D",), 0, n_rows - 1)},
        checks=(_split_rows_ok,), min_sizes={"T": 1, "D": 1}, fix=FIX_SPLIT)


NORMALIZER = JsonFile(
    what="the normalizer",
    # pixel/255 lies in [0, 1], so its std is at most 0.5; fit_normalizer floors it at 1e-6
    root=Obj({"mean": Num(0.0, 1.0), "std": Num(1e-6, 0.5)}),
    fix="Delete it and run `make normalize` again.")

FRACTION = Num(0.0, 1.0, optional=True)
SECONDS = Num(0.0, None, optional=True)

METRICS = JsonFile(
    what="the training metrics",
    root=Obj({"model": Str(), "dev_accuracy": FRACTION, "params": Obj(optional=True),
              "train_seconds": SECONDS, "dev_loss": Num(0.0, None, optional=True),
              "members": ListOf(Obj({"seed": Num(integer=True),
                                     "dev_accuracy": FRACTION}), optional=True)}),
    fix=FIX_TRAIN)

HISTORY = JsonFile(
    what="the training history",
    root=ListOf(Obj({"seed": Num(integer=True), "best_epoch": Num(0, None, integer=True),
                     "epochs": ListOf(Obj())}), min_len=1),
    fix=FIX_TRAIN)

LEDGER = JsonlFile(
    what="the submissions ledger",
    record=Obj({"kind": Str(), "time": Str(optional=True), "sha256": Str(optional=True),
                "file": Str(optional=True), "ref": AnyOf((Num(integer=True), Str()), True),
                "status": Str(optional=True), "message": Str(optional=True),
                "public_score": AnyOf((Num(), Str()), True),
                "dev_accuracy": FRACTION}))

RUNS = JsonlFile(
    what="the run history",
    record=Obj({"time": Str(), "model": Str(optional=True), "dev_accuracy": FRACTION,
                "dev_loss": Num(optional=True), "train_seconds": SECONDS,
                "params": Obj(optional=True), "members": ListOf(ANY, optional=True)}))

KAGGLE_JSON = JsonFile(
    what="the Kaggle API key file",
    root=Obj({"username": Str(optional=True, max_len=200), "key": Str(optional=True, max_len=500)}),
    fix="Download a fresh kaggle.json from https://www.kaggle.com/settings/api.",
    max_bytes=64 << 10)

__all__ = ["ANY", "DIGITS", "HISTORY", "KAGGLE_JSON", "LEDGER", "METRICS", "NORMALIZER",
           "RUNS", "AnyOf", "Array", "Bool", "JsonFile", "JsonlFile", "ListOf", "NpzFile", "Num",
           "Obj", "Str", "check", "split_schema"]
