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
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from migfuse.errors import UserError
from migfuse.training.cli import (BatchSizeOpt, ConfigOpt, DeviceOpt, EpochsOpt, LrOpt, OverwriteOpt, SeedOpt,
                                  SetOpt, common_flags)


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


class _App(typer.Typer):
    """A Typer whose commands turn a `UserError` into one line on stderr and exit status 2, and a
    missing optional dependency into one line naming the extra that installs it."""

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
                except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through `_terminated`
                    typer.secho("\ninterrupted: finished work is kept; rerun the same command to go on",
                                err=True, fg=typer.colors.YELLOW)
                    raise typer.Exit(getattr(e, "exit_code", 130)) from None
                except ModuleNotFoundError as e:
                    message = _missing_extra(e)
                    if message is None:
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


class _Group(TyperGroup):
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
        return super().parse_args(ctx, args)


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _hoist_root_flags(args: list[str]) -> list[str]:
    """Move `-v/--verbose/--version` typed after a subcommand to the front, where the root parses them."""
    end = args.index("--") if "--" in args else len(args)
    head, tail = args[:end], args[end:]
    flags = list(dict.fromkeys(_ROOT_FLAGS[a] for a in head if a in _ROOT_FLAGS))
    return flags + [a for a in head if a not in _ROOT_FLAGS] + tail


def _group(help: str) -> _App:
    return _App(help=help, cls=_Group, no_args_is_help=True, rich_markup_mode=None,
                pretty_exceptions_show_locals=False, context_settings={"help_option_names": ["-h", "--help"]})


app = _group("migfuse: iMiGUE micro-gesture and emotion recognition from a Zarr token cache.\n\n"
             "Pipeline: data prepare -> extract TRACK -> cache view -> fuse train -> fuse predict -> export.\n"
             "Try `migfuse demo` for the whole pipeline on a generated dataset.")
data_app = _group("Read an iMiGUE download into one clip manifest and fast skeleton arrays; generate demo data.")
backbone_app = _group("Inspect, run and train the backbones (check a checkpoint before extracting).")
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


def _print_version(value: bool) -> None:
    if value:
        from migfuse import __version__

        typer.echo(f"migfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages (also after a subcommand).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the migfuse version and exit.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # -v: migfuse's own debug lines, not those of zarr, matplotlib, filelock and the like
    logging.getLogger("migfuse").setLevel(logging.DEBUG if verbose else logging.NOTSET)


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
    folder of any OpenPose version, BODY_25 or COCO-18; 411-column xlsx; light_hand csv) once into
    skeletons/<vid4>.npy (T, 137, 3), and derives the cross-subject, MiGA and emotion splits.
    Videos (mp4, avi, mkv, mov, webm) are found anywhere under the root and stored relative to it;
    a phone video's display rotation is recorded. Problems (empty or refused skeletons, unreadable
    frames, clips outside the skeleton, missing videos) are listed in prepare_report.json and
    here; the run goes on. See docs/data.md for every accepted variant.
    """
    from migfuse.datasets.prepare import prepare

    result = prepare(root, out, layout=layout, frame_base=frame_base, workers=workers, reuse=reuse)
    report = result.report
    typer.echo(f"{report['layout']} layout: {report['clips']} clips, {report['videos']} videos, "
               f"{report['videos_with_skeleton']} skeletons, {report['videos_with_file']} video files, "
               f"{report['unreadable_frames']} unreadable skeleton frame files")
    for vid, degrees in report["rotated_videos"].items():
        typer.echo(f"  video {vid} is stored rotated: decoded upright with a {degrees} degree clockwise turn")
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
# data export-pyskl                                                         (interop issue #12 §3)
# ---------------------------------------------------------------------------------------------
# [section: data-export-pyskl]
@data_app.command("export-pyskl")
def data_export_pyskl(
    prepared: Annotated[Path, typer.Argument(metavar="PREPARED", help="PREPARED folder written by `migfuse data prepare`.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The pyskl annotation .pkl to write.")],
    layout: Annotated[str, typer.Option(help="Joints to keep: coco-17 (pyskl 'coco', PoseC3D / ST-GCN++ 2D), "
                                        "openpose-18 (pyskl 'openpose'), openpose22 (MiGA 2023) or imigue (55).")]
    = "coco-17",
    scheme: Annotated[str, typer.Option(help="Manifest column that names the splits: split_miga, split_cs or "
                                        "split_emotion.")] = "split_miga",
    img_shape: Annotated[str, typer.Option(help="Frame size HEIGHTxWIDTH in pixels, written as img_shape.")]
    = "720x1280",
) -> None:
    """Write the prepared skeletons in pyskl's 2D annotation format (`split` + `annotations` with
    keypoint (1, T, V, 2) and keypoint_score (1, T, V) float32, frame_dir = clip id), so ST-GCN++ or
    PoseC3D train on migfuse's manifest. Bring their test results back with `migfuse scores import`."""
    from migfuse.datasets.pyskl import export_pyskl

    try:
        shape = tuple(int(v) for v in img_shape.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) <= 0:
        raise UserError(f"--img-shape {img_shape!r} must be HEIGHTxWIDTH in pixels, e.g. 720x1280")
    r = export_pyskl(prepared, out, layout=layout, scheme=scheme, img_shape=shape)  # type: ignore[arg-type]
    splits = ", ".join(f"{name} {n}" for name, n in r.splits.items()) or "none"
    typer.echo(f"wrote {r.path}: {r.clips} clips, layout {r.layout} ({r.num_joints} joints); splits: {splits}")
    if r.skipped:
        typer.echo(f"left out {len(r.skipped)} clips without skeleton frames, e.g. "
                   f"{next(iter(r.skipped))}: {next(iter(r.skipped.values()))}")

