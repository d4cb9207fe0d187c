"""`migfuse backbone`: check a checkpoint, run a backbone on one array, fine-tune the video / skeleton backbones."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.atomic_write import open_atomic
from migfuse.commands.app import deprecated, group
from migfuse.commands.options import (WORKERS_MAX, Arch, DataOpt, RuntimeOptions, SkeletonLayout, Stream,
                                      TrainOptions, TrustCheckpointOpt, choice, parse_word, path_option,
                                      with_options)
from migfuse.errors import UserError
from migfuse.training.recipe import BALANCE, OLD_WORDS  # the balance words of every trainer (torch-free)
from migfuse.wording import counted

app = group("Inspect, run and train the backbones (check a checkpoint before extracting).")
train_app = group("Fine-tune a backbone on a prepared dataset (video: MViTv2-S, Video Swin, VideoMAE, V-JEPA 2; "
                  "skeleton: no public 2s-AGCN checkpoint fits iMiGUE's OpenPose skeleton).")
app.add_typer(train_app, name="train")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help=(
    "A registered backbone: mvit_v2_s, swin3d_t|s|b, mmaction_swin3d_t|s|b, videomae, vjepa2, agcn, aagcn, "
    "posec3d, swinface (and any a plug-in registers)."))]
CheckpointOpt = Annotated[Optional[Path], path_option(
    "--checkpoint", help="Local checkpoint file in the backbone's official format; videomae / vjepa2: a local Hugging "
                         "Face model folder (omit for random weights).")]
LayoutOpt = Annotated[Optional[str], typer.Option(
    "--layout", parser=parse_word, metavar="<layout>",
    help="Passed to the backbone: for agcn/aagcn the skeleton graph, one of "
         f"{', '.join(s.value for s in SkeletonLayout)} (see docs/backbones.md).")]


def _open_backbone(name: str, checkpoint: Optional[Path], layout: Optional[str], trusted: bool,
                   **options: object):
    """Build a registered backbone (options only when given), load the checkpoint; -> (backbone, KeyReport|None)."""
    from migfuse.backbones.registry import RANDOM_WEIGHTS_SEED, create_seeded

    if layout is not None:
        options["layout"] = layout
    bb = create_seeded(name, checkpoint, trusted, warn=False, **options)  # said below, on the command's terms
    if checkpoint is None:
        typer.secho(f"WARNING: no --checkpoint given: {name} has RANDOM weights (seed {RANDOM_WEIGHTS_SEED}), its "
                    "outputs mean nothing", err=True, fg=typer.colors.YELLOW, bold=True)
    return bb, bb.key_report


@app.command("info")
def backbone_info(
    name: NameArg,
    checkpoint: CheckpointOpt = None,
    layout: LayoutOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Check a checkpoint against a backbone: parameters, key report, sha256, input layout, outputs.

    Fails with one line naming the missing / unexpected keys when the file does not fit. The file
    is read without running code from it (weights-only) unless --trust-checkpoint is given.
    """
    bb, report = _open_backbone(name, checkpoint, layout, trust_checkpoint)
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
        fine = bb.provenance().get("fine_tuned")  # a `backbone train video` best.pt: the run it came from
        if fine:
            top1 = fine.get("val_top1")
            typer.echo(f"fine-tuned:  run {fine.get('run_id')}, epoch {fine.get('epoch')}"
                       f"{f', val top-1 {top1:.4f}' if isinstance(top1, (int, float)) else ''}, base sha256 "
                       f"{fine.get('base_checkpoint_sha256')}")
    typer.echo(f"input:       {bb.input_doc}")
    for out_name, doc in bb.outputs_doc.items():
        typer.echo(f"output:      {out_name} {doc}")
    if bb.tracks:
        typer.echo(f"extracts:    {', '.join(bb.tracks)}")
    for key, value in (getattr(bb, "preprocessing", None) or {}).items():
        typer.echo(f"preprocess:  {key} = {value}")


