"""Fine-tune a video backbone on the micro-gesture clips of a prepared iMiGUE folder (`migfuse backbone train video`).

Every top MiGA micro-gesture entry fine-tuned its video backbone on iMiGUE before extracting with it;
this module goes from a published file (MViTv2-S by default; Video Swin, VideoMAE, V-JEPA 2 with
`backbone=`: the per-backbone parts are `finetune.video_models`) to a 32-class model whose `best.pt`
`migfuse extract video|context --backbone NAME --checkpoint` loads.

What the model sees is what extraction feeds it: clips are decoded, sampled and resized/cropped by the
very loader of `extract video` (`video.ClipLoader`: `sampling.ClipSampling` + `video.resize_crop`) with
the backbone's recipe (`Backbone.preprocessing`: frames, resize, crop), then normalised with the
recipe's mean/std on the device (`backbones.video_input`). Training
adds, on the device, a random resized crop (one box per clip, all frames) and colour jitter; no
horizontal flip by default (several iMiGUE classes are left/right specific). Validation uses no
augmentation: its input is bit-for-bit the extraction input (tested).

Recipe (`DEFAULTS`, every setting commented there; `--config FILE` / `--set k=v` change them): AdamW
with layer-wise learning-rate decay, linear warm-up then cosine (per optimiser step,
`recipe.warmup_cosine`), label smoothing, a class-balanced sampler or loss weights, drop path,
gradient clipping, optional activation checkpointing, gradient accumulation up to a target batch over
all processes. Where it runs is the command's `Runtime` (--device, --precision: bf16 autocast where
the hardware has it), not a setting.

Multi-GPU: launch with `torchrun --nproc_per_node N`; each process takes `cuda:LOCAL_RANK` (NCCL) or the
CPU (gloo) (`Runtime.process_group`), trains on its share of each epoch's clip order, and rank 0 alone
writes the run folder.

The data side (dataset, clip loader, collate, clip order, augmentation) is `finetune.video_data`.

Run folder (`--out`): the migfuse.training layout (config.json, metrics.jsonl/.csv, curves.png, train.log,
best.pt, last.pt; locked; resumed or refused; atomic). best.pt is the best epoch by validation top-1, in
the migfuse checkpoint format (weights only, the key names the backbone's loader reads, no DDP `module.`
prefix), with `meta["migfuse"]`: kind "<backbone> fine-tuned" ("mvit_v2_s fine-tuned": + width), backbone,
base checkpoint + sha256, run id, split, preprocessing, sampling, epoch and its metrics. Rerunning with
the same settings resumes after the last finished epoch (a larger `epochs` extends it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from migfuse.checkpoint_file import CheckpointFile
from migfuse.datasets.classes import NUM_CLASSES
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.finetune.video_models import VideoFamily, video_family
from migfuse.finetune.video_data import (
    Augment,
    VideoClipDataset,
    choose_video_split,
    collate,
    decoded_batches,
    epoch_order,
)
from migfuse.runtime import Runtime
from migfuse.training.recipe import check_balance, class_weights, training_runtime, warmup_cosine

log = logging.getLogger(__name__)

TRAINER = "video"
#: `--backbone` when none is given: MViTv2-S, the paper's video backbone
DEFAULT_BACKBONE = "mvit_v2_s"

#: The recipe: every setting with its default (this dict is the documentation; docs/finetune.md copies it).
#: Where it runs is not a setting: --device / --precision (the command's Runtime).
#: Defaults follow the MViTv2 fine-tuning recipes (mmaction2 `mvit-small` K400 -> downstream, the SlowFast
#: MViTv2 configs), scaled to iMiGUE's ~13k training clips.
DEFAULTS: dict[str, Any] = {
    "width": "full",  # full = MViTv2-S (34.5M parameters); demo = 4 narrow blocks, same token grid (tests, CPU);
                      # other backbones: full only (their architecture is the base checkpoint's)
    "epochs": 20,  # epochs in all (a resumed run goes on to this)
    "batch_size": 4,  # clips per forward pass per process (what fits: see benchmarks/finetune.py's memory column)
    "target_batch": 32,  # clips per optimiser step over all processes; gradient accumulation fills it
    "lr": 2e-4,  # peak AdamW learning rate of the head, reached at the end of warm-up
    "layer_decay": 0.75,  # layer-wise lr decay: depth d of N blocks gets lr * layer_decay ** (N + 1 - d)
    "weight_decay": 0.05,  # AdamW; none on norms, biases, the class token and relative positions
    "warmup_epochs": 2.0,  # linear warm-up from ~0 over this many epochs (per optimiser step) ...
    "min_lr_ratio": 0.01,  # ... then cosine down to this fraction of the peak at the last step
    "label_smoothing": 0.1,  # cross-entropy label smoothing
    "balance": "sampler",  # long tail (class 99 ~ a quarter of clips): sampler (class-balanced draws) | loss
                           # (inverse-sqrt-frequency loss weights) | none
    "drop_path": 0.2,  # stochastic depth of the last block (linear in depth), as torchvision's MViTv2-S;
                       # Swin: torchvision's rate; V-JEPA 2: every layer's; VideoMAE has none
    "head_dropout": 0.5,  # dropout before the classifier, as torchvision's MViTv2-S (every backbone)
    "clip_grad": 1.0,  # max global gradient norm; 0 = off
    "activation_checkpointing": False,  # recompute block activations in backward: less memory, ~30% slower
    "crop_scale": [0.4, 1.0],  # random resized crop: area fraction of the 224x224 crop (same box for all frames)
    "crop_ratio": [0.75, 1.3333],  # ... and its aspect-ratio range
    "color_jitter": 0.3,  # brightness, contrast, saturation factors drawn in [1 - x, 1 + x]; 0 = off
    "hflip": False,  # off: several iMiGUE classes are left/right specific (e.g. touching the left/right ear)
    "frames": 16,  # frames per clip, sampled as `extract video` does (MViTv2-S is built for 16; other
                   # backbones: their recipe's clip_len, the only value they take)
    "patience": 0,  # stop after this many epochs without a better val_top1; 0 = never
    "seed": 0,  # head weights, clip order, augmentation, drop path
    "workers": 2,  # DataLoader processes decoding clips (per training process)
}
#: Settings a rerun may change and still resume.
RESUMABLE = ("epochs", "workers", "activation_checkpointing", "patience")


def check_config(cfg: dict[str, Any], backbone: str = DEFAULT_BACKBONE,
                 recipe: dict[str, Any] | None = None) -> None:
    """UserError (one line) on a setting out of range, or one the backbone (with its `recipe`) cannot take."""
    from migfuse.backbones.mvit import WIDTHS
    from migfuse.training.config import check_choice, check_positive

    check_choice(cfg, "width", WIDTHS)
    if backbone != DEFAULT_BACKBONE and cfg["width"] != "full":
        raise UserError(f"the config: width is a setting of mvit_v2_s; {backbone}'s architecture comes from its "
                        "--checkpoint (drop width)")
    check_balance(cfg["balance"])
    check_positive(cfg, ("epochs", "batch_size", "target_batch", "lr", "frames", "layer_decay"))
    clip_len = (recipe or {}).get("clip_len")
    if backbone != DEFAULT_BACKBONE and clip_len and cfg["frames"] != clip_len:
        raise UserError(f"the config: {backbone} takes {clip_len} frames per clip (its checkpoint's recipe, as "
                        f"`extract video` feeds it), not frames={cfg['frames']}: drop frames")
    if cfg["layer_decay"] > 1:
        raise UserError(f"the config: layer_decay must be in (0, 1], not {cfg['layer_decay']!r}")
    for key in ("crop_scale", "crop_ratio"):
        lo_hi = cfg[key]
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or (key == "crop_scale" and lo_hi[1] > 1):
            raise UserError(f"the config: {key} must be [low, high] with 0 < low <= high"
                            f"{' <= 1' if key == 'crop_scale' else ''}, not {lo_hi!r}")


def resolve(config: str | Path | dict | None = None, sets: Sequence[str] = (),
            flags: dict[str, Any] | None = None, backbone: str = DEFAULT_BACKBONE,
            checkpoint: CheckpointFile | str | Path | None = None) -> dict[str, Any]:
    """DEFAULTS (`frames` = the backbone's recipe, MViTv2-S's 16 by default) <- `config` (JSON/TOML file
    or dict) <- `sets` ("k=v") <- `flags`, checked (UserError; also for a backbone that is not trainable)."""
    from migfuse.training.config import resolve_config

    family = video_family(backbone)
    defaults, recipe = dict(DEFAULTS), None
    if backbone != DEFAULT_BACKBONE:
        recipe = family.recipe(checkpoint)
        defaults["frames"] = int(recipe["clip_len"])
    cfg = resolve_config(defaults, config=config, sets=sets, flags=flags)
    check_config(cfg, backbone, recipe)
    return cfg


# ------------------------------------------------------------------------------------------------
# the model and its optimiser (the per-backbone parts are `video_models`)
# ------------------------------------------------------------------------------------------------
def build_model(cfg: dict[str, Any], base: CheckpointFile | str | Path | None,
                family: VideoFamily | str = DEFAULT_BACKBONE) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of `family` (an adapter or a backbone name) with the base checkpoint's weights and a
    fresh 32-class head (`video_models`); the adapter keeps the recipe (`family.preprocessing`).

    Returns (weights module, base provenance {"base_checkpoint", "base_checkpoint_sha256", ...}).
    Without `base` the weights are random (seeded; warned): only for tests. A `base` given as a path
    is read weights-only; pass a `CheckpointFile(path, trusted=True)` for the user's --trust-checkpoint.
    """
    from migfuse.checkpoint_file import as_checkpoint

    family = video_family(family) if isinstance(family, str) else family
    return family.build(cfg, as_checkpoint(base) if base is not None else None)


