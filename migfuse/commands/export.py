"""`migfuse export <format>` (one command per registered challenge format) and `migfuse score`."""
# No `from __future__ import annotations` here: the export commands are made per format at import time,
# and typer must see their annotations as objects.
import typing
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from migfuse.commands.app import group
from migfuse.commands.options import DataOpt, Scheme, Split, Task, path_argument, path_option

app = group("Write challenge submission files from prediction scores, validated against the manifest.")

ScoresArg = Annotated[Path, path_argument(metavar="SCORES", help="Scores .npz written by `migfuse fuse predict` or "
                                           "`fuse late`.")]
SplitOpt = Annotated[Split, typer.Option(help="The split to export (manifest column split_miga / split_emotion).")]
HeaderOpt = Annotated[Optional[str], typer.Option(
    show_default="the format's", help="CSV header as two names, e.g. Id,Target, or 'none' for no header line.")]
WinLabelOpt = Annotated[int, typer.Option(min=0, max=1, help="Target written for Win (Lose gets the other of 0/1).")]


def export_command(fmt) -> Callable[..., None]:
    """The `migfuse export NAME` command of one registered format (`migfuse.fuse.export`)."""
    out_help = "NAME.zip, NAME.csv (a bare CSV + NAME.zip) or a folder, created."

    def command(scores: ScoresArg, data: DataOpt,
                out: Annotated[Optional[Path], path_option(help=out_help, show_default=f"./{fmt.zip_name}")] = None,
                split: SplitOpt = Split.test, header: HeaderOpt = None, win_label: WinLabelOpt = 1) -> None:
        from migfuse.fuse.export import export_scores

        r = export_scores(scores, data, fmt=fmt.name, out=out, split=split.value, header=header, win_label=win_label)
        if r.dropped:
            typer.echo(f"dropped {len(r.dropped)} ids the challenge does not list: {', '.join(r.dropped[:5])}")
        typer.echo(f"wrote {r.path} ({r.csv_name} at the archive root): {r.rows} rows of split {r.split}")
        if r.csv_path is not None:
            typer.echo(f"wrote {r.csv_path} (the same rows as a bare CSV)")
        typer.echo(f"sha256 {r.sha256}  {r.path}")  # the layout of sha256sum (-c reads it), to check an upload

    if fmt.task != "emotion":  # --win-label is the emotion polarity: other formats do not show it
        sig = typing.get_type_hints(command, include_extras=True)
        sig.pop("win_label")
        import inspect

        full = inspect.signature(command)
        command.__signature__ = full.replace(parameters=[p for n, p in full.parameters.items() if n != "win_label"])
        command.__annotations__ = sig
    header = "with header " + ",".join(fmt.header) if fmt.header else "without header"
    command.__doc__ = (f"{fmt.description}.\n\n{fmt.csv_name} ({header}) in {fmt.zip_name}. The rows are exactly "
                       f"the split's {'clips' if fmt.task == 'mg' else 'videos'} in manifest order (column "
                       f"{fmt.scheme}); ids the challenge does not list are dropped with a note, missing ids are "
                       "refused.")
    command.__name__ = f"export_{fmt.name}"
    return command


def _register_formats() -> None:
    from migfuse.fuse.export import EXPORTERS, get_exporter

    for name in EXPORTERS:
        app.command(name)(export_command(get_exporter(name)))


_register_formats()


def score_cmd(
    file: Annotated[Path, path_argument(metavar="FILE", help="Prediction file: challenge zip, CSV (header or not) "
                                                              "or scores .npz.")],
    data: DataOpt,
    split: Annotated[Optional[Split], typer.Option(
        help="Require exactly this split's ids.", show_default="the ids the file has")] = None,
    scheme: Annotated[Optional[Scheme], typer.Option(help="The split column.", show_default="by task")] = None,
    task: Annotated[Optional[Task], typer.Option(help="The task of the file.", show_default="guessed from the ids")]
    = None,
    win_label: Annotated[int, typer.Option(min=0, max=1, help="Emotion files: the target that means Win.")] = 1,
    out: Annotated[Optional[Path], path_option(
        use="folder", help="Folder for metrics.json, per_class.csv and the charts (confusion, per-class, ROC for "
                           "emotion).")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (for scripts).")] = False,
) -> None:
    """Score a prediction file against the manifest's labels (check a submission before upload).

    Micro-gestures: top-1 accuracy, mean class accuracy and a per-class table.
    Emotion: accuracy and F1 (Win = positive). Ids are joined with the manifest by id; ids not in
    the manifest, or (with --split) missing from the file, are refused. Scores files (.npz) are
    read by their class names, so their column order does not matter.
    """
    from migfuse.fuse.metrics import to_json
    from migfuse.fuse.score import score_file, write_score_files

    report = score_file(file, data, split=split.value if split else None, scheme=scheme.value if scheme else None,
                        task=task.value if task else None, win_label=win_label)
    files = write_score_files(report, out) if out is not None else {}
    if json_out:
        typer.echo(to_json({**report.to_dict(), "files": {k: str(v) for k, v in files.items()}}))
        return
    typer.echo(report.format())
    if files:
        typer.echo("files: " + ", ".join(str(p) for p in files.values()))