# [end section: data-export-pyskl]


# ---------------------------------------------------------------------------------------------
# cache: info                                                               (foundation issue)
# ---------------------------------------------------------------------------------------------
# [section: cache]
@cache_app.command("info")
def cache_info_cmd(
    cache: Annotated[Path, typer.Argument(metavar="CACHE", help="The token cache folder (CACHE.zarr).")],
    failures: Annotated[int, typer.Option(help="How many failure records to list per group.")] = 5,
    verify: Annotated[bool, typer.Option("--verify", help="Decode every chunk of every row; exit 2 naming the first "
                                                          "corrupt chunk (group, row id, file).")] = False,
    mark_failed: Annotated[bool, typer.Option("--mark-failed", help="With --verify: record the rows of corrupt chunks "
                                                                    "as failed, so `extract --retry-failed` rewrites them.")] = False,
    consolidate: Annotated[bool, typer.Option("--consolidate", help="Rewrite the consolidated metadata (zarr/xarray "
                                                                    "open the cache without crawling it).")] = False,
) -> None:
    """Print a table of the cache: groups, arrays, shapes, dtype, clips done / failed / missing,
    size on disk, and the provenance of each group (backbone, checkpoint sha256, sampling, versions)."""
    from migfuse.data_cache.info import cache_info, consolidate_cache, verify_cache

    if mark_failed and not verify:
        raise UserError("--mark-failed needs --verify (it marks the rows of the corrupt chunks that --verify finds)")
    if consolidate:
        typer.echo(consolidate_cache(cache))
    verified = verify_cache(cache, mark_failed=mark_failed) if verify else None  # first: the table reads chunks too
    typer.echo(cache_info(cache, show_failures=failures))
    if verified:
        typer.echo(verified)