class FineTuneModel(nn.Module):
    """The backbone as a classifier whose forward is the extraction maths (`family.forward`), with
    optional activation checkpointing. `.weights` holds what goes into best.pt."""

    def __init__(self, weights: nn.Module, checkpointing: bool = False, family: VideoFamily | None = None,
                 head_dropout: float = 0.0):
        super().__init__()
        self.weights, self.checkpointing = weights, checkpointing
        self.family = family or video_family(DEFAULT_BACKBONE)
        self.dropout = nn.Dropout(head_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised float -> (B, 32) logits."""
        return self.family.forward(self.weights, x, self.dropout, self.checkpointing)


def param_groups(model: nn.Module, lr: float, layer_decay: float, weight_decay: float,
                 family: VideoFamily | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: one per (depth, decay or not),
    lr = lr * layer_decay ** (N + 1 - depth) (`family.layers`: MViTv2-S's by default).

    Each group carries "lr_scale" (its share of the scheduled lr), "layer" and "names" (tests, logs).
    """
    family = family or video_family(DEFAULT_BACKBONE)
    num_blocks, layer_id = family.layers(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_id(name)
        decay = not family.no_weight_decay(name, p)
        key = (depth, decay)
        if key not in groups:
            scale = layer_decay ** (num_blocks + 1 - depth)
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale, "layer": depth,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    # deepest first: param_groups[0] is the head's, at the peak lr (what metrics.jsonl's "lr" shows)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def _unwrapped(model: nn.Module) -> nn.Module:
    """The FineTuneModel inside DDP."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
class _FollowerRun:
    """What ranks > 0 see of the run folder under torchrun: rank 0's resume state, and no writes
    (rank 0 alone holds the lock and writes config.json, metrics, best.pt, last.pt)."""

    trainer = TRAINER

    def __init__(self, resume_state: dict[str, Any] | None, scratch: Path):
        self.resume_state, self.path = resume_state, scratch

    def keep_metrics_upto(self, epoch: int) -> list[dict[str, Any]]:
        return []

    def log_metrics(self, record: Any) -> None:
        pass

    def save_best(self, *args: Any) -> None:
        pass

    def save_last(self, *args: Any) -> None:
        pass

    def finish(self) -> None:
        pass


@contextlib.contextmanager
def _run_folder(out: Path, cfg: dict[str, Any], provenance: dict[str, Any], overwrite: bool,
                runtime: Runtime) -> Iterator[Any]:
    """Rank 0 opens (locks, resumes or refuses) the run folder; the other ranks wait for its decision,
    then follow with the same last.pt."""
    from migfuse.training.checkpoint import load_checkpoint
    from migfuse.training.run_folder import RunFolder

    if runtime.world == 1:
        with RunFolder.open(out, TRAINER, cfg, provenance, overwrite=overwrite, resumable=RESUMABLE) as run:
            yield run
        return
    import tempfile

    import torch.distributed as dist

    if runtime.main:
        try:
            run = RunFolder.open(out, TRAINER, cfg, provenance, overwrite=overwrite, resumable=RESUMABLE)
        except BaseException:
            dist.broadcast_object_list([-1], src=0)
            raise
        dist.broadcast_object_list([1 if run.resume_state is not None else 0], src=0)
        with run:
            yield run
        return
    decision = [None]
    dist.broadcast_object_list(decision, src=0)
    if decision[0] == -1:
        raise UserError(f"rank 0 could not open the run folder {out} (see its message)")
    state = load_checkpoint(out / "last.pt") if decision[0] == 1 else None
    with tempfile.TemporaryDirectory() as scratch:
        yield _FollowerRun(state, Path(scratch))


def run_id_of(out: Path) -> str:
    """`<run folder>@<start time>`: names one fine-tuning run (stays the same when it resumes)."""
    try:
        started = json.loads((out / "config.json").read_text(encoding="utf-8"))["run"].get("started")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        started = None
    return f"{out.resolve()}@{started}"


def fine_tune_video(prepared: str | Path, out: str | Path, checkpoint: str | Path | None = None, *,
                    config: str | Path | dict | None = None, sets: Sequence[str] = (),
                    flags: dict[str, Any] | None = None, overwrite: bool = False,
                    runtime: Runtime | None = None, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Fine-tune the video backbone `backbone` from `checkpoint` on the training clips of `prepared`; resumable.

    Args:
        prepared: PREPARED folder (`migfuse data prepare`), with its video files.
        out: run folder (migfuse.training layout; an earlier run of the same settings resumes).
        checkpoint: the base weights in a format the backbone's loader reads (MViTv2-S: torchvision
            `mvit_v2_s-ae3be167.pth`, mmaction2; Video Swin: torchvision or mmaction2 files; videomae /
            vjepa2: a local Hugging Face folder), or a migfuse fine-tuned best.pt of the same backbone;
            None = random weights, for tests only (warned).
        config, sets, flags: settings over DEFAULTS (file or dict, "k=v" strings, CLI options).
        overwrite: replace a run of other settings in `out`.
        runtime: where it runs: device, precision (bf16 autocast or fp32), torchrun ranks (joined here
            when the caller has not); None = `Runtime()`, the CPU in fp32.
        backbone: a trainable video backbone (`video_models.TRAINABLE`), default mvit_v2_s.
    Returns:
        {"best": best epoch's record, "history", "epochs_run", "n_train", "n_validation",
        "validation_source", "best_checkpoint"}; best.pt loads with
        `extract video --backbone BACKBONE --checkpoint`.
    Raises:
        UserError: a backbone that is not trainable, bad settings, fp16, no usable clips, a base
            checkpoint that does not fit, a run folder of other settings or in use.
    """
    family = video_family(backbone)
    runtime = training_runtime(runtime)
    if checkpoint is not None and not Path(checkpoint).exists():
        from migfuse.backbones.registry import backbone_class

        raise UserError(f"checkpoint not found: {checkpoint} (pass {backbone_class(backbone).checkpoint_doc})")
    # read and hashed once, trusted only on the user's --trust-checkpoint
    checkpoint = CheckpointFile(checkpoint, trusted=runtime.trust_checkpoint) if checkpoint is not None else None
    cfg = resolve(config, sets, flags, backbone, checkpoint)
    with runtime.process_group():  # NCCL on a GPU, gloo on the CPU; a no-op without torchrun
        return _fine_tune(Path(prepared), Path(out), checkpoint, cfg, overwrite, runtime, family)


def _fine_tune(prepared: Path, out: Path, checkpoint: CheckpointFile | None, cfg: dict[str, Any], overwrite: bool,
               runtime: Runtime, family: VideoFamily) -> dict[str, Any]:
    from migfuse.extract.sampling import ClipSampling
    from migfuse.training.loop import Selection, epoch_generator, fit

    device, rank, world = runtime.device, runtime.rank, runtime.world
    manifest = Manifest.load(prepared)
    train_ids, val_ids, source = choose_video_split(manifest)
    weights, base_info = build_model(cfg, checkpoint, family)
    pre = family.preprocessing
    if runtime.main:
        log.info("fine-tuning %s%s on %d clips, validating on %d (%s), %d process(es) on %s, %s", family.backbone,
                 f" ({cfg['width']} width)" if family.backbone == DEFAULT_BACKBONE else "", len(train_ids),
                 len(val_ids), source, world, device, runtime.precision)
    # MViTv2-S's keys stay as they were, so its earlier run folders resume; the others name their model
    model_facts = ({"width": cfg["width"]} if family.backbone == DEFAULT_BACKBONE else
                   {"backbone": family.backbone, **{k: v for k, v in base_info.items()
                                                    if k not in ("base_checkpoint", "base_checkpoint_sha256",
                                                                 "base_fine_tune")}})
    provenance = {
        "kind": family.kind, **model_facts, "num_classes": NUM_CLASSES, "data": str(prepared.resolve()),
        "base_checkpoint": str(checkpoint) if checkpoint is not None else None,
        "base_checkpoint_sha256": checkpoint.sha256 if checkpoint is not None else None,
        "split": source, "train_clips": len(train_ids), "val_clips": len(val_ids),
        "preprocessing": pre, "sampling": ClipSampling(frames=cfg["frames"]).record(),
    }
    weights.to(device)
    if "base_fine_tune" in base_info:
        provenance["base_fine_tune"] = base_info["base_fine_tune"]
    train_ds = VideoClipDataset(manifest, train_ids, cfg["frames"], pre)
    val_ds = VideoClipDataset(manifest, val_ids, cfg["frames"], pre)
    weights_per_class = class_weights(train_ds.labels, NUM_CLASSES, power=0.5)  # inverse sqrt of the frequency
    loss_fn = nn.CrossEntropyLoss(weight=weights_per_class.to(device) if cfg["balance"] == "loss" else None,
                                  label_smoothing=cfg["label_smoothing"])
    groups = param_groups(weights, cfg["lr"], cfg["layer_decay"], cfg["weight_decay"], family)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups],
                                  lr=cfg["lr"], betas=(0.9, 0.999))
    accum = max(1, math.ceil(cfg["target_batch"] / (cfg["batch_size"] * world)))
    per_rank = math.ceil(len(train_ids) / world)
    batches_per_epoch = math.ceil(per_rank / cfg["batch_size"])
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accum))
    total = steps_per_epoch * cfg["epochs"]
    warmup = round(cfg["warmup_epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup, cfg["min_lr_ratio"]))
    augment = Augment(tuple(cfg["crop_scale"]), tuple(cfg["crop_ratio"]), cfg["color_jitter"], cfg["hflip"],
                      mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    model: nn.Module = FineTuneModel(weights, cfg["activation_checkpointing"], family, cfg["head_dropout"])
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if runtime.on_gpu else None)
    loader_args = {"batch_size": cfg["batch_size"], "num_workers": cfg["workers"], "collate_fn": collate}

    def train_epoch(epoch: int, bar) -> dict[str, float]:
        gen = epoch_generator(cfg["seed"] * 1009 + rank, epoch)  # augmentation, per rank
        order = epoch_order(train_ds.labels, cfg["balance"], cfg["seed"], epoch, rank, world)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, order), shuffle=False, **loader_args)
        model.train()
        n = loss_sum = correct = 0.0
        micro = 0
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for x, y in decoded_batches(loader):
            x, y = x.to(device, non_blocking=True), y.to(device)
            inputs = augment(x, gen)
            micro += 1
            last_micro = micro % accum == 0 or micro == batches_per_epoch
            # DDP all-reduces gradients on every backward unless told not to: only on the last micro-batch
            sync = contextlib.nullcontext() if (world == 1 or last_micro) else model.no_sync()
            with sync:
                with runtime.autocast():
                    logits = model(inputs)
                loss = loss_fn(logits.float(), y)
                (loss / accum).backward()
            if last_micro:
                _optimizer_step(model, optimizer, scheduler, cfg["clip_grad"])
                bar.step(loss=float(loss.detach()))
            n += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
        if micro % accum and micro != batches_per_epoch:  # clips that failed to decode shortened the epoch
            _optimizer_step(model, optimizer, scheduler, cfg["clip_grad"])
        seconds = time.perf_counter() - t0
        n, loss_sum, correct = runtime.all_sum([n, loss_sum, correct])
        return {"train_loss": loss_sum / n if n else float("nan"), "train_top1": correct / n if n else float("nan"),
                "train_clips_per_s": round(n / max(seconds, 1e-9), 3)}

    def validate(epoch: int) -> dict[str, float]:
        return evaluate(model, val_ds, runtime, loader_args)

    with _run_folder(out, cfg, provenance, overwrite, runtime) as run:
        if runtime.main:
            run.update_provenance({"run_id": run_id_of(out), "run_dir": str(out.resolve()), "world_size": world,
                                   "compute": runtime.record(), "backbone": family.backbone})
        result = fit(run, weights, optimizer, scheduler=scheduler, epochs=cfg["epochs"], train_epoch=train_epoch,
                     validate=validate if len(val_ds) else None, select=Selection("val_top1", "max", "val_loss"),
                     patience=cfg["patience"], seed=cfg["seed"], steps_per_epoch=steps_per_epoch,
                     desc=f"video fine-tuning (rank {rank})" if world > 1 else "video fine-tuning")
    return {"best": result.best, "history": result.history, "epochs_run": result.epochs_run,
            "n_train": len(train_ids), "n_validation": len(val_ids), "validation_source": source,
            "best_checkpoint": out / "best.pt"}


