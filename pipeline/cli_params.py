"""The click side of the parameter declarations (`params.py`): options derived from them, make
variables read from make's command line, and settling a command's parameters with params.toml.

Every declared parameter becomes an option whose default is None, so a command can tell what the
user set. What was set, on the command line or as a make variable, overrides params.toml and is
written back to it (it sticks); the rest comes from the file, else the model's default.
"""

from __future__ import annotations

import difflib
import os

import click
from click.core import ParameterSource

from . import paramfile
from .params import BY_NAME, MODELS, Param, ParamError, coerce, format_value, resolve, section


def _default_text(p: Param) -> str:
    if p.section == "model":
        parts = []
        for m in MODELS:
            if m in p.models:
                d = p.default_for(m)
                parts.append(f"{m} {'whole set' if d is None else format_value(d)}")
        return "; ".join(parts)
    return format_value(p.default)


def _help(p: Param) -> str:
    text = p.help
    if p.choices is None and p.range_text():
        text += f" Range {p.range_text()}."
    if p.section == "model" and tuple(p.models) != MODELS:
        text += f" Only for {', '.join(p.models)}."
    return f"{text} [default: {_default_text(p)}] [make: {p.make_var}]"


def _callback(p: Param):
    def check(ctx, param, value):
        if value is None:
            return None
        try:
            return coerce(p, value)
        except ParamError as e:
            raise click.BadParameter(str(e).split(": ", 1)[-1]) from None
    return check


class RegistryChoice(click.Choice):
    """click.Choice over a registry read when used, so a newly registered name is accepted
    and shown in --help."""

    def __init__(self, choices):
        self._choices = choices
        super().__init__([])

    @property
    def choices(self):
        return tuple(self._choices())

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns; the registry is the truth
        pass


def param_option(p: Param):
    """One click option for a declared parameter, with default None ("not set here")."""
    if p.kind == "bool":
        flag = p.option[2:]
        return click.option(f"--{flag}/--no-{flag}", p.name, default=None, help=_help(p))
    kind = RegistryChoice(p.choices) if p.choices is not None else str
    metavar = {"int": "INT", "float": "NUMBER", "sizes": "SIZES", "str": "TEXT"}[p.kind]
    return click.option(p.option, p.name, type=kind, default=None, callback=_callback(p),
                        metavar=None if p.choices is not None else metavar, help=_help(p))


def param_options(*sections: str):
    """A decorator adding the options of every parameter in these sections."""
    params = [p for s in sections for p in section(s)]

    def decorate(f):
        for p in reversed(params):
            f = param_option(p)(f)
        return f
    return decorate


def make_defaults(group: click.Group) -> dict:
    """Make's command-line variables (named in DIGITS_MAKE_VARS by the Makefile, values read from
    the environment, so quotes and spaces arrive intact) as click's default_map: each sets the
    option of the same name on every command that has it. An unknown name is refused."""
    names = os.environ.get("DIGITS_MAKE_VARS", "").split()
    if not names:
        return {}
    by_option: dict[str, list[str]] = {}
    for cmd_name, cmd in group.commands.items():
        for param in cmd.params:
            by_option.setdefault(param.name, []).append(cmd_name)
    default_map: dict[str, dict] = {}
    for var in names:
        if var not in os.environ:
            continue
        name = var.lower()
        if name not in by_option:
            known = sorted(v.upper() for v in by_option)
            close = difflib.get_close_matches(var, known, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise click.UsageError(f"make variable {var} is not a parameter of any stage.{hint} "
                                   f"`make help` lists them.")
        for cmd_name in by_option[name]:
            default_map.setdefault(cmd_name, {})[name] = os.environ[var]
    return default_map


def overrides(ctx: click.Context, kw: dict) -> dict:
    """The declared parameters this command was given (command line or make variable)."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP,
             ParameterSource.ENVIRONMENT)
    return {name: value for name, value in kw.items()
            if name in BY_NAME and value is not None
            and ctx.get_parameter_source(name) in given}


def settle(ctx: click.Context, kw: dict, paths, *, save_now: bool = False):
    """(split, train, predict) configs of params.toml with what this command was given applied.
    What was given is written back to params.toml (it sticks) once the command succeeds (at
    once with `save_now`), so a failed or interrupted run leaves the file as it was. An option
    the model does not use is a usage error."""
    values = paramfile.load(paths.params)
    given = overrides(ctx, kw)
    try:
        values = paramfile.apply(values, given)
        configs = paramfile.configs(values)
        resolve(configs[1])  # options that contradict each other (--ema with --patience)
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    if given:
        ctx.obj["params_to_save"] = values
        if save_now:
            save_settled(ctx, paths)
    return configs


def save_settled(ctx: click.Context, paths) -> None:
    """Write the parameters `settle` applied, if any, to params.toml."""
    values = ctx.obj.pop("params_to_save", None)
    if values is not None and paramfile.save(paths.params, values):
        import logging
        logging.getLogger("pipeline").info("params: saved your settings in %s",
                                           paths.params.name)


def params_table(rows) -> str:
    """`digits params`: each parameter in effect, its make variable, value and source."""
    from .text import table
    body = [[p.name, p.make_var, format_value(v) if v is not None else "(whole set)", source,
             p.range_text()] for p, v, source in rows]
    return table(["parameter", "make", "value", "from", "allowed"], body)


def make_help() -> str:
    """The make variables, each with its help and defaults, for `make help`."""
    import textwrap
    lines = ["Parameters (make VAR=value; each one you set sticks in params.toml, "
             "`make params` shows them):"]
    for p in (q for s in ("split", "train", "model", "predict") for q in section(s)):
        text = f"{p.help} Default: {_default_text(p)}."
        lines.append(textwrap.fill(text, width=100, initial_indent=f"  {p.make_var:<19} ",
                                   subsequent_indent=" " * 22))
    lines.append(textwrap.fill(
        "Other variables: MIRROR=dir (data source), MESSAGE='...' FORCE=1 TIMEOUT=seconds "
        "(upload), OFFLINE=1 (submissions), SUBMISSION=file (validate, upload), RESUME=0 "
        "(train afresh), JOBS=n BACKEND=loky|dask SCHEDULER=tcp://host:8786 (where fold models "
        "train), GRID='lr=1e-3,3e-3 epochs=15,20' (sweep). Values pass to digits intact: "
        "quotes and spaces are fine.",
        width=100))
    return "\n".join(lines)


__all__ = ["make_defaults", "make_help", "overrides", "param_option", "param_options",
           "params_table", "save_settled", "settle"]
