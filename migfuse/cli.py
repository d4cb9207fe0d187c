"""The `migfuse` command line: the root, its flags, and the command groups in pipeline order.

Each group lives in a module of its own under `migfuse/commands/` (data, backbone, extract, cache,
fuse, export, demo); a command parses, calls one library function and prints. Library imports
happen inside the commands, so `migfuse --help` and the data / cache commands start without torch.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated

import typer

from migfuse.commands import backbone, cache, data, demo, export, extract, fuse
from migfuse.commands.app import group, terminated

app = group("migfuse: iMiGUE micro-gesture and emotion recognition from a Zarr token cache.\n\n"
            "Pipeline: data prepare -> extract TRACK -> cache view -> fuse train -> fuse predict -> export.\n"
            "Try `migfuse demo` for the whole pipeline on a generated dataset.")
app.add_typer(data.app, name="data")
app.add_typer(backbone.app, name="backbone")
app.add_typer(extract.app, name="extract")
app.add_typer(cache.app, name="cache")
app.add_typer(fuse.app, name="fuse")
app.add_typer(fuse.scores_app, name="scores", hidden=True)  # old home of `fuse import`
app.add_typer(export.app, name="export")
app.command("score")(export.score_cmd)
app.command("demo", short_help="Run the whole pipeline on a generated dataset and print where each artifact is.")(
    demo.demo)


def _print_version(value: bool) -> None:
    if value:
        from migfuse import __version__

        typer.echo(f"migfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Log debug messages (also after a subcommand).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the migfuse version and exit.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # -v: migfuse's own debug lines, not those of zarr, matplotlib, filelock and the like
    logging.getLogger("migfuse").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def main() -> None:
    """Console-script entry point: SIGTERM is taken like Ctrl-C (workers stopped, one line, status 143)."""
    signal.signal(signal.SIGTERM, terminated)
    try:
        app()
    finally:  # Zarr's I/O thread, stopped while the interpreter still runs (see close_zarr_io)
        if "zarr" in sys.modules:
            from migfuse.data_cache.cache import close_zarr_io

            close_zarr_io()


if __name__ == "__main__":
    main()