@cache_app.command("export-views")
def cache_export_views_cmd(
    cache: Annotated[Path, typer.Argument(metavar="CACHE", help="The full token cache (CACHE.zarr) holding views (`cache view --defaults`).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The views-only copy to write, e.g. laptop.zarr (resumed if present).")],
) -> None:
    """Copy only the views of a cache (their finished rows) into a new, small cache: what `fuse train`,
    `fuse eval` and `fuse predict` read on a laptop. The full tokens stay behind."""
    from migfuse.data_cache.info import human_bytes
    from migfuse.data_cache.store import TokenCache
    from migfuse.data_cache.views import export_views

    copied = export_views(cache, out)
    dst = TokenCache(out)
    size = sum(dst.group(name).size_on_disk() for name in copied)
    for name, n in copied.items():
        typer.echo(f"{name:24s} {n} rows copied")
    typer.echo(f"wrote {out} ({human_bytes(size)}); train on it with `migfuse fuse train --cache {out} ...`")

# [end section: cache]


# ---------------------------------------------------------------------------------------------
# cache view                                                                (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: cache-view]
@cache_app.command("view")
def cache_view_cmd(
    cache: Annotated[Path, typer.Argument(metavar="CACHE", help="The token cache folder (CACHE.zarr).")],
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
            from migfuse.data_cache.store import TokenCache
            from migfuse.data_cache.views import VIEW_PREFIX, track_groups

            tc = TokenCache(cache)
            views = [g for g in tc.group_names() if g.startswith(VIEW_PREFIX)]
            if views and not track_groups(tc):
                typer.echo(f"nothing to do: {cache} holds views only ({', '.join(views)}), e.g. a copy made by "
                           f"`migfuse cache export-views`; it is ready for `migfuse fuse train`")
                return
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
def _trust(checkpoint: Optional[Path], trust_checkpoint: bool) -> None:
    """Pass the user's --trust-checkpoint on to every reader of that one file (issue #11 section 1)."""
    if trust_checkpoint and checkpoint is not None:
        from migfuse.checkpoint_file import trust_checkpoint as trust_file

        trust_file(checkpoint)


_TRUST_HELP = ("Unpickle the checkpoint fully, objects included. This runs any code the file names: give it only "
               "for a file you trust that the safe loader refuses (a whole pickled model, a full training "
               "checkpoint).")
_TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help=_TRUST_HELP)]


