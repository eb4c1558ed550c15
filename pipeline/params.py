"""Every parameter of the pipeline, declared once: name, type, each model's default, the valid
range or choices, the models it applies to, and its help text.

Everything else is derived from `PARAMS`: the click options (`cli.py`), the make variables
(`NAME` upper-cased, read by `cli.py` from make's command line), validation (`coerce`), the
config dataclasses below, the persisted `params.toml` (`paramfile.py`), the report's parameter
table, the runs table and the cache key (the resolved values). Choices come from the registries
in `pipeline.nn`, so registering an optimizer puts it in `--help`. Per-model defaults live with
the architectures, in `pipeline.nn.models.DEFAULTS`; `default` below is the fallback for a model
that does not list the parameter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import N_TEST, UserError
from .nn.augment import parse_augment
from .nn.init import INITS
from .nn.layers import ACTIVATIONS
from .nn.models import ARCHITECTURES, DEFAULTS, parse_plan
from .nn.optim import OPTIMIZERS
from .nn.schedules import SCHEDULES

MODELS = tuple(ARCHITECTURES)


class ParamError(UserError, ValueError):
    """A parameter value outside its declared type, range or choices (usage error, exit 2)."""


@dataclass(frozen=True)
class Param:
    name: str  # the option is --name-with-dashes, the make variable NAME
    section: str  # split | train | model (per-model, stored under [<model>]) | predict
    kind: str  # int | float | str | bool | sizes (comma-separated positive ints)
    help: str
    default: object = None  # the value for a model whose DEFAULTS does not list it
    models: tuple[str, ...] = MODELS  # the models it applies to
    choices: Callable[[], tuple[str, ...]] | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    check: Callable[[object], object] | None = None  # raises ValueError on a bad value
    field: str = ""  # the config dataclass field, when it differs from `name`

    @property
    def attr(self) -> str:
        return self.field or self.name

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def make_var(self) -> str:
        return self.name.upper()

    def default_for(self, model: str):
        """This parameter's default for `model` (the model's measured DEFAULTS first)."""
        if self.section == "model":
            return DEFAULTS.get(model, {}).get(self.name, self.default)
        return self.default

    def range_text(self) -> str:
        if self.choices is not None:
            return "|".join(self.choices())
        if self.lo is None and self.hi is None:
            return ""
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else _fmt(self.lo)
        hi = "inf" if self.hi is None else _fmt(self.hi)
        return f"{left}{lo}, {hi}{right}"


def _registry(reg) -> Callable[[], tuple[str, ...]]:
    return lambda: tuple(reg)


def _augment(value):
    parse_augment(value)
    return value


def _plan(value):
    parse_plan(value)
    return value


PARAMS: tuple[Param, ...] = (
    # ---- split
    Param("dev_fraction", "split", "float", "Share of train.csv held out (stratified) to "
          "measure accuracy on: a dev-split figure, not the cross-validated estimate.",
          default=0.1, lo=0, hi=1, lo_open=True, hi_open=True),
    Param("split_seed", "split", "int", "Seed of the train/dev shuffle (and of the folds, with "
          "folds).", default=0, field="seed"),
    Param("max_train", "split", "int", "Train on at most this many rows (stratified), for "
          "quick experiments (with folds: cross-validate that many); 0 = all.", default=0,
          lo=0),
    # ---- train: one value whatever the model
    Param("model", "train", "str", "Network: cnn (best), mlp, or seed (the 784-10-10 "
          "baseline).", default="cnn", choices=_registry(ARCHITECTURES)),
    Param("seed", "train", "int", "Seed of initialization, shuffling and augmentation.",
          default=0),
    Param("patience", "train", "int", "Stop after this many epochs without dev improvement "
          "(0: never stop early).", default=0, lo=0),
    Param("refit", "train", "bool", "After choosing the epoch on dev, retrain on every "
          "labelled row for that many epochs; with folds: after the CV, train the ensemble on "
          "every row for the fixed epochs, and those models are the submission.",
          default=False),
    Param("folds", "train", "int", "K-fold cross-validation: K fold models, each trained on "
          "the other folds for the fixed epochs (last epoch kept) and scored on its own, are "
          "the submission, with the out-of-fold estimate; 0 or 1: the single dev split.",
          default=0, lo=0),
    Param("pseudo", "train", "float", "Pseudo-labels (transductive; with folds): train a "
          "second round with the test rows the first round labels with probability >= this "
          "added, e.g. 0.995; 0: off.", default=0.0, lo=0, hi=1, hi_open=True),
    # ---- train: each model has its own default (pipeline/nn/models.py DEFAULTS)
    Param("ensemble", "model", "int", "Train this many models (seeds seed, seed+1, ...; with "
          "folds, per fold), JOBS at a time, and average their probabilities.", default=1,
          lo=1),
    Param("epochs", "model", "int", "Training epochs (full-batch iterations for seed).", lo=1),
    Param("batch_size", "model", "int", "Mini-batch size (seed: the whole train set).", lo=1),
    Param("lr", "model", "float", "Peak learning rate.", lo=0, lo_open=True),
    Param("optimizer", "model", "str", "Optimizer.", choices=_registry(OPTIMIZERS)),
    Param("schedule", "model", "str", "Learning-rate schedule.", choices=_registry(SCHEDULES)),
    Param("weight_decay", "model", "float", "Decoupled weight decay.", lo=0),
    Param("hidden", "model", "sizes", "Hidden layer sizes, e.g. 512,256.",
          models=("mlp", "seed")),
    Param("activation", "model", "str", "Activation function.",
          choices=_registry(ACTIVATIONS)),
    Param("dropout", "model", "float", "Dropout rate.", lo=0, hi=1, hi_open=True,
          models=("mlp", "cnn")),
    Param("ema", "model", "float", "EMA of the weights: decay per step of an exponential "
          "moving average of the weights (e.g. 0.999), returned at the end of training with "
          "its BatchNorm statistics recomputed over the train rows; no epoch is picked on dev, "
          "so not with patience; 0 = off.", default=0.0, lo=0, hi=1, hi_open=True,
          models=("mlp", "cnn")),
    Param("label_smoothing", "model", "float", "Label smoothing.", lo=0, hi=1, hi_open=True),
    Param("augment", "model", "str", 'Augmentation: "none", "default" or e.g. '
          '"shift=2,rotate=10,zoom=0.1,elastic=0".', default="none", check=_augment),
    Param("plan", "model", "str", "CNN layers, e.g. 32c5-p-64c5-p-fc128 (32c3s: a 'same' "
          "3x3 conv, p: 2x2 max pool, fc128: a dense layer).", models=("cnn",), check=_plan),
    Param("pool_first", "model", "bool", "Pool before BatchNorm and the activation (faster, "
          "as accurate).", models=("cnn",)),
    Param("init", "model", "str", "Weight init of the conv and dense layers: torch "
          "(U(+-1/sqrt(fan_in)), PyTorch's default), he or xavier.", default="he",
          models=("cnn",), choices=_registry(INITS)),
    # ---- predict
    Param("tta", "predict", "bool", "Test-time augmentation: average over shifted copies of "
          "each test image.", default=False),
    Param("predict_batch_size", "predict", "int", "Rows per forward pass at prediction "
          "(speed and memory only; the default takes the 28000 test rows in one pass, whose "
          "threads then wait for each other once, not once per batch).", default=N_TEST, lo=1,
          field="batch_size"),
)

BY_NAME = {p.name: p for p in PARAMS}
BY_MAKE_VAR = {p.make_var: p for p in PARAMS}


def section(name: str) -> tuple[Param, ...]:
    return tuple(p for p in PARAMS if p.section == name)


# ---------------------------------------------------------------- values: parse and validate


def coerce(p: Param, value):
    """`value` (typed, or text from make, a file or the shell) as p's type, checked against its
    range and choices; ParamError names the parameter, the value and what is allowed."""
    try:
        v = _convert(p, value)
    except (TypeError, ValueError) as e:
        raise ParamError(f"{p.name} ({p.option}, {p.make_var}=): {e}") from None
    return v


def _convert(p: Param, value):
    if p.kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected 0/1 (or true/false), got {value!r}")
    if p.kind == "sizes":
        if isinstance(value, str):
            parts = [s for s in value.replace(" ", "").split(",") if s]
            try:
                value = tuple(int(s) for s in parts)
            except ValueError:
                raise ValueError(f"expected comma-separated integers like 512,256, got "
                                 f"{value!r}") from None
        value = tuple(int(v) if not isinstance(v, bool) else _bad(v) for v in value)
        if not value or min(value) <= 0:
            raise ValueError(f"sizes must be > 0, got {list(value)}")
        return value
    if p.kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        v = int(str(value).strip()) if isinstance(value, str) else int(value)
    elif p.kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {value!r}")
    else:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        v = value.strip()
    if p.choices is not None and v not in p.choices():
        raise ValueError(f"expected one of {', '.join(p.choices())}, got {v!r}")
    if p.lo is not None and (v < p.lo or (p.lo_open and v == p.lo)) or \
       p.hi is not None and (v > p.hi or (p.hi_open and v == p.hi)):
        raise ValueError(f"expected a value in {p.range_text()}, got {value!r}")
    if p.check is not None:
        p.check(v)
    return v


def _bad(v):
    raise ValueError(f"expected an integer, got {v!r}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def format_value(value) -> str:
    """A value as a person (and make) writes it: 512,256 for sizes, 1/0 for bools."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def applies(p: Param, model: str) -> bool:
    return p.section != "model" or model in p.models