@app.command("run")
@with_options(RuntimeOptions)
def backbone_run(
    name: NameArg,
    input_path: Annotated[Path, path_option("--input", help="Input .npy array in the backbone's input layout "
                                             "(see `info`).")],
    runtime: RuntimeOptions,
    out: Annotated[Optional[Path], path_option("--out", use="file", help="Output .npz file: one array per named output "
                                                "(required).")] = None,
    checkpoint: CheckpointOpt = None,
    layout: LayoutOpt = None,
    output: Annotated[Optional[Path], path_option("--output", use="file", hidden=True,
                                                  help="Old name of --out.")] = None,
    limb: Annotated[bool, typer.Option("--limb", help="posec3d with keypoints (.npz): draw limb heatmaps, not "
                                                      "joint heatmaps (for a limb checkpoint).")] = False,
) -> None:
    """Run a backbone on one .npy array in the original model's input layout and save its outputs as .npz.

    posec3d also takes keypoints: an .npz with mmaction2's annotation fields (keypoint (M, T, 17, 2),
    keypoint_score, img_shape, total_frames); it builds the heatmap volume as mmaction2's test pipeline
    does and writes it among the outputs (`heatmaps`).

    Use it to compare migfuse with the original code on the same input, before extracting a dataset;
    pass --precision fp32 to compare with an fp32 original (auto is bf16 on hardware that has it).
    """
    import numpy as np

    if output is not None:
        if out is not None:
            raise UserError("give --out only (--output is its old name)")
        deprecated("--output", "--out")
        out = output
    if out is None:
        raise UserError("give --out FILE.npz: where to write the outputs")
    from migfuse.backbones.registry import backbone_class

    cls = backbone_class(name)
    input_doc = cls.input_doc  # the input is checked before any model is built
    if not input_path.is_file():
        raise UserError(f"input not found: {input_path} (pass a .npy array shaped {input_doc})")
    if limb and "limb" not in cls.run_flags:
        raise UserError(f"--limb is for backbones that draw heatmaps (posec3d), not {name}")
    if input_path.suffix.lower() in cls.input_suffixes:  # a file the backbone turns into its input itself
        rt = runtime.resolve()
        bb, _ = _open_backbone(name, checkpoint, layout, rt.trust_checkpoint, device=rt.device,
                               **({"limb": True} if limb else {}))
        try:
            with rt.cpu_threads(), rt.autocast():
                outputs = bb.run_file(input_path)
        except RuntimeError as e:  # e.g. a volume the model's strides cannot take
            logging.getLogger(__name__).debug("backbone run failed", exc_info=True)
            raise UserError(f"{name} cannot run on {input_path} ({(str(e).splitlines() or [''])[0][:200]}); it "
                            f"expects {bb.input_doc} (run with -v for the traceback)") from None
        _write_outputs(out, outputs)
        return
    try:
        x = np.load(input_path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise UserError(f"cannot read {input_path} as a .npy array ({e}); {name} expects {input_doc}") from None
    if not isinstance(x, np.ndarray):  # an .npz archive loads as a mapping of arrays
        x.close()
        raise UserError(f"{input_path} is an .npz archive, not one .npy array; save the input with np.save "
                        f"({name} expects {input_doc})")
    expected = _leading_shape(input_doc)
    # only numeric dimensions are fixed ("3" or "C=3"); named ones (N, T, V) take any size
    fixed = [(d.split("=")[-1], s) for d, s in zip(expected, x.shape)]
    if x.ndim != len(expected) or any(int(d) != s for d, s in fixed if d.isdigit()):
        raise UserError(f"{input_path} has shape {x.shape}; {name} expects {input_doc}")
    rt = runtime.resolve()
    bb, _ = _open_backbone(name, checkpoint, layout, rt.trust_checkpoint, device=rt.device)
    try:
        with rt.cpu_threads(), rt.autocast():
            outputs = bb.run(x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x)
    except (RuntimeError, ValueError) as e:
        # a size the model was not built for (e.g. persons M vs the checkpoint) surfaces as a torch error
        logging.getLogger(__name__).debug("backbone run failed", exc_info=True)
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{name} cannot run on {input_path} of shape {x.shape} ({type(e).__name__}: {first}); "
                        f"it expects {bb.input_doc} (run with -v for the traceback)") from None
    _write_outputs(out, outputs)


