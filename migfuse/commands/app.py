"""The Typer classes every `migfuse` command group uses.

* `App`: a command that raises `UserError` ends in one red line on stderr and exit status 2; a
  missing optional dependency in one line naming the extra that installs it; Ctrl-C / SIGTERM in
  one line ("finished work is kept") and 130 / 143.
* `Group`: lists commands with their whole one-line description, the root's in pipeline order, and
  lets the root's flags (-v, --version) be typed after a subcommand too.
* `deprecated`: the one warning line of an old spelling that still works.
* usage errors (unknown option, bad choice, missing value) are one line too (`OneLineUsageError`).
"""
from __future__ import annotations

import functools
import signal
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from typer.core import TyperGroup

try:  # typer >= 0.25 parses with its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # older typer: click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

from migfuse.atomic_write import PATH_FIXES
from migfuse.errors import UserError


# Third-party modules a command may need, and the extra of setup.cfg that installs each.
_EXTRA_OF_MODULE = {
    "torch": "fuse", "torchvision": "extract", "timm": "extract", "av": "extract",
    "facenet_pytorch": "extract", "cv2": "extract", "PIL": "fuse", "matplotlib": "plots",
}


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line message for a missing optional dependency, or None when the import error is a bug."""
    top = (error.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    how = "bash scripts/install.sh" + ("" if extra == "extract" else f" {extra}")
    if top == "facenet_pytorch":
        how = "pip install --no-deps facenet-pytorch==2.6.0"
    return (f"this command needs {top}, which is not installed here: install the {extra} extra: "
            f"{how} (or pip install 'migfuse[{extra}]')")


class App(typer.Typer):
    """A Typer whose commands turn a `UserError` into one line on stderr and exit status 2, and a
    missing optional dependency into one line naming the extra that installs it."""

    def command(self, *args, **kwargs):  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def wrap(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                try:
                    return fn(*a, **k)
                except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through `_terminated`
                    typer.secho("\ninterrupted: finished work is kept; rerun the same command to go on",
                                err=True, fg=typer.colors.YELLOW)
                    raise typer.Exit(getattr(e, "exit_code", 130)) from None
                except (UserError, ModuleNotFoundError, OSError) as e:
                    message = _user_message(e)
                    if message is None:  # a bug: keep its traceback
                        raise
                    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
                    raise typer.Exit(2) from None

            register(guarded)
            return fn

        return wrap


# The root's commands in the order a user runs them (Typer would list plain commands before groups).
_PIPELINE_ORDER = ["data", "backbone", "extract", "cache", "fuse", "scores", "export", "score", "demo"]
# Flags of the root that a user may also type after the subcommand (`migfuse fuse train ... -v`).
_ROOT_FLAGS = {"-v": "--verbose", "--verbose": "--verbose", "--version": "--version"}




def _user_message(error: Exception) -> str | None:
    """The one line for an error the user can fix (their input, an extra to install, a path), or None."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, ModuleNotFoundError):
        return _missing_extra(error)
    if isinstance(error, OSError):
        return _path_problem(error)
    return None


def _path_problem(error: OSError) -> str | None:
    """One line for an OSError on a path (a file where a folder must go, a full disk...), or None
    when it is not about a path the user can change (a bug keeps its traceback)."""
    # what a path the user gave can be wrong with, errno -> the fix (anything else keeps its traceback)
    if error.filename is None or error.errno not in PATH_FIXES:
        return None
    if type(error).__module__.split(".")[0] == "av":  # FFmpeg's errors about a video's content, not its path
        return None
    where = f"{error.filename}" + (f" -> {error.filename2}" if getattr(error, "filename2", None) else "")
    return f"cannot use {where}: {PATH_FIXES[error.errno]} ({error.strerror})"


class Group(TyperGroup):
    """Lists commands with their whole one-line description (never cut with "..."); the root also
    lists them in pipeline order and accepts its flags anywhere before `--`."""

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        if ctx.parent is not None:
            return names
        rank = {n: i for i, n in enumerate(_PIPELINE_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.short_help or _first_paragraph(cmd.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _hoist_root_flags(args)
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        with _one_line_usage_errors():  # a subcommand's options are parsed in here
            return super().invoke(ctx)


class OneLineUsageError(UsageError):
    """A usage error (unknown option, bad choice, missing value) shown as one line naming the command's
    help, like every other error a user can cause, instead of click's usage block."""

    def show(self, file: Any = None) -> None:
        message = " ".join(self.format_message().replace("Value error, ", "").split()).rstrip(".")
        where = f" (see `{self.ctx.command_path} -h`)" if self.ctx is not None else ""
        typer.secho(f"error: {message}{where}", err=True, fg=typer.colors.RED)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except OneLineUsageError:
        raise
    except NoArgsIsHelpError:  # a group alone prints its help: keep that
        raise
    except UsageError as e:
        raise OneLineUsageError(e.format_message(), e.ctx) from None


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _hoist_root_flags(args: list[str]) -> list[str]:
    """Move `-v/--verbose/--version` typed after a subcommand to the front, where the root parses them."""
    end = args.index("--") if "--" in args else len(args)
    head, tail = args[:end], args[end:]
    flags = list(dict.fromkeys(_ROOT_FLAGS[a] for a in head if a in _ROOT_FLAGS))
    return flags + [a for a in head if a not in _ROOT_FLAGS] + tail


def group(help: str) -> App:
    """A command group (or the root) with migfuse's error handling and help layout."""
    return App(help=help, cls=Group, no_args_is_help=True, rich_markup_mode=None,
                pretty_exceptions_show_locals=False, context_settings={"help_option_names": ["-h", "--help"]})


def deprecated(old: str, new: str | None = None, why: str = "") -> None:
    """The one warning line of an old spelling that still works: `use NEW` (a renamed option, value or
    command), or, with `new=None`, `why` it is not needed any more."""
    instead = f"use {new}" if new is not None else why
    typer.secho(f"warning: {old} is deprecated: {instead} (the old spelling will be removed in a later release)",
                err=True, fg=typer.colors.YELLOW)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a CI cancel, a scheduler) taken like Ctrl-C, so that worker pools
    are stopped and locks released on the way out; the exit status stays 128 + 15."""

    exit_code = 128 + signal.SIGTERM


def terminated(signum: int, frame: Any) -> None:
    raise Terminated()
