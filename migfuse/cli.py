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
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.errors import UserError
from migfuse.training.cli import (BatchSizeOpt, ConfigOpt, DeviceOpt, EpochsOpt, LrOpt, OverwriteOpt, SeedOpt,
                                  SetOpt, common_flags)


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
@data_app.command("prepare")
def data_prepare(
    root: Annotated[Path, typer.Option(help="Folder of the unpacked dataset download (any supported layout).")],
    out: Annotated[Path, typer.Option(help="PREPARED folder to write: manifest.csv, videos.csv, skeletons/, "
                                      "prepare_report.json.")],
    layout: Annotated[str, typer.Option(help="auto | oulu (Label/labels_20200831.csv + OpenPose JSON or xlsx) | "
                                        "miga2025 (<vid4>_label.csv + _openpose.xlsx) | miga2023 "
                                        "(<vid4>_label.csv + _light_hand.csv).")] = "auto",
    frame_base: Annotated[int, typer.Option(help="Frame number of the first frame in MiGA _label.csv files "
                                            "(0 = as labels_20200831.csv; see docs/data.md).")] = 0,
    workers: Annotated[int, typer.Option(help="Processes converting skeletons in parallel.")] = 1,
    reuse: Annotated[bool, typer.Option(help="Keep skeleton arrays of an earlier run into --out whose source "
                                        "is unchanged (resumes an interrupted run).")] = True,
) -> None:
    """Read a dataset download into one clip manifest and fast skeleton arrays.

    Detects the layout, reads every label file, converts each video's skeleton (OpenPose JSON
    folder, 411-column xlsx or light_hand csv) once into skeletons/<vid4>.npy (T, 137, 3), and
    derives the cross-subject, MiGA and emotion splits. Problems (empty skeletons, clips outside
    the skeleton, missing videos) are listed in prepare_report.json; the run goes on.
    """
    from migfuse.data_cache.prepare import prepare

    result = prepare(root, out, layout=layout, frame_base=frame_base, workers=workers, reuse=reuse)
    report = result.report
    typer.echo(f"{report['layout']} layout: {report['clips']} clips, {report['videos']} videos, "
               f"{report['videos_with_skeleton']} skeletons, {report['videos_with_mp4']} mp4 files")
    for scheme, counts in report["splits"].items():
        typer.echo(f"  {scheme}: " + ", ".join(f"{k or '(none)'} {v}" for k, v in counts.items()))
    for problem in report["problems"]:
        where = f" (video {problem['video_id']})" if "video_id" in problem else ""
        typer.echo(f"  problem {problem['kind']}{where}: {problem['detail']}")
    typer.echo(f"wrote {out} (details in {out / 'prepare_report.json'})")


# [end section: data]


