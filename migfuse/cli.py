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
@cache_app.command("info")
def cache_info_cmd(
    cache: Annotated[Path, typer.Argument(help="The token cache folder (CACHE.zarr).")],
    failures: Annotated[int, typer.Option(help="How many failure records to list per group.")] = 5,
) -> None:
    """Print a table of the cache: groups, arrays, shapes, dtype, clips done / failed / missing,
    size on disk, and the provenance of each group (backbone, checkpoint sha256, sampling, versions)."""
    from migfuse.data_cache.info import cache_info

    typer.echo(cache_info(cache, show_failures=failures))

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
def _open_backbone(name: str, checkpoint: Optional[Path], layout: Optional[str], device: Optional[str]):
    """Build a registered backbone (options only when given), load the checkpoint; -> (backbone, KeyReport|None)."""
    from migfuse.extract.registry import create_backbone

    options = {k: v for k, v in (("layout", layout), ("device", device)) if v is not None}
    bb = create_backbone(name, **options)
    if checkpoint is None:
        typer.secho(f"WARNING: no --checkpoint given: {name} has RANDOM weights, its outputs mean nothing",
                    err=True, fg=typer.colors.YELLOW, bold=True)
        return bb, None
    return bb, bb.load(checkpoint)


_BACKBONE_NAME_HELP = "Registered backbone: mvit_v2_s, agcn, aagcn or swinface."
_CHECKPOINT_HELP = "Local checkpoint file in the backbone's official format (omit for random weights)."
_LAYOUT_HELP = "Skeleton layout for agcn/aagcn (see `docs/backbones.md`); passed to the backbone."
_DEVICE_HELP = "Torch device, e.g. cuda (default: the backbone's own default, cpu)."


@backbone_app.command("info")
def backbone_info(
    name: Annotated[str, typer.Argument(help=_BACKBONE_NAME_HELP)],
    checkpoint: Annotated[Optional[Path], typer.Option(help=_CHECKPOINT_HELP)] = None,
    layout: Annotated[Optional[str], typer.Option(help=_LAYOUT_HELP)] = None,
) -> None:
    """Check a checkpoint against a backbone: parameters, key report, sha256, input layout, outputs.

    Fails with one line naming the missing / unexpected keys when the file does not fit.
    """
    bb, report = _open_backbone(name, checkpoint, layout, None)
    typer.echo(f"backbone:    {name} ({type(bb).__name__})")
    typer.echo(f"parameters:  {bb.num_parameters():,}")
    if report is None:
        typer.echo("checkpoint:  none (random weights)")
    else:
        typer.echo(f"checkpoint:  {bb.checkpoint}")
        typer.echo(f"sha256:      {bb.checkpoint_sha256}")
        typer.echo(f"keys:        {report.summary()}")
        for note in report.notes:
            typer.echo(f"note:        {note}")
    typer.echo(f"input:       {bb.input_doc}")
    for out_name, doc in bb.outputs_doc.items():
        typer.echo(f"output:      {out_name} {doc}")
    for key, value in (getattr(bb, "preprocessing", None) or {}).items():
        typer.echo(f"preprocess:  {key} = {value}")