def _open_backbone(name: str, checkpoint: Optional[Path], layout: Optional[str], device: Optional[str],
                   trust_checkpoint: bool = False):
    """Build a registered backbone (options only when given), load the checkpoint; -> (backbone, KeyReport|None)."""
    from migfuse.backbones.registry import create_backbone

    _trust(checkpoint, trust_checkpoint)
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
    name: Annotated[str, typer.Argument(metavar="NAME", help=_BACKBONE_NAME_HELP)],
    checkpoint: Annotated[Optional[Path], typer.Option(help=_CHECKPOINT_HELP)] = None,
    layout: Annotated[Optional[str], typer.Option(help=_LAYOUT_HELP)] = None,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """Check a checkpoint against a backbone: parameters, key report, sha256, input layout, outputs.

    Fails with one line naming the missing / unexpected keys when the file does not fit. The file
    is read without running code from it (weights-only) unless --trust-checkpoint is given.
    """
    bb, report = _open_backbone(name, checkpoint, layout, None, trust_checkpoint)
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
    name: Annotated[str, typer.Argument(metavar="NAME", help=_BACKBONE_NAME_HELP)],
    input_path: Annotated[Path, typer.Option("--input", help="Input .npy array in the backbone's input layout (see `info`).")],
    output: Annotated[Path, typer.Option("--output", help="Output .npz file: one array per named output.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help=_CHECKPOINT_HELP)] = None,
    layout: Annotated[Optional[str], typer.Option(help=_LAYOUT_HELP)] = None,
    device: Annotated[Optional[str], typer.Option(help=_DEVICE_HELP)] = None,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """Run a backbone on one .npy array in the original model's input layout and save its outputs as .npz.

    Use it to compare migfuse with the original code on the same input, before extracting a dataset.
    """
    import numpy as np

    bb, _ = _open_backbone(name, checkpoint, layout, device, trust_checkpoint)
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
    from migfuse.finetune.skeleton import resolve_config, train_skeleton

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

    from migfuse.finetune.video import fine_tune_video, resolve

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
# extract: the options every track shares, declared once                    (runner issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-video]
class Precision(StrEnum):
    """--precision choices (runner.Precision): autocast dtype of the forward."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Stream(StrEnum):
    joint = "joint"
    bone = "bone"


class Decoder(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class FaceScope(StrEnum):
    clip = "clip"
    context = "context"


_XDataOpt = Annotated[Path, typer.Option("--data", help="PREPARED folder written by `migfuse data prepare`.")]
_XCacheOpt = Annotated[Path, typer.Option("--cache", help="Token cache CACHE.zarr (created if absent, resumed if present).")]
_XDeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when torch has it, else CPU), cpu, cuda or cuda:N. Under torchrun, auto/cuda "
                     "give each rank cuda:LOCAL_RANK.")]
_XPrecisionOpt = Annotated[Optional[Precision], typer.Option(
    "--precision", case_sensitive=False, help="Forward precision (autocast). Default: fp32 on CPU, bf16 on CUDA. "
                                              "Recorded in the cache provenance.")]
_XBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", min=1, max=4096, show_default=False,
    help="Model inputs per forward pass (windows, clips or faces). Default: the track's CPU value (below), 32 on a "
         "GPU (256 for faces and skeletons). The model always runs on exactly this many (padded), so it is "
         "recorded in the provenance: resume with the same value.")]
_XWorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=0, max=64, show_default=False,
    help="Loader processes (decoding) running alongside the model; 0 = load in the main process. Default: the "
         "track's CPU value (below), on a GPU one per CPU core but one. FFmpeg threads are shared out among them.")]
_XCompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model: fused kernels for long GPU runs (the first batch takes tens of "
                      "seconds to compile). Same tokens to float rounding; not recorded.")]
_XDecoderOpt = Annotated[Decoder, typer.Option(
    "--decoder", case_sensitive=False,
    help="cpu: PyAV (FFmpeg) in the loader workers. gpu: NVDEC on the extraction's GPU through torchcodec "
         "(`pip install torchcodec` for your torch); where it cannot run, the CPU is used and one line says why.")]
_XShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="I/N: process the I-th of N parts (whole videos), e.g. $SLURM_ARRAY_TASK_ID/N. "
                    "Under torchrun RANK/WORLD_SIZE are used instead.")]
_XRetryOpt = Annotated[bool, typer.Option("--retry-failed", help="Also redo rows that failed in an earlier run.")]
_XFramesOpt = Annotated[int, typer.Option("--frames", min=1, max=64,
                                          help="Frames per window (MViTv2-S: 16) / face frames per clip or window.")]
_XVideoRootOpt = Annotated[Optional[Path], typer.Option(
    "--video-root", envvar="MIGFUSE_VIDEO_ROOT", exists=True, file_okay=False,
    help="Folder the videos are in now, if moved since `data prepare` (env MIGFUSE_VIDEO_ROOT).")]
_XContextWindowsOpt = Annotated[int, typer.Option(
    "--context-windows", min=1, max=256, help="K windows (16 frames, every 4th) spread over each video; the face "
                                              "track's --scope context must use the context track's value.")]
_XVCkptOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="MViTv2-S checkpoint (torchvision mvit_v2_s-ae3be167.pth or mmaction2). "
                         "Without it: seeded RANDOM weights, for testing only (warned and recorded).")]


def _report(summary) -> None:
    """Print the run's table; exit 1 when any row failed (under torchrun: of any rank, so all ranks
    exit alike and torchrun does not stop ranks that are still writing their report)."""
    from migfuse.extract.runner import end_ranks, format_summary

    typer.echo(format_summary(summary))
    end_ranks()
    if not summary.ok:
        raise typer.Exit(1)


def _extract_video_track(track: str, data: Path, cache: Path, checkpoint: Optional[Path], device: str,
                         precision: Optional[Precision], batch_size: Optional[int], workers: Optional[int],
                         shard: Optional[str], retry_failed: bool, frames: int, video_root: Optional[Path],
                         compile: bool, decoder: Decoder, windows: int = 1, context_windows: int = 8) -> None:
    from migfuse.extract.video import extract_track

    _report(extract_track(track, data, cache, checkpoint=checkpoint, device=device,
                          precision=precision.value if precision else None, batch_size=batch_size, workers=workers,
                          shard=shard, retry_failed=retry_failed, frames=frames, windows=windows,
                          context_windows=context_windows, video_root=video_root, compile=compile,
                          decoder=decoder.value))


@extract_app.command("video")
def extract_video(
    data: _XDataOpt,
    cache: _XCacheOpt,
    checkpoint: _XVCkptOpt = None,
    device: _XDeviceOpt = "auto",
    precision: _XPrecisionOpt = None,
    batch_size: _XBatchOpt = None,
    workers: _XWorkersOpt = None,
    shard: _XShardOpt = None,
    retry_failed: _XRetryOpt = False,
    frames: _XFramesOpt = 16,
    video_root: _XVideoRootOpt = None,
    decoder: _XDecoderOpt = Decoder.cpu,
    compile: _XCompileOpt = False,
    windows: Annotated[int, typer.Option(
        "--windows", min=1, max=64, help="Up to this many 16-frame windows per long clip (one per 64 frames); "
                                         "stored ragged as (W, 393, 768). 1 = one window over the whole clip.")] = 1,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """MViTv2-S tokens per clip -> group video/mvit_v2_s, (393, 768) fp16 per clip.

    Each video is decoded once for all its clips; 16 frames are sampled uniformly over each clip.
    Resumable (rerun the same command), shardable (--shard I/N or torchrun), and failures
    (missing/corrupt video, clip past the end) are recorded per clip: the exit code is 1 and a table
    lists them when any clip failed. On a CPU: 4 clips per forward, 2 loader workers. The report ends
    with where the time went (waiting for loaders vs forward): see docs/extract.md, "Speed".
    """
    _trust(checkpoint, trust_checkpoint)
    _extract_video_track("video", data, cache, checkpoint, device, precision, batch_size, workers, shard,
                         retry_failed, frames, video_root, compile, decoder, windows=windows)


@extract_app.command("context")
def extract_context(
    data: _XDataOpt,
    cache: _XCacheOpt,
    checkpoint: _XVCkptOpt = None,
    device: _XDeviceOpt = "auto",
    precision: _XPrecisionOpt = None,
    batch_size: _XBatchOpt = None,
    workers: _XWorkersOpt = None,
    shard: _XShardOpt = None,
    retry_failed: _XRetryOpt = False,
    frames: _XFramesOpt = 16,
    video_root: _XVideoRootOpt = None,
    decoder: _XDecoderOpt = Decoder.cpu,
    compile: _XCompileOpt = False,
    context_windows: _XContextWindowsOpt = 8,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """MViTv2-S tokens of K windows per video (emotion context) -> group context/mvit_v2_s.

    Stores tokens (K, 393, 768) fp16 and valid (K,) per video. Same resume, sharding and failure
    rules as `extract video`. On a CPU: 8 windows per forward, 2 loader workers.
    """
    _trust(checkpoint, trust_checkpoint)
    _extract_video_track("context", data, cache, checkpoint, device, precision, batch_size, workers, shard,
                         retry_failed, frames, video_root, compile, decoder, context_windows=context_windows)
# [end section: extract-video]


# ---------------------------------------------------------------------------------------------
# extract skeleton                                                          (skeleton issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-skeleton]
@extract_app.command("skeleton")
def extract_skeleton(
    data: _XDataOpt,
    cache: _XCacheOpt,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="best.pt of `migfuse backbone train skeleton` "
                                                                  "(or a published 2s-AGCN / mmaction2 file).")],
    stream: Annotated[Stream, typer.Option("--stream", help="Must match the checkpoint.")] = Stream.joint,
    layout: Annotated[Optional[str], typer.Option("--layout", help="Only for checkpoints without migfuse "
                                                  "provenance: their graph layout.")] = None,
    length: Annotated[Optional[int], typer.Option("--length", min=4, max=1024, help="Only for checkpoints without "
                                                  "migfuse provenance: frames per clip (default 64).")] = None,
    device: _XDeviceOpt = "auto",
    precision: _XPrecisionOpt = None,
    batch_size: _XBatchOpt = None,
    workers: _XWorkersOpt = None,
    shard: _XShardOpt = None,
    retry_failed: _XRetryOpt = False,
    compile: _XCompileOpt = False,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """2s-AGCN feature maps per clip -> group joint/<arch> or bone/<arch>, (256, T', V) fp16.

    T' = ceil(length / 4). Layout, clip length and preprocessing come from the checkpoint. Resumable
    (rerun the same command), shardable, and clips that cannot be extracted (video without skeleton,
    a clip running past the skeleton file, no person detected) are recorded per clip: the exit code
    is 1 and a table lists them. Skeletons are cheap to load: on a CPU --workers 0 (64 clips per
    forward) is the default.
    """
    from migfuse.extract.skeleton.extractor import extract_skeleton as run

    _trust(checkpoint, trust_checkpoint)
    _report(run(data, cache, checkpoint, stream.value, layout=layout, length=length, device=device,
                precision=precision.value if precision else None, batch_size=batch_size, workers=workers,
                shard=shard, retry_failed=retry_failed, compile=compile))
# [end section: extract-skeleton]


# ---------------------------------------------------------------------------------------------
# extract face                                                              (face issue)
# ---------------------------------------------------------------------------------------------
# [section: extract-face]
@extract_app.command("face")
def extract_face_cmd(
    data: _XDataOpt,
    cache: _XCacheOpt,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="SwinFace .pt (the original file with "
                                                       "state_dict_backbone/fam/tss/om). Without it: RANDOM weights, "
                                                       "for testing only.")] = None,
    scope: Annotated[FaceScope, typer.Option("--scope", help="clip: K faces per clip -> face/swinface; context: K "
                                             "faces per context window of each video -> face_context/swinface.")]
    = FaceScope.clip,
    frames: _XFramesOpt = 8,
    context_windows: _XContextWindowsOpt = 8,
    global_tokens: Annotated[bool, typer.Option("--global-tokens", help="Also store SwinFace's 7x7x768 global "
                                                "tokens per face.")] = False,
    device: _XDeviceOpt = "auto",
    precision: _XPrecisionOpt = None,
    batch_size: _XBatchOpt = None,
    workers: _XWorkersOpt = None,
    shard: _XShardOpt = None,
    retry_failed: _XRetryOpt = False,
    video_root: _XVideoRootOpt = None,
    decoder: _XDecoderOpt = Decoder.cpu,
    compile: _XCompileOpt = False,
    trust_checkpoint: _TrustOpt = False,
) -> None:
    """SwinFace expression features of MTCNN-aligned faces -> face/swinface or face_context/swinface.

    Per face frame: the expression-branch 512-d feature and the 7 expression logits, plus a mask
    (frames without the main face are masked, never filled). MTCNN runs in the loader workers: on the
    CPU, or on the GPU (64 frames per call) when the extraction runs on one. On a CPU: 32 faces per
    SwinFace forward, 1 loader worker. Same resume, sharding and failure rules as `extract video`; a
    video with no face at all is stored fully masked, not failed.
    """
    from migfuse.extract.face.extractor import extract_face

    _trust(checkpoint, trust_checkpoint)
    _report(extract_face(data, cache, scope=scope.value, checkpoint=checkpoint, device=device,
                         precision=precision.value if precision else None, batch_size=batch_size, workers=workers,
                         shard=shard, retry_failed=retry_failed, frames=frames, context_windows=context_windows,
                         global_tokens=global_tokens, video_root=video_root, compile=compile,
                         decoder=decoder.value))

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
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by `migfuse fuse train`.")],
    split: Annotated[str, typer.Option(help="train, validation (as held out in training) or test.")] = "test",
    cache: Annotated[Optional[Path], typer.Option(help="Cache to read (default: the one the run was trained on).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="PREPARED folder (default: the run's).")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip clips the cache lacks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (for scripts).")] = False,
) -> None:
    """Score the run's best checkpoint on a labelled split. mg: top-1, top-5, mean class accuracy,
    per-class table; emotion: accuracy, F1, ROC-AUC. Files go to RUN/eval_SPLIT/: metrics.json,
    per_class.csv and the charts confusion.png, per_class.png (+ roc.png for emotion; charts need
    matplotlib, the `plots` extra)."""
    from migfuse.fuse.evaluate import evaluate
    from migfuse.fuse.metrics import to_json

    m = evaluate(run, split, cache=cache, data=data, allow_missing=allow_missing)
    if json_out:
        typer.echo(to_json(m))
        return
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
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by `migfuse fuse train`.")],
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
def fuse_heads_cmd(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="A head: print only its config block.")] = None,
) -> None:
    """List the fusion heads with their default options, as JSON to paste into `fuse train --config`.

    With NAME, prints that head's block alone; without, one JSON object of every head's block. A block is {"head": NAME, "head_options": {...}}: copy it into a config file, change an
    option, and pass the file with --config. Descriptions go to stderr, so `migfuse fuse heads cmtf >
    my.json` writes a valid config."""
    import json

    from migfuse.fuse.heads import head_class, list_heads

    names = list_heads()
    if name is not None and name not in names:
        raise UserError(f"unknown head {name!r}; choose one of {', '.join(names)}")
    blocks = {}
    for head in [name] if name else names:
        cls = head_class(head)
        typer.echo(f"# {head}: {(cls.__doc__ or '').strip().splitlines()[0]}", err=True)
        blocks[head] = {"head": head, "head_options": dict(cls.DEFAULTS)}
    # One head: its block alone (a whole config file); all: one object of blocks keyed by head.
    typer.echo(json.dumps(blocks[name] if name else blocks, indent=2))

# [end section: fuse]


# ---------------------------------------------------------------------------------------------
# export / score                                                            (fusion issue)
# ---------------------------------------------------------------------------------------------
# [section: export]
_ScoresArg = Annotated[Path, typer.Argument(metavar="SCORES", help="Scores .npz written by `migfuse fuse predict` or `fuse late`.")]
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
    if r.csv_path is not None:
        typer.echo(f"wrote {r.csv_path} (the same rows as a bare CSV)")
    typer.echo(f"sha256 {r.sha256}  {r.path.name}")  # the layout of sha256sum, to check an upload


@export_app.command("miga2025")
def export_miga2025(
    scores: _ScoresArg,
    data: _DataOpt,
    out: Annotated[Optional[Path], typer.Option(
        help="NAME.zip, NAME.csv (bare CSV for Kaggle + NAME.zip) or a folder, created (default ./prediction.zip).")]
    = None,
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
    out: Annotated[Optional[Path], typer.Option(
        help="NAME.zip, NAME.csv (+ NAME.zip) or a folder, created (default ./Submission.zip).")] = None,
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
    out: Annotated[Optional[Path], typer.Option(
        help="NAME.zip, NAME.csv (+ NAME.zip) or a folder, created (default ./emotion.zip).")] = None,
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
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Prediction file: challenge zip, CSV (header or not) or scores .npz.")],
    data: _DataOpt,
    split: Annotated[Optional[str], typer.Option(
        help="Require exactly this split's ids (e.g. test); default: score the ids the file has.")] = None,
    scheme: Annotated[Optional[str], typer.Option(
        help="Split column: split_miga | split_cs | split_emotion (default by task).")] = None,
    task: Annotated[Optional[str], typer.Option(help="mg or emotion (default: guessed from the ids).")] = None,
    win_label: Annotated[int, typer.Option(help="Emotion files: the target that means Win.")] = 1,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for metrics.json, per_class.csv and the charts (confusion, per-class, ROC for emotion).")]
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

    report = score_file(file, data, split=split, scheme=scheme, task=task, win_label=win_label)
    files = write_score_files(report, out) if out is not None else {}
    if json_out:
        typer.echo(to_json({**report.to_dict(), "files": {k: str(v) for k, v in files.items()}}))
        return
    typer.echo(report.format())
    if files:
        typer.echo("files: " + ", ".join(str(p) for p in files.values()))
# [end section: export]


# ---------------------------------------------------------------------------------------------
# scores import                                                             (interop issue #12 §3)
# ---------------------------------------------------------------------------------------------
# [section: scores]
scores_app = _group("Bring prediction scores of other tools (mmaction2, pyskl, CSV) into migfuse score files.")
app.add_typer(scores_app, name="scores")


@scores_app.command("import")
def scores_import_cmd(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="mmaction2 / pyskl test-result .pkl, or a CSV `Id,score...`.")],
    out: Annotated[Path, typer.Option(help="migfuse scores .npz to write (for `fuse late`, `export`, `score`).")],
    ann: Annotated[Optional[Path], typer.Option(
        help="For a .pkl: the annotation file the test ran on (list file `path label`, or pyskl .pkl).")] = None,
    ann_split: Annotated[Optional[str], typer.Option(
        help="For a pyskl .pkl annotation: the split the test ran on, e.g. test.")] = None,
    task: Annotated[str, typer.Option(help="mg (32 classes, per clip) or emotion (Lose, Win, per video).")] = "mg",
    split: Annotated[Optional[str], typer.Option(help="Split name to record (default: --ann-split).")] = None,
) -> None:
    """Import another tool's test scores, keyed by clip id, so `migfuse fuse late` ensembles e.g. a
    PoseC3D or VideoSwin run with migfuse heads. A .pkl holds no ids: its rows follow the annotation
    file, and a count or id mismatch is refused. Pickles are read without running code from them."""
    from migfuse.fuse.importers import import_scores

    r = import_scores(results, annotation=ann, ann_split=ann_split, task=task, split=split)
    path = r.scores.save(out)
    note = "; rows were logits: softmax applied" if r.softmax_applied else ""
    typer.echo(f"imported {len(r.scores)} {task} score rows ({r.source_format}, {r.scores.scores.shape[1]} classes)"
               f"{note} -> {path}")

# [end section: scores]


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
@app.command(short_help="Run the whole pipeline on a generated dataset and print where each artifact is.")
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated dataset and every artifact (reused by a rerun "
                                           "with the same --seed and --precision).")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Seed of the generated dataset (0 or more).")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when torch has it, else CPU), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="MViTv2-S and SwinFace forwards: auto (bf16 on a GPU that supports "
                                                "it and on a CPU with Intel AMX, else fp32), fp32 or bf16.")] = "auto",
) -> None:
    """Run the whole pipeline on a generated dataset (5 videos, 40 clips; 74 s on 2 idle cores of an
    Intel Xeon with AMX, ~3.5 min on older 2-core CPUs, longer on a busy machine: see
    benchmarks/RESULTS.md "demo") and print where each artifact is: generate -> prepare -> extract video, context,
    skeleton, face -> views -> CMTF and InterFusion -> predict -> MiGA 2025 and emotion zips.
    The summary gives each trained model's held-out accuracy beside chance, with n, and the stage
    timings. Video and face backbones use random weights; the skeleton backbones are trained."""
    from migfuse.demo import run_demo

    started = time.perf_counter()
    artifacts, summary = run_demo(out, seed=seed, device=device, precision=precision)
    width = max(len(k) for k in artifacts)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        typer.echo(f"  {name:<{width}}  {path}")
    typer.echo("\n".join(summary))
    typer.echo(f"next: migfuse cache info {out / 'cache.zarr'}   |   migfuse fuse eval {out / 'runs' / 'cmtf'} --split validation")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a CI cancel, a scheduler) taken like Ctrl-C, so that worker pools
    are stopped and locks released on the way out; the exit status stays 128 + 15."""

    exit_code = 128 + signal.SIGTERM


def _terminated(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminated)
    app()


if __name__ == "__main__":
    main()