# ---------------------------------------------------------------------------------------------
# data synth                                                                (foundation issue)
# ---------------------------------------------------------------------------------------------
# [section: data-synth]
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Empty folder to write the generated dataset into.")],
    layout: Annotated[str, typer.Option(help="miga2025 (default) | oulu | miga2023: the real layout to write.")] = "miga2025",
    videos: Annotated[int, typer.Option(help="Number of videos, 1..16 (the first 8 cover every split).")] = 8,
    clips_per_video: Annotated[int, typer.Option(help="Micro-gesture clips per video.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same dataset.")] = 0,
) -> None:
    """Generate a small demo dataset in a real iMiGUE layout: mp4 videos of a seated figure with a real
    face doing class-specific micro-gestures, the matching 137-point OpenPose skeletons, label files,
    subjects and Win/Lose per video (real iMiGUE video ids, so every split has members).
    Read it with `migfuse data prepare --root OUT`."""
    from migfuse.synth import generate_dataset

    root = generate_dataset(out, layout=layout, videos=videos, seed=seed, clips_per_video=clips_per_video)
    typer.echo(f"wrote a generated {layout} dataset to {root} (ground truth: {root / 'ground_truth.json'})")

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
@cache_app.command("view")
def cache_view_cmd(
    cache: Annotated[Path, typer.Argument(help="The token cache folder (CACHE.zarr).")],
    name: Annotated[Optional[str], typer.Option(help="View name; written as group views/NAME. Omit with --defaults.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Source group, e.g. video/mvit_v2_s (see `migfuse cache info`).")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Pooling: video_time, video_cls, pose_parts, pose_time, face_keep, "
                                                     "context_cls_mean, raw. Default: the track's default.")] = None,
    time_steps: Annotated[Optional[int], typer.Option(help="pose_parts/pose_time: time tokens kept (adaptive mean).")] = None,
    parts: Annotated[Optional[int], typer.Option(help="pose_parts: number of body-part groups (contiguous joint runs).")] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="Make the default view of every track in the cache "
                                                              "(views/video, views/joint, ...), what `fuse train` reads.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete and rebuild a view that exists with other settings.")] = False,
) -> None:
    """Derive compact pooled token sets ("views") from full cache groups, once, for fast training.

    A view (group views/NAME in the same cache) pools each clip's tokens into a few tokens, e.g. video
    (393, 768) -> class token + one mean token per time step (9, 768); pose (256, T', V) -> 8 time
    tokens + 6 body-part tokens. It stores many clips per chunk and records its source group,
    the source's provenance and the pooling. Re-running adds clips extracted since (resumable).
    """
    from migfuse.data_cache.views import default_views, make_view

    if defaults:
        made = default_views(cache, overwrite=overwrite)
        for modality, view in made.items():
            typer.echo(f"{modality:14s} -> {view}")
        if not made:
            raise UserError(f"cache {cache} has no finished track groups to derive views from; run `migfuse extract` first")
        return
    if not name or not group:
        raise UserError("give --name NAME and --group GROUP (or --defaults); see `migfuse cache view --help`")
    params = {k: v for k, v in {"time_steps": time_steps, "parts": parts}.items() if v is not None}
    view = make_view(cache, name, group, pooling=pool, overwrite=overwrite, **params)
    typer.echo(f"{view.name}: {len(view.done_ids())}/{len(view.ids)} rows, tokens {view.arrays['tokens'].shape}")

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
    input_path: Annotated[Path, typer.Option("--input", help="Input .npy array in the backbone's input layout (see `info`).")],
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
    if not input_path.is_file():
        raise UserError(f"input not found: {input_path} (pass a .npy array shaped {bb.input_doc})")
    try:
        x = np.load(input_path, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"cannot read {input_path} as a .npy array ({e}); {name} expects {bb.input_doc}") from None
    expected = _leading_shape(bb.input_doc)
    # only numeric dimensions are fixed ("3" or "C=3"); named ones (N, T, V) take any size
    fixed = [(d.split("=")[-1], s) for d, s in zip(expected, x.shape)]
    if x.ndim != len(expected) or any(int(d) != s for d, s in fixed if d.isdigit()):
        raise UserError(f"{input_path} has shape {x.shape}; {name} expects {bb.input_doc}")
    try:
        outputs = bb.run(x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x)
    except (RuntimeError, ValueError) as e:
        # a size the model was not built for (e.g. persons M vs the checkpoint) surfaces as a torch error
        logging.getLogger(__name__).debug("backbone run failed", exc_info=True)
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{name} cannot run on {input_path} of shape {x.shape} ({type(e).__name__}: {first}); "
                        f"it expects {bb.input_doc} (run with -v for the traceback)") from None
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
backbone_train_app = _group("Train a backbone on a prepared dataset (the skeleton track: no public "
                            "2s-AGCN checkpoint fits iMiGUE's OpenPose skeleton).")
backbone_app.add_typer(backbone_train_app, name="train")