def _write_outputs(out: Path, outputs: dict) -> None:
    """Save the named outputs as one .npz (atomically) and say what was written."""
    import numpy as np

    with open_atomic(out, "wb") as f:
        np.savez(f, **outputs)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    typer.echo(f"wrote {out}: {shapes}")


def _leading_shape(input_doc: str) -> list[str]:
    """The dimension names of an input_doc such as "(N, 3, 16, 224, 224) float32" -> ["N", "3", ...]."""
    inner = input_doc[input_doc.index("(") + 1:input_doc.index(")")] if "(" in input_doc else ""
    return [d.strip() for d in inner.split(",") if d.strip()]


@train_app.command("skeleton")
@with_options(TrainOptions)
@with_options(RuntimeOptions)
def backbone_train_skeleton(
    data: DataOpt,
    runtime: RuntimeOptions,
    train: TrainOptions,
    out: Annotated[Optional[Path], path_option(
        "--out", use="folder", show_default="runs/skeleton-ARCH-STREAM-LAYOUT",
        help="Run folder: config.json, metrics.jsonl/.csv, curves.png, best.pt, last.pt, train.log. Rerunning the "
             "same command resumes.")] = None,
    stream: Annotated[Optional[Stream], typer.Option("--stream", show_default="joint",
                                                     help="The stream to train.")] = None,
    layout: Annotated[Optional[SkeletonLayout], typer.Option(
        "--layout", show_default="imigue",
        help="Graph: imigue (55 joints), openpose22 (MiGA baselines), openpose-18 or "
                         "coco-17 (ntu-25 and nturgb+d are NTU's 3-D joints: not read from OpenPose points).")]
    = None,
    arch: Annotated[Optional[Arch], typer.Option("--arch", show_default="agcn",
                                                 help="agcn (lshiwjx/2s-AGCN) or aagcn (mmaction2).")] = None,
    length: Annotated[Optional[int], typer.Option("--length", min=4, max=1024, show_default="64",
                                                  help="Frames each clip is resampled to.")] = None,
    base_channels: Annotated[Optional[int], typer.Option(
        "--base-channels", min=4, max=1024, show_default="64, as published", help="Width of the first units.")] = None,
    balance: Annotated[Optional[str], typer.Option(
        "--balance", show_default="loss", help="Long tail: loss (class-weighted loss), sampler (class-balanced "
                                               "draws) or none.", **choice(BALANCE, OLD_WORDS["balance"], "--balance"))]
    = None,
    init: Annotated[Optional[Path], path_option("--init", help="Start from a published checkpoint of the same "
                                                 "--arch/--layout, e.g. mmaction2 coco 2s-AGCN with --arch "
                                                 "aagcn --layout coco-17.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, max=WORKERS_MAX, show_default="0",
                                                   help="DataLoader worker processes.")] = None,
) -> None:
    """Train one skeleton stream of 2s-AGCN on the training split; keep the best epoch.

    Trains on split_miga 'train' (falling back to split_cs), validates every epoch on split_miga
    'validation' (top-1 / top-5), writes the best checkpoint with its provenance (layout, preprocessing,
    split, seed) to OUT/best.pt. Settings: DEFAULTS in docs/skeleton.md, changed by --config FILE,
    --set KEY=VALUE (e.g. --set weight_decay=1e-4) and the options. Rerun the same command to resume
    after the last finished epoch. Then: `migfuse extract skeleton --checkpoint OUT/best.pt`.
    """
    from migfuse.finetune.skeleton import resolve_config, train_skeleton

    flags = train.flags(stream=stream, layout=layout, arch=arch, length=length, base_channels=base_channels,
                        balance=balance, init=str(init) if init else None, workers=workers)
    cfg = resolve_config(train.config, train.sets, flags)
    rt = runtime.resolve()
    result = train_skeleton(data, out or Path("runs") / f"skeleton-{cfg.arch}-{cfg.stream}-{cfg.layout}", cfg,
                            overwrite=train.overwrite, runtime=rt)
    typer.echo(f"best epoch {result.best_epoch}: top-1 {result.best_top1:.4f} -> {result.best_checkpoint}")


