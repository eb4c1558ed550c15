"""The persisted parameters, `params.toml` at the project root: read, override, write back.

The file holds what you set; everything else is the default shown commented beside it. A make
variable (`make train EPOCHS=30`) or a `digits` option (`--epochs 30`) overrides a value for that
run and is written back, so it sticks until you change it again (the `params.yaml` habit of DVC
and Kedro). Per-model settings live in the model's own table (`[cnn]`, `[mlp]`, `[seed]`), so
switching `model` back and forth keeps each model's settings. Stages read their configs from here.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import tomllib

from .config import UserError
from .fileio import write_text
from .params import (
    BY_NAME,
    MODELS,
    PARAMS,
    Param,
    ParamError,
    PredictConfig,
    SplitConfig,
    TrainConfig,
    applies,
    coerce,
    section,
)

GENERAL = ("split", "train", "predict")
HEADER = """\
# Parameters of the digits pipeline: `digits params` lists each one with its help and range.
# Edit freely. A make variable (make train EPOCHS=30) or a digits option (--epochs 30) overrides
# a value and is written back here, so it sticks; delete a line (or comment it out) to go back
# to the default shown in its comment. Each model keeps its own settings in its own table.
"""


class ParamFileError(UserError):
    """params.toml cannot be read or holds a bad value."""


def empty() -> dict[str, dict]:
    """Nothing set: every parameter at its default."""
    return {t: {} for t in GENERAL + MODELS}


def load(path: Path) -> dict[str, dict]:
    """{"split": {...}, "train": {...}, "predict": {...}, "cnn": {...}, ...}: the values set in
    the file, each checked; {} tables when the file does not exist."""
    values = empty()
    if not path.exists() and not path.is_symlink():
        return values
    from .readers import require_file  # a regular file of sane size, not a folder or a device
    require_file(path, "Fix it, or delete it to start from the defaults.", max_bytes=1 << 20)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ParamFileError(f"{path.name} cannot be read ({e}); fix it, or delete it to start "
                             f"from the defaults.") from None
    for table, entries in raw.items():
        if table not in values or not isinstance(entries, dict):
            raise ParamFileError(f"{path.name}: unknown table [{table}]"
                                 f"{_did_you_mean(table, values)}; the tables are "
                                 f"{', '.join(values)}.")
        for name, value in entries.items():
            p = BY_NAME.get(name)
            where = "model" if table in MODELS else table
            if p is None or p.section != where or (table in MODELS and not applies(p, table)):
                known = [q.name for q in PARAMS if q.section == where
                         and (table not in MODELS or applies(q, table))]
                raise ParamFileError(f"{path.name}: [{table}] has no parameter {name!r}"
                                     f"{_did_you_mean(name, known)}; `digits params` lists them.")
            try:
                values[table][name] = coerce(p, value)
            except ParamError as e:
                raise ParamFileError(f"{path.name}: [{table}] {e}") from None
    return values


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply(values: dict[str, dict], overrides: dict[str, object]) -> dict[str, dict]:
    """`values` with `overrides` (name -> value) set: a per-model parameter goes to the table of
    the model in effect (after any `model` override). Refuses one the model does not use."""
    out = {t: dict(v) for t, v in values.items()}
    if "model" in overrides:
        out["train"]["model"] = coerce(BY_NAME["model"], overrides["model"])
    model = current_model(out)
    for name, value in overrides.items():
        p = BY_NAME[name]
        if p.section == "model":
            if not applies(p, model):
                raise ParamError(f"{p.option} ({p.make_var}) does not apply to --model {model}; "
                                 f"it applies to {', '.join(p.models)}. Leave it out.")
            out[model][name] = coerce(p, value)
        elif name != "model":
            out[p.section][name] = coerce(p, value)
    return out


def current_model(values: dict[str, dict]) -> str:
    return values["train"].get("model", BY_NAME["model"].default)


def configs(values: dict[str, dict]):
    """(SplitConfig, TrainConfig, PredictConfig) of these values; unset = default."""
    model = current_model(values)
    split = SplitConfig(**{BY_NAME[n].attr: v for n, v in values["split"].items()})
    predict = PredictConfig(**{BY_NAME[n].attr: v for n, v in values["predict"].items()})
    train = TrainConfig(**{BY_NAME[n].attr: v for n, v in
                           {**values["train"], **values[model], "model": model}.items()})
    return split, train, predict


def stamps(values: dict[str, dict]) -> dict[str, str]:
    """One line per stage of what its result depends on, for the Makefile's stamps."""
    model = current_model(values)
    train = {**values["train"], "model": model, model: values[model]}
    return {name: json.dumps(v, sort_keys=True, default=list) for name, v in
            (("split", values["split"]), ("train", train), ("predict", values["predict"]))}


def render(values: dict[str, dict]) -> str:
    """The file's text: set values as `name = value`, unset ones as `# name = default`."""
    lines = [HEADER]
    for table in GENERAL[:2] + MODELS + GENERAL[2:]:
        if table in MODELS:
            params = [p for p in section("model") if applies(p, table)]
            lines.append(f"\n[{table}]  # used when model = \"{table}\"")
        else:
            params = list(section(table))
            lines.append(f"\n[{table}]")
        for p in params:
            if p.name in values[table]:
                lines.append(f"{p.name} = {_toml(values[table][p.name])}")
            else:
                default = p.default_for(table if table in MODELS else "")
                shown = "the whole train set" if default is None else _toml(default)
                lines.append(f"# {p.name} = {shown}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(int(v)) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def save(path: Path, values: dict[str, dict]) -> bool:
    """Write the file when its text would change; True when it did."""
    text = render(values)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return False
    write_text(path, text)
    return True


def describe(values: dict[str, dict]) -> list[tuple[Param, object, str]]:
    """(param, value in effect, where it comes from) for every parameter that applies."""
    model = current_model(values)
    rows = []
    for p in PARAMS:
        table = model if p.section == "model" else p.section
        if not applies(p, model):
            continue
        if p.name in values[table]:
            rows.append((p, values[table][p.name], "params.toml"))
        elif p.name == "model":
            rows.append((p, model, "default"))
        else:
            rows.append((p, p.default_for(model), f"{model} default" if p.section == "model"
                         else "default"))
    return rows


__all__ = ["ParamFileError", "apply", "configs", "current_model", "describe", "empty", "load",
           "render",
           "save", "stamps"]
