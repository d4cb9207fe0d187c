"""`migfuse data`: read a dataset download into a PREPARED folder; generate a demo dataset; export skeletons."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.commands.app import deprecated, group
from migfuse.commands.options import (SEED_MAX, WORKERS_MAX, DataOpt, DatasetLayout, DeviceOpt, PoseScope, PrecisionOpt,
                                      PysklLayout, Scheme, SynthLayout, ThreadsOpt, VideoRootOpt, parse_shard,
                                      path_argument, path_option)
from migfuse.errors import UserError
from migfuse.runtime import Precision

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


@app.command("pose")
def data_pose(
    data: DataOpt,
    out: Annotated[Path, path_option("--out", use="folder", help="New PREPARED folder to write the estimated "
                                     "skeletons into (the --data folder is never changed). Run again to resume.")],
    pose_model: Annotated[Path, path_option("--pose-model", help="Local Hugging Face folder of the top-down "
                                            "pose model (ViTPose); nothing is downloaded. See docs/pose.md.")],
    detector: Annotated[Optional[Path], path_option("--detector", help="Local Hugging Face folder of the person "
                                                    "detector (e.g. RT-DETR). Left out: the whole frame is the "
                                                    "one person box (for videos cropped to their subject); "
                                                    "--box-threshold and --max-persons are then unused.")] = None,
    scope: Annotated[PoseScope, typer.Option(
        "--scope", case_sensitive=False,
        help="clips: the frames of every clip (what the skeleton tracks read); videos: every frame of each video.")
    ] = PoseScope.clips,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.AUTO,
    threads: ThreadsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096,
                                            help="Frames per estimator call (the models batch inside).")] = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, max=WORKERS_MAX,
                                         help="Loader processes decoding videos while the models run; 0 = decode "
                                              "in the main process.")] = 1,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", parser=parse_shard, metavar="<I/N>",
        help="I/N: process the I-th of N parts (whole videos), e.g. $SLURM_ARRAY_TASK_ID/N.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also redo videos that failed in an "
                                               "earlier run.")] = False,
    box_threshold: Annotated[float, typer.Option("--box-threshold", min=0.0, max=1.0,
                                                 help="Least detector score of a person (unused without "
                                                      "--detector).")] = 0.3,
    max_persons: Annotated[int, typer.Option("--max-persons", min=1, max=100,
                                             help="Most people per frame given to the pose model (unused "
                                                  "without --detector).")] = 5,
    ambiguity: Annotated[float, typer.Option(
        "--ambiguity", min=0.0, max=1.0,
        help="A second person whose weight (box area x centrality x score) reaches this share of the subject's "
             "over the frames they share makes those frames ambiguous: recorded per clip in pose_report.json.")
    ] = 0.8,
    video_root: VideoRootOpt = None,
) -> None:
    """Estimate 2-D skeletons from the videos: a person detector and a top-down pose model over the frames
    of every clip (or whole video); the main subject (the largest, most central, most persistent person) is
    tracked across frames, and where two people are about equally likely the clip is recorded as ambiguous.

    Writes a new PREPARED folder (--out) whose skeletons/ hold the subject's points in the model's layout
    (coco-17: the only layout the supported pose models give) with per-point confidence, read by
    `extract skeleton` (e.g. --layout coco-17) and the exporters as OpenPose skeletons are; videos.csv and
    prepare_report.json name each video's pose source. Resumable after a kill (per-video status under
    pose/), sharded (--shard); undecodable videos are recorded with the reason and the others go on.
    Run report: pose_report.json; exit code 1 when any video failed (after the report).
    """
    from migfuse.datasets.manifest import Manifest
    from migfuse.pose_estimation.run import check_out, load_estimator, run_pose
    from migfuse.pose_estimation.tracking import TrackerSettings
    from migfuse.runtime import Runtime

    manifest = Manifest.load(data)  # a wrong --data or --out is said before the models load
    check_out(manifest, out)
    runtime = Runtime.resolve(device=device, precision=precision, threads=threads)
    estimator = load_estimator(pose_model, detector, device=str(runtime.device), box_threshold=box_threshold,
                               max_persons=max_persons, batch_size=batch_size, precision=str(runtime.precision))
    result = run_pose(manifest, out, estimator, scope=scope.value, workers=workers, batch_size=batch_size, shard=shard,
                      retry_failed=retry_failed, video_root=video_root, tracker=TrackerSettings(ambiguity=ambiguity))
    r = result.report
    rate = result.frames / result.seconds if result.seconds > 0 else 0.0
    typer.echo(f"this run: {len(result.done)} videos done, {len(result.failed)} failed, {result.skipped} kept from "
               f"an earlier run; {result.frames} frames in {result.seconds:.0f} s ({rate:.1f} frames/s)")
    typer.echo(f"{out}: {r['videos_done']} of {r['videos']} videos done ({r['layout']}, {r['pose_source']}), "
               f"{r['videos_failed']} failed, {r['videos_not_done']} not yet; {r['frames_without_person']} of "
               f"{r['frames_estimated']} frames without a person; mean confidence {r['mean_confidence']:.3f}")
    for vid, why in r["failed"].items():
        typer.echo(f"  video {vid} failed: {why}")
    for vid, clips in r["ambiguous_clips"].items():
        typer.echo(f"  video {vid}: two people about equally likely in clips {', '.join(clips)} (frames in "
                   "pose_report.json)")
    typer.echo(f"wrote {out} (details in {out / 'pose_report.json'})")
    if r["videos_failed"]:  # as `extract`: a script or job array sees that videos failed
        raise typer.Exit(1)


@app.command("export-openpose")
def data_export_openpose(
    prepared: Annotated[Path, path_argument(metavar="PREPARED", help="PREPARED folder (of `data prepare` or "
                                             "`data pose`).")],
    out: Annotated[Path, path_argument(use="folder", metavar="OUT", help="Folder to write <vid4>/ folders of "
                                       "frame files into.")],
) -> None:
    """Write the prepared skeletons as OpenPose JSON, one <vid4>_<frame>_keypoints.json per frame
    (pose_keypoints_2d = BODY_25, flat [x, y, c] x 25, plus face and hands), as OpenPose writes them, so
    other toolkits (and `migfuse data prepare`) read them. Estimated COCO points sit at their BODY_25 places;
    the neck and mid-hip are the shoulders' and hips' midpoints; points the model lacks are 0, 0, 0."""
    from migfuse.datasets.openpose_export import export_openpose

    r = export_openpose(prepared, out)
    typer.echo(f"wrote {sum(r.videos.values())} frame files of {len(r.videos)} videos to {r.out}"
               + (f"; left out {len(r.skipped)} videos without a skeleton" if r.skipped else ""))