@train_app.command("video")
@with_options(TrainOptions)
@with_options(RuntimeOptions)
def backbone_train_video(
    data: DataOpt,
    runtime: RuntimeOptions,
    train: TrainOptions,
    backbone: Annotated[str, typer.Option(
        "--backbone", metavar="NAME", help="The video backbone to fine-tune: mvit_v2_s, swin3d_t|s|b, "
                                           "mmaction_swin3d_t|s|b, videomae, vjepa2. Its input recipe (frames, "
                                           "resize, crop, mean/std) is the one `extract video` uses.")] = "mvit_v2_s",
    checkpoint: Annotated[Optional[Path], path_option(
        "--checkpoint", help="Base weights for --backbone: mvit_v2_s: torchvision mvit_v2_s-ae3be167.pth "
                             "(Kinetics-400) or mmaction2 MViTv2-S; swin3d_*: torchvision or mmaction2 Video Swin "
                             "files; videomae / vjepa2: a local Hugging Face model folder; or a migfuse best.pt "
                             "of the same backbone. Without it: RANDOM weights (tests only, warned).")] = None,
    out: Annotated[Optional[Path], path_option(
        "--out", use="folder", show_default="runs/mvit; runs/NAME for another --backbone",
        help="Run folder: config.json, metrics.jsonl/.csv, curves.png, best.pt, last.pt, train.log. Rerunning "
             "resumes.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the resolved settings as JSON "
                                              "(DEFAULTS <- --config <- --set <- options) and exit.")] = False,
) -> None:
    """Fine-tune a video backbone on the micro-gesture clips (32 classes); keep the best epoch.

    Trains on split_miga 'train', validates on split_miga 'validation' (or held-out training videos),
    with the frame sampling and preprocessing of `migfuse extract video --backbone NAME` plus random
    resized crop and colour jitter (no flip). Recipe: AdamW, layer-wise lr decay, warm-up + cosine,
    label smoothing, class-balanced sampler, drop path, gradient clipping, bf16 where the device has
    it (--precision), gradient accumulation to target_batch; every setting and its default is in
    docs/finetune.md (`--show-config` prints them). Multi-GPU: `torchrun --nproc_per_node N -m migfuse
    backbone train video ...`. Then: `migfuse extract video --backbone NAME --checkpoint OUT/best.pt`.
    """
    import json

    from migfuse.finetune.video import DEFAULT_BACKBONE, fine_tune_video, resolve

    flags = train.flags()
    if show_config:
        typer.echo(json.dumps(resolve(train.config, train.sets, flags, backbone, checkpoint), indent=1))
        return
    out = out or Path("runs") / ("mvit" if backbone == DEFAULT_BACKBONE else backbone)
    rt = runtime.resolve()
    summary = fine_tune_video(data, out, checkpoint, config=train.config, sets=train.sets, flags=flags,
                              overwrite=train.overwrite, runtime=rt, backbone=backbone)
    if rt.main:  # torchrun: print once
        best = summary["best"]
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        typer.echo(f"best epoch {best['epoch']}: {scores} -> {summary['best_checkpoint']}" if scores else
                   f"no validation set, so no best epoch: {summary['best_checkpoint']} holds the last one, "
                   f"epoch {best['epoch']}")
        typer.echo(f"{summary['n_train']} train / {summary['n_validation']} validation "
                   f"({summary['validation_source']}); {counted(summary['epochs_run'], 'epoch')} now; run in {out}")