@backbone_train_app.command("skeleton")
def backbone_train_skeleton(
    data: Annotated[Path, typer.Option("--data", help="PREPARED folder written by `migfuse data prepare`.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder: config.json, metrics.jsonl/.csv, "
                                                "curves.png, best.pt, last.pt, train.log (default "
                                                "runs/skeleton-ARCH-STREAM-LAYOUT). Rerunning the same command "
                                                "resumes.")] = None,
    stream: Annotated[Optional[str], typer.Option("--stream", help="joint (default) or bone.")] = None,
    layout: Annotated[Optional[str], typer.Option("--layout", help="Graph: imigue (55 joints, default), openpose22 "
                                                  "(MiGA baselines), openpose-18 or coco-17.")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="agcn (lshiwjx/2s-AGCN, default) or aagcn "
                                                "(mmaction2).")] = None,
    length: Annotated[Optional[int], typer.Option("--length", min=4, help="Frames each clip is resampled to "
                                                  "(default 64).")] = None,
    base_channels: Annotated[Optional[int], typer.Option("--base-channels", min=4,
                                                         help="Width of the first units (64 as published).")] = None,
    balance: Annotated[Optional[str], typer.Option("--balance", help="Long tail: weights (loss, default), sampler, "
                                                   "none.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from a published checkpoint of the same "
                                                 "--arch/--layout, e.g. mmaction2 coco 2s-AGCN with --arch "
                                                 "aagcn --layout coco-17.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="DataLoader worker processes "
                                                   "(default 0).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train one skeleton stream of 2s-AGCN on the training split; keep the best epoch.

    Trains on split_miga 'train' (falling back to split_cs), validates every epoch on split_miga
    'validation' (top-1 / top-5), writes the best checkpoint with its provenance (layout, preprocessing,
    split, seed) to OUT/best.pt. Settings: DEFAULTS in docs/skeleton.md, changed by --config FILE,
    --set KEY=VALUE (e.g. --set weight_decay=1e-4) and the options. Rerun the same command to resume
    after the last finished epoch. Then: `migfuse extract skeleton --checkpoint OUT/best.pt`.
    """
    from migfuse.extract.skeleton.train import resolve_config, train_skeleton

    flags = common_flags(stream=stream, layout=layout, arch=arch, length=length, base_channels=base_channels,
                         balance=balance, init=str(init) if init else None, workers=workers, epochs=epochs, lr=lr,
                         seed=seed, batch_size=batch_size, device=device)
    cfg = resolve_config(config, set_ or (), flags)
    result = train_skeleton(data, out or Path("runs") / f"skeleton-{cfg.arch}-{cfg.stream}-{cfg.layout}", cfg,
                            overwrite=overwrite)
    typer.echo(f"best epoch {result.best_epoch}: top-1 {result.best_top1:.4f} -> {result.best_checkpoint}")
# [end section: backbone-train]


# ---------------------------------------------------------------------------------------------
# backbone train video                                                      (fine-tuning issue #13)
# ---------------------------------------------------------------------------------------------
# [section: backbone-train-video]
@backbone_train_app.command("video")
def backbone_train_video(
    data: Annotated[Path, typer.Option("--data", help="PREPARED folder written by `migfuse data prepare` "
                                                      "(with its video files).")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Base MViTv2-S file: torchvision mvit_v2_s-ae3be167.pth (Kinetics-400), mmaction2 "
                             "MViTv2-S, or a migfuse best.pt. Without it: RANDOM weights (tests only, warned).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder: config.json, metrics.jsonl/.csv, curves.png, "
                                                    "best.pt, last.pt, train.log. Rerunning resumes.")] = Path("runs/mvit"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N. "
                         "Default: auto.")] = None,
    overwrite: OverwriteOpt = False,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the resolved settings as JSON "
                                              "(DEFAULTS <- --config <- --set <- options) and exit.")] = False,
) -> None:
    """Fine-tune MViTv2-S on the micro-gesture clips (32 classes); keep the best epoch.

    Trains on split_miga 'train', validates on split_miga 'validation' (or held-out training videos),
    with the frame sampling and preprocessing of `migfuse extract video` plus random resized crop and
    colour jitter (no flip). Recipe: AdamW, layer-wise lr decay, warm-up + cosine, label smoothing,
    class-balanced sampler, drop path, gradient clipping, bf16 on CUDA, gradient accumulation to
    target_batch; every setting and its default is in docs/finetune.md (`--show-config` prints them).
    Multi-GPU: `torchrun --nproc_per_node N -m migfuse.cli backbone train video ...`. Then:
    `migfuse extract video --checkpoint OUT/best.pt`.
    """
    import json
    import os

    from migfuse.extract.video_train import fine_tune_video, resolve

    flags = common_flags(epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, device=device)
    if show_config:
        typer.echo(json.dumps(resolve(config, set_ or (), flags), indent=1))
        return
    summary = fine_tune_video(data, out, checkpoint, config=config, sets=set_ or (), flags=flags,
                              overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # torchrun: print once
        best = summary["best"]
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        typer.echo(f"best epoch {best['epoch']}: {scores or 'no validation set'} -> {summary['best_checkpoint']}")
        typer.echo(f"{summary['n_train']} train / {summary['n_validation']} validation "
                   f"({summary['validation_source']}); {summary['epochs_run']} epochs now; run in {out}")
# [end section: backbone-train-video]


# ---------------------------------------------------------------------------------------------
# extract video / context                                                   (video issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-video]
_XVDataOpt = Annotated[Path, typer.Option("--data", help="PREPARED folder written by `migfuse data prepare`.")]
_XVCacheOpt = Annotated[Path, typer.Option("--cache", help="Token cache CACHE.zarr (created if absent, resumed if present).")]
_XVCkptOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="MViTv2-S checkpoint (torchvision mvit_v2_s-ae3be167.pth or mmaction2). "
                         "Without it: seeded RANDOM weights, for testing only (warned and recorded).")]
_XVDeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N (bf16 autocast on GPU).")]
_XVBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="16-frame windows per forward pass.")]
_XVWorkersOpt = Annotated[int, typer.Option(
    "--workers", min=0, help="Decoding processes running alongside the model (0 = decode in the main process).")]
_XVShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="I/N: process the I-th of N parts (whole videos), e.g. $SLURM_ARRAY_TASK_ID/N. "
                    "Under torchrun RANK/WORLD_SIZE are used instead.")]
_XVRetryOpt = Annotated[bool, typer.Option("--retry-failed", help="Also redo rows that failed in an earlier run.")]
_XVFramesOpt = Annotated[int, typer.Option("--frames", min=1, help="Frames per window (MViTv2-S expects 16).")]


def _extract_video_track(track: str, data: Path, cache: Path, checkpoint: Optional[Path], device: str,
                         batch_size: int, workers: int, shard: Optional[str], retry_failed: bool, frames: int,
                         windows: int = 1, context_windows: int = 8) -> None:
    from migfuse.extract.runner import format_summary
    from migfuse.extract.video import extract_track

    summary = extract_track(track, data, cache, checkpoint=checkpoint, device=device, batch_size=batch_size,
                            workers=workers, shard=shard, retry_failed=retry_failed, frames=frames,
                            windows=windows, context_windows=context_windows)
    typer.echo(format_summary(summary))
    if not summary.ok:
        raise typer.Exit(1)


@extract_app.command("video")
def extract_video(
    data: _XVDataOpt,
    cache: _XVCacheOpt,
    checkpoint: _XVCkptOpt = None,
    device: _XVDeviceOpt = "cpu",
    batch_size: _XVBatchOpt = 4,
    workers: _XVWorkersOpt = 2,
    shard: _XVShardOpt = None,
    retry_failed: _XVRetryOpt = False,
    frames: _XVFramesOpt = 16,
    windows: Annotated[int, typer.Option(
        "--windows", min=1, help="Up to this many 16-frame windows per long clip (one per 64 frames); "
                                 "stored ragged as (W, 393, 768). 1 = one window over the whole clip.")] = 1,
) -> None:
    """MViTv2-S tokens per clip -> group video/mvit_v2_s, (393, 768) fp16 per clip.

    Each video is decoded once for all its clips; 16 frames are sampled uniformly over each clip.
    Resumable (rerun the same command), shardable (--shard I/N or torchrun), and failures
    (missing/corrupt video, clip past the end) are recorded per clip: the exit code is 1 and a table
    lists them when any clip failed.
    """
    _extract_video_track("video", data, cache, checkpoint, device, batch_size, workers, shard, retry_failed,
                         frames, windows=windows)


@extract_app.command("context")
def extract_context(
    data: _XVDataOpt,
    cache: _XVCacheOpt,
    checkpoint: _XVCkptOpt = None,
    device: _XVDeviceOpt = "cpu",
    batch_size: _XVBatchOpt = 8,
    workers: _XVWorkersOpt = 2,
    shard: _XVShardOpt = None,
    retry_failed: _XVRetryOpt = False,
    frames: _XVFramesOpt = 16,
    context_windows: Annotated[int, typer.Option(
        "--context-windows", min=1, help="K windows (16 frames, every 4th) spread over each video.")] = 8,
) -> None:
    """MViTv2-S tokens of K windows per video (emotion context) -> group context/mvit_v2_s.

    Stores tokens (K, 393, 768) fp16 and valid (K,) per video. Same resume, sharding and failure
    rules as `extract video`.
    """
    _extract_video_track("context", data, cache, checkpoint, device, batch_size, workers, shard, retry_failed,
                         frames, context_windows=context_windows)
# [end section: extract-video]


# ---------------------------------------------------------------------------------------------
# extract skeleton                                                          (skeleton issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-skeleton]
@extract_app.command("skeleton")
def extract_skeleton(
    data: Annotated[Path, typer.Option("--data", help="PREPARED folder written by `migfuse data prepare`.")],
    cache: Annotated[Path, typer.Option("--cache", help="Token cache CACHE.zarr (created if absent, resumed if present).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="best.pt of `migfuse backbone train skeleton` "
                                                                  "(or a published 2s-AGCN / mmaction2 file).")],
    stream: Annotated[str, typer.Option("--stream", help="joint or bone (must match the checkpoint).")] = "joint",
    layout: Annotated[Optional[str], typer.Option("--layout", help="Only for checkpoints without migfuse "
                                                  "provenance: their graph layout.")] = None,
    length: Annotated[Optional[int], typer.Option("--length", min=4, help="Only for checkpoints without "
                                                  "migfuse provenance: frames per clip (default 64).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Loader processes (0 = load in the main "
                                                                  "process; skeletons are cheap to load).")] = 0,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: process the I-th of N parts (whole videos); "
                                                 "under torchrun RANK/WORLD_SIZE are used instead.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also redo rows that failed earlier.")] = False,
) -> None:
    """2s-AGCN feature maps per clip -> group joint/<arch> or bone/<arch>, (256, T', V) fp16.

    T' = ceil(length / 4). Layout, clip length and preprocessing come from the checkpoint. Resumable
    (rerun the same command), shardable, and clips that cannot be extracted (video without skeleton,
    frames outside the skeleton file, no person detected) are recorded per clip: the exit code is 1
    and a table lists them.
    """
    from migfuse.extract.runner import format_summary
    from migfuse.extract.skeleton.extractor import extract_skeleton as run

    summary = run(data, cache, checkpoint, stream, layout=layout, length=length, device=device,
                  batch_size=batch_size, workers=workers, shard=shard, retry_failed=retry_failed)
    typer.echo(format_summary(summary))
    if not summary.ok:
        raise typer.Exit(1)
# [end section: extract-skeleton]


# ---------------------------------------------------------------------------------------------
# extract face                                                              (face issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-face]
@extract_app.command("face")
def extract_face_cmd(
    data: Annotated[Path, typer.Option(help="PREPARED folder (`migfuse data prepare` output).")],
    cache: Annotated[Path, typer.Option(help="Token cache CACHE.zarr (created if absent).")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="SwinFace .pt (the original file with state_dict_backbone/"
                                                       "fam/tss/om). Without it: RANDOM weights, for testing only.")] = None,
    scope: Annotated[str, typer.Option(help="clip: K faces per clip -> face/swinface; context: K faces per context "
                                       "window of each video -> face_context/swinface.")] = "clip",
    frames: Annotated[int, typer.Option(help="K face frames per clip / per window.")] = 8,
    context_windows: Annotated[int, typer.Option(help="Windows per video for --scope context (use the context "
                                                 "track's value so the windows line up).")] = 8,
    global_tokens: Annotated[bool, typer.Option(help="Also store SwinFace's 7x7x768 global tokens per face.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N for SwinFace (MTCNN runs in the loader workers).")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Faces per SwinFace forward.")] = 32,
    workers: Annotated[int, typer.Option(help="Loader processes (decode + MTCNN + alignment).")] = 1,
    shard: Annotated[Optional[str], typer.Option(help="I/N: this process takes every N-th video from the I-th "
                                                 "(SLURM arrays); default: torchrun's RANK/WORLD_SIZE or all.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Also redo rows an earlier run recorded as failed.")] = False,
) -> None:
    """SwinFace expression features of MTCNN-aligned faces -> face/swinface or face_context/swinface.

    Per face frame: the expression-branch 512-d feature and the 7 expression logits, plus a mask
    (frames without the main face are masked, never filled). Same resume, sharding and failure
    rules as `extract video`; a video with no face at all is stored fully masked, not failed.
    """
    from migfuse.extract.face.extractor import extract_face
    from migfuse.extract.runner import format_summary

    summary = extract_face(data, cache, scope=scope, checkpoint=checkpoint, device=device, batch_size=batch_size,
                           workers=workers, shard=shard, retry_failed=retry_failed, frames=frames,
                           context_windows=context_windows, global_tokens=global_tokens)
    typer.echo(format_summary(summary))
    if not summary.ok:
        raise typer.Exit(1)

# [end section: extract-face]


# ---------------------------------------------------------------------------------------------
# fuse train / eval / predict                                               (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: fuse]
@fuse_app.command("train")
def fuse_train_cmd(
    cache: Annotated[Path, typer.Option(help="The token cache (CACHE.zarr) with views (`migfuse cache view --defaults`).")],
    data: Annotated[Path, typer.Option(help="The PREPARED folder (manifest) the cache was extracted from.")],
    task: Annotated[str, typer.Option(help="mg (32 micro-gesture classes, per clip) or emotion (win/lose, per video).")],
    out: Annotated[Path, typer.Option(help="Run folder: config.json, metrics.jsonl/.csv, curves.png, best.pt, "
                                           "last.pt, train.log. Rerunning the same command resumes.")],
    head: Annotated[Optional[str], typer.Option(help="Head (`migfuse fuse heads`); default cmtf (mg) / interfusion (emotion).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    overwrite: OverwriteOpt = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Train without clips the cache lacks (reports how many).")] = False,
) -> None:
    """Train a fusion head on cached tokens (AdamW, cosine with warm-up, label smoothing, class-balanced
    loss, early stopping on validation). mg validation = split_miga validation, or 10% of training
    videos held out when the manifest has none; emotion validation = 15% of split_emotion train
    videos. Settings: DEFAULTS in docs/fuse.md, changed by --config FILE, --set KEY=VALUE and the
    options. Refuses a cache that lacks clips of the manifest unless --allow-missing."""
    from migfuse.fuse.train import train

    summary = train(cache, data, task, out, head=head, config=config, allow_missing=allow_missing, sets=set_ or (),
                    flags=common_flags(epochs=epochs, lr=lr, seed=seed, batch_size=batch_size), overwrite=overwrite)
    best = summary["best"]
    scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
    typer.echo(f"best epoch {best['epoch']}: {scores or 'no validation set'}")
    typer.echo(f"{summary['n_train']} train / {summary['n_validation']} validation ({summary['validation_source']}); "
               f"{summary['epochs_run']} epochs now, {summary['train_seconds']:.0f} s; run in {out}")


@fuse_app.command("eval")
def fuse_eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `migfuse fuse train`.")],
    split: Annotated[str, typer.Option(help="train, validation (as held out in training) or test.")] = "test",
    cache: Annotated[Optional[Path], typer.Option(help="Cache to read (default: the one the run was trained on).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="PREPARED folder (default: the run's).")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip clips the cache lacks.")] = False,
) -> None:
    """Score the run's best checkpoint on a labelled split. mg: top-1, top-5, mean class accuracy,
    per-class table and a confusion-matrix PNG; emotion: accuracy, F1, ROC-AUC. Files go to
    RUN/eval_SPLIT/ (metrics.json, per_class.csv, confusion.png)."""
    from migfuse.fuse.evaluate import evaluate

    m = evaluate(run, split, cache=cache, data=data, allow_missing=allow_missing)
    if m["task"] == "mg":
        typer.echo(f"{split}: {m['n']} clips  top-1 {m['top1']:.2%}  top-5 {m['top5']:.2%}  "
                   f"mean class {m['mean_class_accuracy']:.2%}")
        typer.echo(f"{'class':>5} {'name':24s} {'n':>5} {'acc':>7}")
        for row in m["per_class"]:
            if row["support"]:
                typer.echo(f"{row['class']:>5} {row['name']:24s} {row['support']:>5} {row['accuracy']:>7.1%}")
    else:
        typer.echo(f"{split}: {m['n']} videos  accuracy {m['accuracy']:.2%}  F1 {m['f1']:.3f}  ROC-AUC {m['roc_auc']:.3f}")
    typer.echo("files: " + ", ".join(m["files"].values()))


@fuse_app.command("predict")
def fuse_predict_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `migfuse fuse train`.")],
    split: Annotated[str, typer.Option(help="train, validation or test.")],
    out: Annotated[Path, typer.Option(help="Scores file to write (.npz), read by `migfuse export`.")],
    cache: Annotated[Optional[Path], typer.Option(help="Cache to read (default: the one the run was trained on).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="PREPARED folder (default: the run's).")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip clips the cache lacks.")] = False,
) -> None:
    """Write class probabilities of every clip (mg) or video (emotion) of a split, keyed by id
    (migfuse.fuse.scores.Scores .npz), for `migfuse export` and late fusion."""
    from migfuse.fuse.predict import predict

    scores = predict(run, split, out, cache=cache, data=data, allow_missing=allow_missing)
    typer.echo(f"wrote {len(scores)} {scores.task} scores ({split}) to {out}")


@fuse_app.command("heads")
def fuse_heads_cmd() -> None:
    """List the fusion heads and their default options (override them with "head_options" in --config)."""
    from migfuse.fuse.heads import head_class, list_heads

    for name in list_heads():
        cls = head_class(name)
        typer.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for k, v in cls.DEFAULTS.items():
            typer.echo(f"    {k} = {v!r}")

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
    scores: Annotated[list[Path], typer.Argument(
        metavar="SCORES", help="Two or more scores .npz of one task, e.g. joint bone cmtf.")],
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
    out: Annotated[Path, typer.Option(help="Folder for the generated dataset and every artifact (reused when rerun).")] = Path("demo_out"),
    videos: Annotated[int, typer.Option(help="Number of generated videos (the first 8 cover every split).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the generated dataset.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Run the whole pipeline on a generated dataset (a few minutes on a CPU) and print where each
    artifact is: generate -> prepare -> extract video, context, skeleton, face -> views -> CMTF and
    InterFusion -> predict -> MiGA 2025 and emotion zips. Video and face backbones use random weights."""
    from migfuse.demo import run_demo

    started = time.perf_counter()
    artifacts = run_demo(out, videos=videos, seed=seed, device=device)
    width = max(len(k) for k in artifacts)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        typer.echo(f"  {name:<{width}}  {path}")
    typer.echo(f"next: migfuse cache info {out / 'cache.zarr'}   |   migfuse fuse eval {out / 'runs' / 'cmtf'} --split validation")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
