"""`migfuse data`: read a dataset download into a PREPARED folder; generate a demo dataset; export skeletons."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.commands.app import deprecated, group
from migfuse.commands.options import (SEED_MAX, WORKERS_MAX, DatasetLayout, PysklLayout, Scheme, SynthLayout,
                                      path_argument, path_option)
from migfuse.errors import UserError

app = group("Read an iMiGUE download into one clip manifest and fast skeleton arrays; generate demo data.")

_OldLayoutOpt = Annotated[Optional[str], typer.Option("--layout", hidden=True, help="Old name of --dataset-layout.")]


def _dataset_layout(new: Optional[str], old: Optional[str], default: str) -> str:
    """--dataset-layout, or its old name --layout (one deprecation line); both at once are refused."""
    if old is None:
        return new or default
    if new is not None:
        raise UserError("give --dataset-layout only (--layout is its old name here)")
    deprecated("--layout (the dataset layout)", "--dataset-layout")
    return old


@app.command("prepare")
def data_prepare(
    root: Annotated[Path, path_option(help="Folder of the unpacked dataset download (any supported layout).")],
    out: Annotated[Path, path_option(use="folder", help="PREPARED folder to write: manifest.csv, videos.csv, "
                                                        "skeletons/, prepare_report.json.")],
    dataset_layout: Annotated[Optional[DatasetLayout], typer.Option(
        "--dataset-layout", show_default="auto",
        help="auto | oulu (Label/labels_20200831.csv + OpenPose JSON or xlsx) | miga2025 (<vid4>_label.csv + "
             "_openpose.xlsx) | miga2023 (<vid4>_label.csv + _light_hand.csv).")] = None,
    frame_base: Annotated[int, typer.Option(min=0, max=1, help="Frame number of the first frame in MiGA _label.csv "
                                            "files (0 = as labels_20200831.csv; see docs/data.md).")] = 0,
    workers: Annotated[int, typer.Option(min=1, max=WORKERS_MAX,
                                         help="Processes converting skeletons in parallel.")] = 1,
    no_reuse: Annotated[bool, typer.Option("--no-reuse", help="Convert every skeleton again, instead of keeping "
                                           "the arrays of an earlier run into --out whose source is unchanged "
                                           "(which resumes an interrupted run).")] = False,
    reuse: Annotated[bool, typer.Option("--reuse", hidden=True, help="Old flag: reusing is the default.")] = False,
    layout: _OldLayoutOpt = None,
) -> None:
    """Read a dataset download into one clip manifest and fast skeleton arrays.

    Detects the layout, reads every label file, converts each video's skeleton (OpenPose JSON
    folder of any OpenPose version, BODY_25 or COCO-18; 411-column xlsx; light_hand csv) once into
    skeletons/<vid4>.npy (T, 137, 3), and derives the cross-subject, MiGA and emotion splits.
    Videos (mp4, avi, mkv, mov, webm) are found anywhere under the root and stored relative to it;
    each video file is measured once (whether it decodes and why not, its decoded length, frame
    rate, size and display rotation; the header's length where it differs). Problems (empty or
    refused skeletons, unreadable frames or videos, clips outside the skeleton or past the decoded
    end, missing videos, videos not at 25 fps) are listed in prepare_report.json and here; the run
    goes on. See docs/data.md for every accepted variant.
    """
    from migfuse.datasets.prepare import prepare

    if reuse:
        deprecated("--reuse", why="reusing unchanged skeletons is the default (--no-reuse turns it off)")
    chosen = _dataset_layout(dataset_layout.value if dataset_layout else None, layout, DatasetLayout.auto.value)
    result = prepare(root, out, layout=chosen, frame_base=frame_base,
                     workers=workers, reuse=not no_reuse)
    report = result.report
    typer.echo(f"{report['layout']} layout: {report['clips']} clips, {report['videos']} videos, "
               f"{report['videos_with_skeleton']} skeletons, {report['videos_with_file']} video files, "
               f"{report['unreadable_frames']} unreadable skeleton frame files")
    if totals := report["video_file_totals"]:
        typer.echo(f"  video files: {totals['measured']} decode, {totals['unreadable']} unreadable, "
                   f"{totals['header_differs']} with a header length that differs from what decodes, "
                   f"{totals['not_25_fps']} not at 25 fps (per video: video_files in the report)")
    for vid, degrees in report["rotated_videos"].items():
        typer.echo(f"  video {vid} is stored rotated: decoded upright with a {degrees} degree clockwise turn")
    for scheme, counts in report["splits"].items():
        typer.echo(f"  {scheme}: " + ", ".join(f"{k or '(none)'} {v}" for k, v in counts.items()))
    for problem in report["problems"]:
        where = f" (video {problem['video_id']})" if "video_id" in problem else ""
        typer.echo(f"  problem {problem['kind']}{where}: {problem['detail']}")
    typer.echo(f"wrote {out} (details in {out / 'prepare_report.json'})")


@app.command("synth")
def data_synth(
    out: Annotated[Path, path_option(use="folder", help="Empty folder to write the generated dataset into.")],
    dataset_layout: Annotated[Optional[SynthLayout], typer.Option(
        "--dataset-layout", show_default="miga2025", help="The real layout to write.")] = None,
    videos: Annotated[int, typer.Option(min=1, max=16, help="Number of videos (the first 8 cover every split).")] = 8,
    # 100: every frame of a video is rendered in memory (~15 MB per clip), and real iMiGUE videos hold ~52
    clips_per_video: Annotated[int, typer.Option(min=1, max=100, help="Micro-gesture clips per video.")] = 8,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX,
                                      help="Random seed: the same seed gives the same dataset.")] = 0,
    layout: _OldLayoutOpt = None,
) -> None:
    """Generate a small demo dataset in a real iMiGUE layout: mp4 videos of a seated figure with a real
    face doing class-specific micro-gestures, the matching 137-point OpenPose skeletons, label files,
    subjects and Win/Lose per video (real iMiGUE video ids, so every split has members).
    Read it with `migfuse data prepare --root OUT`."""
    from migfuse.synth import generate_dataset

    chosen = _dataset_layout(dataset_layout.value if dataset_layout else None, layout, SynthLayout.miga2025.value)
    root = generate_dataset(out, layout=chosen, videos=videos, seed=seed, clips_per_video=clips_per_video)
    typer.echo(f"wrote a generated {chosen} dataset to {root} (ground truth: {root / 'ground_truth.json'})")


@app.command("export-pyskl")
def data_export_pyskl(
    prepared: Annotated[Path, path_argument(metavar="PREPARED", help="PREPARED folder written by "
                                             "`migfuse data prepare`.")],
    out: Annotated[Path, path_argument(use="file", metavar="OUT", help="The pyskl annotation .pkl to write.")],
    layout: Annotated[PysklLayout, typer.Option(
        help="Joints to keep: coco-17 (pyskl 'coco', PoseC3D / ST-GCN++ 2D), openpose-18 (pyskl 'openpose'), "
             "openpose22 (MiGA 2023) or imigue (55).")] = PysklLayout.coco_17,
    scheme: Annotated[Scheme, typer.Option(help="Manifest column that names the splits.")] = Scheme.split_miga,
    img_shape: Annotated[Optional[str], typer.Option(
        help="Frame size HEIGHTxWIDTH in pixels, written as img_shape for every clip.",
        show_default="each video's size as `data prepare` measured it, else 720x1280")] = None,
) -> None:
    """Write the prepared skeletons in pyskl's 2D annotation format (`split` + `annotations` with
    keypoint (1, T, V, 2) and keypoint_score (1, T, V) float32, frame_dir = clip id), so ST-GCN++ or
    PoseC3D train on migfuse's manifest. Bring their test results back with `migfuse fuse import`."""
    from migfuse.datasets.pyskl import export_pyskl

    shape = None
    if img_shape is not None:
        try:
            shape = tuple(int(v) for v in img_shape.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 2 or min(shape) <= 0 or max(shape) > 65_535:  # 65,535: the largest frame H.264/HEVC code
            raise UserError(f"--img-shape {img_shape!r} must be HEIGHTxWIDTH in pixels (1 to 65535), e.g. 720x1280")
    r = export_pyskl(prepared, out, layout=layout.value, scheme=scheme.value, img_shape=shape)  # type: ignore[arg-type]
    splits = ", ".join(f"{name} {n}" for name, n in r.splits.items()) or "none"
    typer.echo(f"wrote {r.path}: {r.clips} clips, layout {r.layout} ({r.num_joints} joints); splits: {splits}")
    if r.skipped:
        typer.echo(f"left out {len(r.skipped)} clips without skeleton frames, e.g. "
                   f"{next(iter(r.skipped))}: {next(iter(r.skipped.values()))}")
