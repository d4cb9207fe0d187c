"""`migfuse extract`: write the token tensors of one track into the Zarr cache, through one door.

Each command declares only its track's own options; the runtime options (--device, --precision,
--compile, --threads, --trust-checkpoint) and the run options (--batch-size, --workers, --shard,
--retry-failed) are the shared groups of `migfuse.commands.options`, and every command ends in
`migfuse.extract.entry.extract`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from migfuse.commands.app import group
from migfuse.commands.options import (CacheOpt, DataOpt, Decoder, ExtractOptions, FaceScope, RuntimeOptions,
                                      SkeletonLayout, Stream, VideoRootOpt, choice, path_option, with_options)
from migfuse.extract.presets import PRESETS

app = group("Turn clips into token tensors in the Zarr cache (resumable, sharded, failures recorded).")

ClipFramesOpt = Annotated[Optional[int], typer.Option(
    "--frames", min=1, max=64, show_default="the backbone's recipe: 16 for MViTv2-S",
    help="Frames per window. A backbone with a recipe takes only its own count.")]
FaceFramesOpt = Annotated[int, typer.Option("--frames", min=1, max=64, help="Face frames per clip or per window.")]
ContextWindowsOpt = Annotated[int, typer.Option(
    "--context-windows", min=1, max=256,
    help="K windows spread over each video, each of the backbone's recipe's frame count, every 4th frame (MViTv2-S: "
         "16 frames; Video Swin: 32); the face track's --scope context must use the context track's value.")]
DecoderOpt = Annotated[Decoder, typer.Option(
    "--decoder", case_sensitive=False,
    help="cpu: PyAV (FFmpeg) in the loader workers. gpu: NVDEC on the extraction's GPU through torchcodec "
         "(`pip install torchcodec` for your torch); where it cannot run, the CPU is used and one line says why.")]
BackboneOpt = Annotated[str, typer.Option(
    "--backbone", help="A registered video backbone (`migfuse backbone info NAME` says which tracks it extracts); "
                       "its recipe (frames, size, mean/std) comes with it. The group is TRACK/BACKBONE.")]
VideoCheckpointOpt = Annotated[Optional[Path], path_option(
    "--checkpoint", help="The backbone's checkpoint (MViTv2-S: torchvision mvit_v2_s-ae3be167.pth, mmaction2, or a "
                         "migfuse fine-tuned best.pt; videomae / vjepa2: a local Hugging Face model folder). Without "
                         "it: seeded RANDOM weights, for testing only (warned and recorded).")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", **choice(tuple(PRESETS)),
    help="A named recipe that pins the settings and pools each clip to one vector (group TRACK/BACKBONE-NAME). "
         "paper: the seed paper's published extraction (MViTv2-S, 16 frames spread evenly over the clip, one "
         "768-d vector; mmaction2 NTU60 2-D 2s-AGCN, COCO-17, 100 frames, one 256-d vector per stream). An option "
         "it pins given with another value is refused; see docs/paper_preset.md.")]


def _extract(track: str, data: Path, cache: Path, runtime: RuntimeOptions, run: ExtractOptions,
             **track_options: Any) -> None:
    """Resolve the runtime, extract, print the report; exit 1 when any row failed (under torchrun: of
    any rank, so all ranks exit alike and torchrun does not stop ranks still writing their report)."""
    from migfuse.extract.entry import extract
    from migfuse.extract.report import format_summary

    rt = runtime.resolve()
    with rt.process_group("gloo"):  # torchrun: a CPU group for counting failures and the last barrier
        summary = extract(track, data, cache, rt, run.run_options(), **track_options)
        typer.echo(format_summary(summary))
    if not summary.ok:
        raise typer.Exit(1)


@app.command("video")
@with_options(ExtractOptions, "run")
@with_options(RuntimeOptions)
def extract_video(
    data: DataOpt,
    cache: CacheOpt,
    runtime: RuntimeOptions,
    run: ExtractOptions,
    checkpoint: VideoCheckpointOpt = None,
    backbone: BackboneOpt = "mvit_v2_s",
    frames: ClipFramesOpt = None,
    windows: Annotated[int, typer.Option(
        "--windows", min=1, max=64, help="Up to this many windows per long clip (one per 64 frames); stored "
                                         "ragged as (W, 393, 768). 1 = one window over the whole clip.")] = 1,
    video_root: VideoRootOpt = None,
    decoder: DecoderOpt = Decoder.cpu,
    preset: PresetOpt = None,
) -> None:
    """Clip tokens per clip -> group video/BACKBONE, (393, 768) fp16 per clip for MViTv2-S.

    Each video is decoded once for all its clips; 16 frames are sampled uniformly over each clip.
    Resumable (rerun the same command), shardable (--shard I/N or torchrun), and failures
    (missing/corrupt video, clip past the end) are recorded per clip: the exit code is 1 and a table
    lists them when any clip failed. On a CPU: 4 clips per forward, 2 loader workers. The report ends
    with where the time went (waiting for loaders vs forward): see docs/extract.md, "Speed".
    """
    _extract("video", data, cache, runtime, run, checkpoint=checkpoint, backbone=backbone, frames=frames,
             windows=windows, video_root=video_root, decoder=decoder.value, preset=preset)


@app.command("context")
@with_options(ExtractOptions, "run")
@with_options(RuntimeOptions)
def extract_context(
    data: DataOpt,
    cache: CacheOpt,
    runtime: RuntimeOptions,
    run: ExtractOptions,
    checkpoint: VideoCheckpointOpt = None,
    backbone: BackboneOpt = "mvit_v2_s",
    frames: ClipFramesOpt = None,
    context_windows: ContextWindowsOpt = 8,
    video_root: VideoRootOpt = None,
    decoder: DecoderOpt = Decoder.cpu,
) -> None:
    """Clip tokens of K windows per video (emotion context) -> group context/BACKBONE.

    Stores tokens (K, 393, 768) fp16 and valid (K,) per video for MViTv2-S. Same resume, sharding
    and failure rules as `extract video`. On a CPU: 8 windows per forward, 2 loader workers.
    """
    _extract("context", data, cache, runtime, run, checkpoint=checkpoint, backbone=backbone, frames=frames,
             context_windows=context_windows, video_root=video_root, decoder=decoder.value)


@app.command("skeleton")
@with_options(ExtractOptions, "run")
@with_options(RuntimeOptions)
def extract_skeleton(
    data: DataOpt,
    cache: CacheOpt,
    runtime: RuntimeOptions,
    run: ExtractOptions,
    checkpoint: Annotated[Optional[Path], path_option(
        "--checkpoint", help="best.pt of `migfuse backbone train skeleton` (or a published 2s-AGCN / mmaction2 "
                             "file); for posec3d an mmaction2 / pyskl PoseC3D file (without it: RANDOM weights, "
                             "for testing only).")] = None,
    backbone: Annotated[Optional[str], typer.Option(
        "--backbone", show_default="from the checkpoint: agcn or aagcn",
        help="agcn, aagcn, or posec3d (heatmap volumes: keypoints for --stream joint, limbs for bone).")] = None,
    stream: Annotated[Stream, typer.Option("--stream", help="Must match the checkpoint.")] = Stream.joint,
    layout: Annotated[Optional[SkeletonLayout], typer.Option(
        "--layout", help="Only for checkpoints without migfuse provenance: their graph layout.")] = None,
    length: Annotated[Optional[int], typer.Option("--length", min=4, max=1024, show_default="64", help="Only for "
                                                  "checkpoints without migfuse provenance: frames per clip.")] = None,
    preset: PresetOpt = None,
) -> None:
    """2s-AGCN or PoseC3D feature maps per clip -> group joint/<arch> or bone/<arch>, (256, T', V) fp16.

    posec3d: heatmap volumes built as mmaction2's test pipeline builds them (COCO-17, 48 frames, 64x64),
    drawn on the extraction device; (512, 24, 64) fp16 per clip (channels, time, 8x8 positions).

    T' = ceil(length / 4). Layout, clip length and preprocessing come from the checkpoint. Resumable
    (rerun the same command), shardable, and clips that cannot be extracted (video without skeleton,
    a clip running past the skeleton file, no person detected) are recorded per clip: the exit code
    is 1 and a table lists them. Skeletons are cheap to load: on a CPU --workers 0 (64 clips per
    forward) is the default.
    """
    _extract(stream.value, data, cache, runtime, run, checkpoint=checkpoint,
             layout=layout.value if layout else None, length=length, backbone=backbone, preset=preset)


@app.command("face")
@with_options(ExtractOptions, "run")
@with_options(RuntimeOptions)
def extract_face(
    data: DataOpt,
    cache: CacheOpt,
    runtime: RuntimeOptions,
    run: ExtractOptions,
    checkpoint: Annotated[Optional[Path], path_option(
        "--checkpoint", help="SwinFace .pt (the original file with state_dict_backbone/fam/tss/om). Without it: "
                             "RANDOM weights, for testing only.")] = None,
    scope: Annotated[FaceScope, typer.Option(
        "--scope", help="clip: K faces per clip -> face/swinface; context: K faces per context window of each "
                        "video -> face_context/swinface.")] = FaceScope.clip,
    frames: FaceFramesOpt = 8,
    context_windows: ContextWindowsOpt = 8,
    global_tokens: Annotated[bool, typer.Option("--global-tokens", help="Also store SwinFace's 7x7x768 global "
                                                "tokens per face.")] = False,
    video_root: VideoRootOpt = None,
    decoder: DecoderOpt = Decoder.cpu,
) -> None:
    """SwinFace expression features of MTCNN-aligned faces -> face/swinface or face_context/swinface.

    Per face frame: the expression-branch 512-d feature and the 7 expression logits, plus a mask
    (frames without the main face are masked, never filled). MTCNN runs in the loader workers: on the
    CPU, or on the GPU (64 frames per call) when the extraction runs on one. On a CPU: 32 faces per
    SwinFace forward, 1 loader worker. Same resume, sharding and failure rules as `extract video`; a
    video with no face at all is stored fully masked, not failed.
    """
    from migfuse.extract.face.extractor import scope_track

    _extract(scope_track(scope.value).name, data, cache, runtime, run, checkpoint=checkpoint, frames=frames,
             context_windows=context_windows, global_tokens=global_tokens, video_root=video_root,
             decoder=decoder.value)


def _track_list(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


#: `extract all`'s options that only some tracks use: option -> (parameter, the tracks that use it)
_TRACK_ONLY_OPTIONS = {
    "--checkpoint": ("checkpoint", ("video", "context")), "--backbone": ("backbone", ("video", "context")),
    "--frames": ("frames", ("video", "context")), "--windows": ("windows", ("video",)),
    "--context-windows": ("context_windows", ("context", "face_context")),
    "--face-checkpoint": ("face_checkpoint", ("face", "face_context")),
    "--face-frames": ("face_frames", ("face", "face_context")),
    "--global-tokens": ("global_tokens", ("face", "face_context")),
}


def _refuse_unused_options(ctx: typer.Context, names: list[str]) -> None:
    """UserError for an option given on the command line that none of the chosen tracks uses (it would
    be silently ignored); track names that are not one-pass tracks are left to `extract_in_one_pass`."""
    from migfuse.errors import UserError
    from migfuse.extract.multi_run import ONE_PASS_TRACKS

    if not names or any(t not in ONE_PASS_TRACKS for t in names):
        return
    for option, (param, users) in _TRACK_ONLY_OPTIONS.items():
        source = ctx.get_parameter_source(param)
        given = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")  # not a default
        if given and not set(users) & set(names):
            raise UserError(f"{option} is not used by --tracks {','.join(names)}: it is for the "
                            f"{' / '.join(users)} track{'s' if len(users) > 1 else ''}; drop it or add such a track")


@app.command("all")
@with_options(ExtractOptions, "run")
@with_options(RuntimeOptions)
def extract_all(
    ctx: typer.Context,
    data: DataOpt,
    cache: CacheOpt,
    runtime: RuntimeOptions,
    run: ExtractOptions,
    tracks: Annotated[str, typer.Option(
        "--tracks", metavar="<video,context,face,face_context>",
        help="The video tracks to write, comma-separated; each video is decoded once for all of them.")]
        = "video,context,face,face_context",
    checkpoint: VideoCheckpointOpt = None,
    backbone: BackboneOpt = "mvit_v2_s",
    frames: ClipFramesOpt = None,
    windows: Annotated[int, typer.Option("--windows", min=1, max=64, help="As `extract video --windows`.")] = 1,
    context_windows: ContextWindowsOpt = 8,
    face_checkpoint: Annotated[Optional[Path], path_option(
        "--face-checkpoint", help="SwinFace .pt for the face tracks (as `extract face --checkpoint`). Without it: "
                                  "RANDOM weights, for testing only.")] = None,
    face_frames: Annotated[int, typer.Option("--face-frames", min=1, max=64,
                                             help="Face frames per clip or per window.")] = 8,
    global_tokens: Annotated[bool, typer.Option("--global-tokens", help="As `extract face --global-tokens`.")] = False,
    video_root: VideoRootOpt = None,
    decoder: DecoderOpt = Decoder.cpu,
) -> None:
    """The video tracks in one pass: video/BACKBONE, context/BACKBONE, face/swinface, face_context/swinface.

    Each video is decoded once, in order, for every track's rows of it (the frames no track needs are
    skipped where the codec allows), instead of once per command. Every group is exactly what its
    own command (`extract video|context|face [--scope context]`) writes with the same options: the
    same rows, tokens, provenance, resume and failure records; a group started by one command is
    resumed by the other. Each track runs its forward in its own batches (--batch-size, when given,
    sets all of them). Exit code 1 when any row of any track failed; one report per track.
    """
    from migfuse.extract.multi_run import extract_in_one_pass
    from migfuse.extract.report import format_summary

    video = dict(backbone=backbone, frames=frames, video_root=video_root, decoder=decoder.value)
    face = dict(frames=face_frames, context_windows=context_windows, video_root=video_root, decoder=decoder.value,
                global_tokens=global_tokens)
    options = {"video": {**video, "windows": windows}, "context": {**video, "context_windows": context_windows},
               "face": face, "face_context": face}
    names = _track_list(tracks)
    _refuse_unused_options(ctx, names)
    rt = runtime.resolve()
    with rt.process_group("gloo"):
        summaries = extract_in_one_pass(
            names, data, cache, rt, run.run_options(),
            checkpoints={"video": checkpoint, "context": checkpoint, "face": face_checkpoint,
                         "face_context": face_checkpoint},
            track_options={t: options[t] for t in names if t in options},
            checkpoint_options={"face": "--face-checkpoint", "face_context": "--face-checkpoint"})
        for s in summaries:
            typer.echo(format_summary(s))
    if not all(s.ok for s in summaries):
        raise typer.Exit(1)