def check_applies(names, model: str) -> None:
    """Refuse options that do nothing for `model` (e.g. --hidden with the cnn)."""
    for name in names:
        p = BY_NAME[name]
        if not applies(p, model):
            raise ParamError(f"{p.option} ({p.make_var}) does not apply to --model {model}; it "
                             f"applies to {', '.join(p.models)}. Leave it out.")


# ---------------------------------------------------------------- the configs, derived


def _dataclass(cls_name: str, params: tuple[Param, ...], doc: str):
    fields = [(p.attr, object, field(default=None if p.section == "model" else p.default))
              for p in params]
    cls = dataclasses.make_dataclass(cls_name, fields, frozen=True,
                                     namespace={"replace": dataclasses.replace,
                                                "__doc__": doc, "__module__": __name__})
    return cls


SplitConfig = _dataclass("SplitConfig", section("split"),
                         "The split stage's parameters (see PARAMS).")
PredictConfig = _dataclass("PredictConfig", section("predict"),
                           "The predict stage's parameters (see PARAMS).")
TrainConfig = _dataclass("TrainConfig", section("train") + section("model"),
                         "The train stage's parameters (see PARAMS); a per-model parameter "
                         "left None takes the model's own default.")


def resolve(cfg) -> dict:
    """Every train parameter of `cfg` with the model's defaults filled in and each value
    checked: the hyperparameters training uses, and the cache key. ParamError names a bad one."""
    model = coerce(BY_NAME["model"], cfg.model)
    out = {"model": model}
    for p in section("train") + section("model"):
        value = getattr(cfg, p.attr)
        if p.name == "model":
            continue
        if not applies(p, model):
            if value is not None:
                check_applies([p.name], model)
            continue
        if value is None:
            value = p.default_for(model)
            if value is None:  # e.g. the seed model's full batch
                out[p.name] = None
                continue
        out[p.name] = coerce(p, value)
    check_combination(out)
    return out


def check_combination(hp: dict) -> None:
    """Refuse resolved parameters that contradict each other (ParamError, a usage error)."""
    if hp.get("ema") and hp.get("patience"):
        raise ParamError(f"--ema {hp['ema']:g} (EMA=) returns the average of the weights at the "
                         f"end of training, so no epoch is picked on dev: it cannot be combined "
                         f"with --patience {hp['patience']} (PATIENCE=, early stopping); set one "
                         f"of them to 0.")


def changed_from_default(resolved: dict) -> dict:
    """The resolved parameters that differ from the model's defaults (for tables)."""
    model = resolved.get("model", "cnn")
    out = {}
    for name, value in resolved.items():
        p = BY_NAME.get(name)
        if p is None or name == "model":
            continue
        default = p.default_for(model)
        if isinstance(default, list):
            default = tuple(default)
        if isinstance(value, list):
            value = tuple(value)
        if value != default:
            out[name] = value
    return out


__all__ = [
    "BY_MAKE_VAR", "BY_NAME", "MODELS", "PARAMS", "Param", "ParamError", "PredictConfig",
    "SplitConfig", "TrainConfig", "applies", "changed_from_default", "check_applies",
    "check_combination", "coerce",
    "format_value", "resolve", "section",
]