@backbone_app.command("run")
def backbone_run(
    name: Annotated[str, typer.Argument(help=_BACKBONE_NAME_HELP)],
    input: Annotated[Path, typer.Option("--input", help="Input .npy array in the backbone's input layout (see `info`).")],
    output: Annotated[Path, typer.Option("--output", help="Output .npz file: one array per named output.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help=_CHECKPOINT_HELP)] = None,
    layout: Annotated[Optional[str], typer.Option(help=_LAYOUT_HELP)] = None,
    device: Annotated[Optional[str], typer.Option(help=_DEVICE_HELP)] = None,
) -> None:
    """Run a backbone on one .npy array in the original model's input layout and save its outputs as .npz.

    Use it to compare migfuse with the original code on the same input, before extracting a dataset.
    """
    import numpy as np

    bb, _ = _open_backbone(name, checkpoint, layout, device)
    if not input.is_file():
        raise UserError(f"input not found: {input} (pass a .npy array shaped {bb.input_doc})")
    try:
        x = np.load(input, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"cannot read {input} as a .npy array ({e}); {name} expects {bb.input_doc}") from None
    expected = _leading_shape(bb.input_doc)
    if x.ndim != len(expected) or any(int(e) != s for e, s in zip(expected, x.shape) if e.isdigit()):
        raise UserError(f"{input} has shape {x.shape}; {name} expects {bb.input_doc}")
    outputs = bb.run(x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **outputs)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    typer.echo(f"wrote {output}: {shapes}")


def _leading_shape(input_doc: str) -> list[str]:
    """The dimension names of an input_doc such as "(N, 3, 16, 224, 224) float32" -> ["N", "3", ...]."""
    inner = input_doc[input_doc.index("(") + 1:input_doc.index(")")] if "(" in input_doc else ""
    return [d.strip() for d in inner.split(",") if d.strip()]
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
_ScoresArg = Annotated[Path, typer.Argument(help="Scores .npz written by `migfuse fuse predict` or `fuse late`.")]
_DataOpt = Annotated[Path, typer.Option("--data", help="PREPARED folder (manifest.csv) that defines the split's ids.")]
_SplitOpt = Annotated[str, typer.Option(help="Split to export (manifest column split_miga / split_emotion).")]
_HeaderOpt = Annotated[Optional[str], typer.Option(
    help="CSV header as two names, e.g. Id,Target, or 'none' for no header line. Default: the format's.")]


@fuse_app.command("late")
def fuse_late_cmd(
    scores: Annotated[list[Path], typer.Argument(help="Two or more scores .npz of one task, e.g. joint bone cmtf.")],
    out: Annotated[Path, typer.Option(help="Fused scores .npz to write.")],
    weights: Annotated[Optional[str], typer.Option(help="One weight per file, e.g. 1,1,0.5 (default: equal).")] = None,
    mode: Annotated[str, typer.Option(help="prob: weighted sum of probabilities; log: of log-probabilities.")] = "prob",
    intersect: Annotated[bool, typer.Option(help="Fuse only the ids all files share instead of refusing.")] = False,
) -> None:
    """Late (score-level) fusion: weighted sum of several runs' class scores, joined by clip id.

    Rows are matched by id, never by position, so files in different row orders fuse correctly.
    Files with different id sets are refused unless --intersect is given.
    """
    from migfuse.fuse.late_fusion import fuse_late_files, parse_weights

    result = fuse_late_files(scores, parse_weights(weights, len(scores)), mode=mode, intersect=intersect)
    path = result.scores.save(out)
    dropped = sum(result.dropped.values())
    note = f" (dropped {', '.join(f'{n} of {k}' for k, n in result.dropped.items() if n)})" if dropped else ""
    typer.echo(f"fused {len(scores)} runs ({mode}, weights {','.join(f'{w:.3g}' for w in result.weights)}): "
               f"{len(result.scores)} ids{note} -> {path}")


def _export(fmt: str, scores: Path, data: Path, out: Optional[Path], split: str, header: Optional[str],
            win_label: int = 1) -> None:
    from migfuse.fuse.export import export_scores

    r = export_scores(scores, data, fmt=fmt, out=out, split=split, header=header, win_label=win_label)
    if r.dropped:
        typer.echo(f"dropped {len(r.dropped)} ids the challenge does not list: {', '.join(r.dropped[:5])}")
    typer.echo(f"wrote {r.path} ({r.csv_name} at the archive root): {r.rows} rows of split {r.split}")
    typer.echo(f"sha256 {r.sha256}")


@export_app.command("miga2025")
def export_miga2025(
    scores: _ScoresArg,
    data: _DataOpt,
    out: Annotated[Optional[Path], typer.Option(help="Zip to write, or a folder (default ./prediction.zip).")] = None,
    split: _SplitOpt = "test",
    header: _HeaderOpt = None,
) -> None:
    """MiGA 2025 Track 1 (Kaggle): prediction.csv `Id,Target` (rows 0054_0,25) zipped at the root.

    The rows are exactly the split's clips in manifest order (test: 4,562 clips); clips the
    challenge does not list (0453_32) are dropped with a note, missing clips are refused.
    """
    _export("miga2025", scores, data, out, split, header)


@export_app.command("miga2023")
def export_miga2023(
    scores: _ScoresArg,
    data: _DataOpt,
    out: Annotated[Optional[Path], typer.Option(help="Zip to write, or a folder (default ./Submission.zip).")] = None,
    split: _SplitOpt = "test",
    header: _HeaderOpt = None,
) -> None:
    """MiGA 2023 Track 1 (CodaLab): Submission.csv without header (rows 0054_0,30) in Submission.zip.

    Same id checks as miga2025: the split's exact clip set, in manifest order.
    """
    _export("miga2023", scores, data, out, split, header)


@export_app.command("emotion")
def export_emotion(
    scores: _ScoresArg,
    data: _DataOpt,
    out: Annotated[Optional[Path], typer.Option(help="Zip to write, or a folder (default ./emotion.zip).")] = None,
    split: _SplitOpt = "test",
    header: _HeaderOpt = None,
    win_label: Annotated[int, typer.Option(help="Target written for Win (Lose gets the other of 0/1).")] = 1,
) -> None:
    """Emotion (win/lose) per video: prediction.csv `Id,Target` (rows 0009,1) zipped at the root.

    The official format was not published: header and polarity are options (default Win = 1).
    The rows are the split_emotion videos of the manifest (test: 100 videos), sorted.
    """
    _export("emotion", scores, data, out, split, header, win_label)


@app.command("score")
def score_cmd(
    file: Annotated[Path, typer.Argument(help="Prediction file: challenge zip, CSV (header or not) or scores .npz.")],
    data: _DataOpt,
    split: Annotated[Optional[str], typer.Option(
        help="Require exactly this split's ids (e.g. test); default: score the ids the file has.")] = None,
    scheme: Annotated[Optional[str], typer.Option(
        help="Split column: split_miga | split_cs | split_emotion (default by task).")] = None,
    task: Annotated[Optional[str], typer.Option(help="mg or emotion (default: guessed from the ids).")] = None,
    win_label: Annotated[int, typer.Option(help="Emotion files: the target that means Win.")] = 1,
) -> None:
    """Score a prediction file against the manifest's labels (check a submission before upload).

    Micro-gestures: top-1 accuracy, mean class accuracy and a per-class table.
    Emotion: accuracy and F1 (Win = positive). Ids are joined with the manifest by id; ids not in
    the manifest, or (with --split) missing from the file, are refused.
    """
    from migfuse.fuse.score import score_file

    typer.echo(score_file(file, data, split=split, scheme=scheme, task=task, win_label=win_label).format())
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
