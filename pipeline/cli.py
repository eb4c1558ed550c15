"""The `digits` command group: options common to all, and the one place where errors become a
message and an exit code. The commands themselves are in `cli_stages.py` (one thin command per
stage, plus `run`), `cli_cv.py` (`cv`, `sweep`) and `cli_tools.py` (params, runs, show, ...).

Each command settles its parameters (the options derived from `params.py`, make variables and
params.toml, see `cli_params.py`) into the frozen configs, calls one function of `stages.py` and
prints one result line. A UserError anywhere becomes one line on stderr and exit code 1; bad
usage is click's exit code 2. The library below never sees click.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from pathlib import Path

import click

from . import cli_params
from .config import Paths, UserError, for_user


def sources(mirror: str | None):
    from .config import kaggle_input
    from .stages import Sources
    return Sources(kaggle_input=kaggle_input(), mirror=Path(mirror) if mirror else None)


def default_mirror(root: Path) -> str | None:
    """$KAGGLE_MIRROR, else ../shared/data beside the checkout when it exists."""
    if os.environ.get("KAGGLE_MIRROR"):
        return os.environ["KAGGLE_MIRROR"]
    shared = root.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def locked_ctx(f):
    """`locked` for a command that takes the click context."""
    @functools.wraps(f)
    def wrapper(ctx, *args, **kwargs):
        from .stages import project_lock
        with project_lock(ctx.obj["paths"]):
            out = f(ctx, *args, **kwargs)
            cli_params.save_settled(ctx, ctx.obj["paths"])  # only once the command succeeded
            return out
    return wrapper


def locked(f):
    """Run the command under the project lock so two runs never write the same outputs."""
    @functools.wraps(f)
    def wrapper(ctx_obj, *args, **kwargs):
        from .stages import project_lock
        with project_lock(ctx_obj["paths"]):
            return f(ctx_obj, *args, **kwargs)
    return wrapper


class UserFacingError(click.ClickException):
    """A UserError shown as one line on stderr; exit code 1 (130 when interrupted)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"digits: error: {for_user(self.message)}", err=True)


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def nn_user_errors() -> tuple:
    """pipeline.nn's ModelFileError, a problem the user can fix like a UserError (pipeline.nn
    imports nothing from the package, so it has its own), once that module is loaded: the CLI
    starts without numpy, and an `except` clause evaluates this only when something is raised."""
    nn_model = sys.modules.get("pipeline.nn.model")
    return () if nn_model is None else (nn_model.ModelFileError,)


class DigitsGroup(click.Group):
    """Lists the commands in pipeline order, and turns the library's UserError (and Ctrl-C) into
    a message and exit code, not a traceback."""

    def list_commands(self, ctx):
        return list(self.commands)  # the order they are defined in: the pipeline's

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise UserFacingError(str(e)) from None
        except nn_user_errors() as e:
            raise UserFacingError(str(e)) from None
        except KeyboardInterrupt:
            raise UserFacingError("interrupted; finished outputs are intact, rerun to "
                                  "continue.", exit_code=130) from None
        except OSError as e:
            if e.errno in DISK_FULL:
                where = f" writing {e.filename}" if e.filename else ""
                raise UserFacingError(f"no space left (or file too large){where}: "
                                      f"{os.strerror(e.errno)}. Earlier outputs are intact; free "
                                      f"some space and rerun.") from None
            if e.errno == errno.EPIPE:  # `digits runs | head -1`: the reader left; say nothing
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
                raise click.exceptions.Exit(1) from None
            if e.filename and e.errno:  # e.g. permission denied on a file the user controls
                raise UserFacingError(f"{os.strerror(e.errno)}: {e.filename}. Check that path "
                                      f"and its permissions, then rerun.") from None
            raise _unexpected(ctx, e) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MemoryError as e:
            raise UserFacingError("out of memory; use smaller --batch-size / --hidden / "
                                  "--ensemble values, or free memory. " +
                                  _logged(ctx, e)) from None
        except Exception as e:  # the last line of defence: a bug, reported in one line
            raise _unexpected(ctx, e) from None


def _logged(ctx, e: BaseException) -> str:
    from .crash import shown_path, write_crash_log
    paths = ctx.obj.get("paths") if isinstance(ctx.obj, dict) else None
    log = write_crash_log(paths.data if paths is not None else None, e)
    return (f"The traceback is in {shown_path(log)}." if log is not None
            else "No log could be written.")


def _unexpected(ctx, e: Exception) -> UserFacingError:
    from .crash import one_line
    return UserFacingError(f"unexpected error ({one_line(e)}); this is a bug in digits, please "
                           f"report it. {_logged(ctx, e)}")


@click.group(cls=DigitsGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                "max_content_width": 100})
@click.version_option(package_name="digits-pipeline", prog_name="digits")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project directory holding data/ and submissions/. [default: $DIGITS_ROOT "
                   "or the current directory]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or stage log lines.")
@click.pass_context
def cli(ctx, root, quiet):
    """Kaggle Digit Recognizer, end to end, with a network written from scratch in NumPy.

    Stages, in order: download -> split -> normalize -> train -> predict -> validate -> report
    (-> upload). Each caches its result and logs whether it reused it or recomputed it and why;
    `run` does them all. Parameters persist in params.toml: an option you pass sticks
    (`digits params` shows them all).
    """
    paths = Paths.default(root)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="digits: %(message)s", stream=sys.stderr, force=True)
    # progress: a bar in a terminal, one line per epoch in a log or notebook, nothing with -q
    ctx.obj = {"paths": paths,
               "progress": None if quiet else ("bar" if sys.stderr.isatty() else "lines")}
    ctx.default_map = cli_params.make_defaults(cli)


# The commands, registered in pipeline order: the stages, then the tools around them.
from . import cli_cv, cli_stages, cli_tools  # noqa: E402, F401


def main() -> None:
    """Entry point of `digits` and `python -m pipeline`."""
    cli(prog_name="digits")
