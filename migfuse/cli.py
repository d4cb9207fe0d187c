"""The `migfuse` command line: parse, call one library function, print. No logic lives here.

Command groups, in the order of the pipeline:
  data      prepare a dataset download into a manifest + skeleton arrays; generate a demo dataset
  backbone  inspect, run and (skeleton) train the frozen backbones
  extract   write token tensors of one track into the Zarr cache
  cache     inspect the cache, derive pooled views
  fuse      train / evaluate / predict with fusion heads on cached tokens
  export    write challenge submission files
  score     score any prediction file against the manifest
  demo      run everything on a generated dataset

Library imports happen inside the commands, so `migfuse --help` and the data/cache commands start
without torch.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.errors import UserError


class _App(typer.Typer):
    """A Typer whose commands turn a `UserError` into one line on stderr and exit status 2."""

    def command(self, *args, **kwargs):  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def wrap(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                try:
                    return fn(*a, **k)
                except UserError as e:
                    typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
                    raise typer.Exit(2) from None

            register(guarded)
            return fn

        return wrap


def _group(help: str) -> _App:
    return _App(help=help, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_show_locals=False)


app = _group("migfuse: iMiGUE micro-gesture and emotion recognition from a Zarr token cache.\n\n"
             "Pipeline: data prepare -> extract TRACK -> cache view -> fuse train -> fuse predict -> export.\n"
             "Try `migfuse demo` for the whole pipeline on a generated dataset.")
data_app = _group("Read an iMiGUE download into one clip manifest and fast skeleton arrays; generate demo data.")
backbone_app = _group("Inspect, run and train the frozen backbones (check a checkpoint before extracting).")
extract_app = _group("Turn clips into token tensors in the Zarr cache (resumable, sharded, failures recorded).")
cache_app = _group("Inspect the token cache and derive small pooled views for training.")
fuse_app = _group("Train, evaluate and predict with fusion heads on cached tokens (laptop-sized).")
export_app = _group("Write challenge submission files from prediction scores, validated against the manifest.")
app.add_typer(data_app, name="data")
app.add_typer(backbone_app, name="backbone")
app.add_typer(extract_app, name="extract")
app.add_typer(cache_app, name="cache")
app.add_typer(fuse_app, name="fuse")
app.add_typer(export_app, name="export")


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------
# data: prepare / synth                                                     (foundation issue)
# ---------------------------------------------------------------------------------------------
# [section: data]

# [end section: data]


# ---------------------------------------------------------------------------------------------
# data synth                                                                (foundation issue)
# ---------------------------------------------------------------------------------------------
# [section: data-synth]

# [end section: data-synth]


# ---------------------------------------------------------------------------------------------
# cache: info                                                               (foundation issue)
# ---------------------------------------------------------------------------------------------
# [section: cache]

# [end section: cache]


# ---------------------------------------------------------------------------------------------
# cache view                                                                (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: cache-view]

# [end section: cache-view]


# ---------------------------------------------------------------------------------------------
# backbone info / run                                                       (video issue)
# ---------------------------------------------------------------------------------------------
# [section: backbone]

# [end section: backbone]


# ---------------------------------------------------------------------------------------------
# backbone train skeleton                                                   (skeleton issue)
# ---------------------------------------------------------------------------------------------
# [section: backbone-train]

# [end section: backbone-train]


# ---------------------------------------------------------------------------------------------
# extract video / context                                                   (video issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-video]

# [end section: extract-video]


# ---------------------------------------------------------------------------------------------
# extract skeleton                                                          (skeleton issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-skeleton]

# [end section: extract-skeleton]


# ---------------------------------------------------------------------------------------------
# extract face                                                              (face issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-face]

# [end section: extract-face]


# ---------------------------------------------------------------------------------------------
# fuse train / eval / predict                                               (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: fuse]

# [end section: fuse]


# ---------------------------------------------------------------------------------------------
# export / score                                                            (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: export]

# [end section: export]


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated dataset and every artifact.")] = Path("demo_out"),
    videos: Annotated[int, typer.Option(help="Number of generated videos.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the generated dataset.")] = 0,
) -> None:
    """Run the whole pipeline on a generated demo dataset and print where each artifact is."""
    from migfuse.demo import run_demo

    run_demo(out, videos=videos, seed=seed)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