def _optimizer_step(model: nn.Module, optimizer, scheduler, clip_grad: float) -> None:
    """Clip the global gradient norm, step, advance the lr schedule (per optimiser step), zero."""
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoClipDataset, runtime: Runtime, loader_args: dict) -> dict[str, float]:
    """val_loss, val_top1, val_top5 on `dataset` with no augmentation (the extraction input), over all ranks."""
    from migfuse.backbones.video_input import normalise_clips

    classifier = _unwrapped(model)
    classifier.eval()
    pre = dataset.preprocessing
    order = list(range(runtime.rank, len(dataset), runtime.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order), shuffle=False, **loader_args)
    n = loss_sum = top1 = top5 = 0.0
    for x, y in decoded_batches(loader):
        x, y = x.to(runtime.device), y.to(runtime.device)
        with runtime.autocast():
            # the classifier itself, not DDP: ranks validate different numbers of clips
            logits = classifier(normalise_clips(x, pre["mean"], pre["std"]))
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top1 += float((logits.argmax(1) == y).sum())
        top5 += float((logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum())
        n += len(y)
    n, loss_sum, top1, top5 = runtime.all_sum([n, loss_sum, top1, top5])
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan")}
    return {"val_loss": loss_sum / n, "val_top1": top1 / n, "val_top5": top5 / n}
