"""Train one skeleton stream (joint or bone) of 2s-AGCN / AAGCN on a prepared iMiGUE folder.

    migfuse backbone train skeleton --data PREPARED --stream bone --out runs/skeleton-bone
    migfuse backbone train skeleton --data PREPARED --config sk.toml --set base_channels=32 --epochs 40

The run folder is migfuse.training's (docs/contracts.md "Training"): config.json, metrics.jsonl,
metrics.csv, curves.png, best.pt, last.pt, train.log. best.pt is the best epoch by validation top-1
and loads with `create_backbone("agcn"|"aagcn", "best.pt")` and `migfuse extract skeleton` (its
meta["migfuse"] holds the layout, preprocessing, stream and split). Rerunning with the same settings
continues after the last finished epoch (more --epochs extend it; --workers, --device and --precision
may change); other settings are refused unless --overwrite. The class imbalance of iMiGUE (class 99
"non-MG" is about a quarter of the clips) is handled by inverse-square-root class weights in the loss
(default) or a class-balanced sampler. Where it runs (device, bf16 autocast or fp32) is the command's
`Runtime`, recorded in config.json's provenance ("compute").
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from migfuse.backbones.graphs import get_layout
from migfuse.datasets.pose_layouts import check_readable
from migfuse.datasets.classes import NUM_CLASSES
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.extract.skeleton.preprocess import STREAMS, PreprocessConfig, check_layout
from migfuse.finetune.skeleton_data import SkeletonClipDataset, choose_split
from migfuse.runtime import Runtime
from migfuse.training.config import resolve_config as resolve_settings
from migfuse.training.loop import Selection, epoch_generator, fit
from migfuse.training.recipe import check_balance, class_weights, training_runtime, warmup_cosine
from migfuse.training.run_folder import RunFolder

log = logging.getLogger(__name__)

ARCHS = ("agcn", "aagcn")


@dataclass
class TrainConfig:
    """The settings of one training run with their defaults (these fields are the documentation;
    `DEFAULTS` is their dict, docs/skeleton.md copies it; stored in config.json). Where it runs is not
    a setting: --device / --precision (the command's Runtime)."""

    stream: str = "joint"        # joint or bone: 2s-AGCN's two streams, each its own backbone
    layout: str = "imigue"       # graph: imigue (55 joints), openpose22 (MiGA baselines), openpose-18, coco-17
    arch: str = "agcn"           # agcn (lshiwjx/2s-AGCN) or aagcn (mmaction2)
    length: int = 64             # frames each clip is resampled to
    epochs: int = 30             # epochs in all (a resumed run goes on to this)
    batch_size: int = 32         # clips per step
    lr: float = 0.1              # SGD (Nesterov, momentum 0.9) learning rate: half in epoch 1, then cosine to 0
    weight_decay: float = 5e-4   # SGD weight decay
    base_channels: int = 64      # width of the first units (64 as published; 8 trains on a CPU in minutes)
    balance: str = "loss"        # long tail: loss (inverse-sqrt class weights in the loss), sampler (balanced
                                 # sampling) or none
    seed: int = 0                # seeds weights, shuffling and frame sampling
    workers: int = 0             # DataLoader worker processes
    init: str | None = None      # mmaction2 / 2s-AGCN checkpoint to start from (head and data_bn re-initialised)

    def check(self) -> None:
        if self.stream not in STREAMS:
            raise UserError(f"unknown --stream '{self.stream}': choose joint or bone")
        if self.arch not in ARCHS:
            raise UserError(f"unknown --arch '{self.arch}': choose agcn or aagcn")
        check_balance(self.balance)
        check_layout(get_layout(self.layout))
        if self.length < 4 or self.epochs < 1 or self.batch_size < 1 or self.base_channels < 4:
            raise UserError("--length must be >= 4, --epochs and --batch-size >= 1, --base-channels >= 4")

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(layout=get_layout(self.layout).name, length=self.length)


#: Every setting with its default: TrainConfig's fields (written once, there).
DEFAULTS: dict[str, Any] = asdict(TrainConfig())
#: Settings that may change between a run and its resumption.
RESUMABLE = ("epochs", "workers")
#: The lr schedule's warm-up, in epochs: half the lr in epoch 1 (the adaptive graphs are unstable at
#: full lr from scratch), and the cosine spans the whole run (`recipe.warmup_cosine(cosine_from_start)`).
WARMUP_EPOCHS = 2


@dataclass
class TrainResult:
    """Where the run left its files and how good the best epoch was."""

    out: Path
    best_checkpoint: Path
    best_epoch: int
    best_top1: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def build_model(config: TrainConfig) -> nn.Module:
    """A fresh single-person model of the configured architecture, layout and width (32 classes)."""
    from migfuse.backbones.aagcn import RecognizerGCN
    from migfuse.backbones.agcn import AGCN

    layout = get_layout(config.layout)
    cls = AGCN if config.arch == "agcn" else RecognizerGCN
    return cls(layout, num_class=NUM_CLASSES, num_person=1, base_channels=config.base_channels)


def load_init(model: nn.Module, path: str | Path, trusted: bool = False) -> list[str]:
    """Start from a published checkpoint of the same architecture and layout: every tensor whose name
    and shape fit is copied; the classifier and a data_bn of another person count stay fresh.
    `trusted`: the user's --trust-checkpoint. Returns the names left at their initial value."""
    from migfuse.backbones.agcn import unwrap_state_dict
    from migfuse.backbones.checkpoints import read_checkpoint

    sd, _ = unwrap_state_dict(read_checkpoint(path, trusted=trusted), path)
    own = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
            and "fc." not in k}
    # data_bn of a 2-person checkpoint (channel m*V*C + v*C + c): keep person 0's half.
    for k, v in sd.items():
        if "data_bn" in k and k in own and v.ndim == 1 and v.shape[0] == 2 * own[k].shape[0]:
            fits[k] = v[: own[k].shape[0]].clone()
    # BatchNorm's step counters are not weights: a file of another layout or width still "fits" them all
    weights = [k for k in fits if not k.endswith("num_batches_tracked")]
    if not any("gcn" in k for k in weights):
        raise UserError(f"{path} does not fit --arch/--layout (no layer matched); pass a checkpoint of the same "
                        f"architecture and layout, e.g. mmaction2's coco 2s-AGCN with --arch aagcn --layout coco-17")
    own.update(fits)
    model.load_state_dict(own)
    left = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    n_own = sum(1 for k in own if not k.endswith("num_batches_tracked"))
    shown = ", ".join(left[:8]) + (f" (+{len(left) - 8} more)" if len(left) > 8 else "")
    log.info("initialised %d of %d weight tensors from %s; fresh: %s", len(weights), n_own, path, shown or "none")
    if len(weights) < n_own // 2:
        log.warning("%s fits only %d of the model's %d weight tensors: most of the model starts from scratch "
                    "(is it the same --arch, --layout and --base-channels?)", path, len(weights), n_own)
    return left


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())


def _epoch(model: nn.Module, loader, runtime: Runtime, loss_fn, optimizer=None, bar=None) -> dict:
    """One pass over `loader` (training when `optimizer` is given) on the runtime's device, the forward
    under its autocast (none in fp32): mean loss, top-1, top-5, count."""
    train = optimizer is not None
    model.train(train)
    n = loss_sum = top1 = top5 = 0
    with torch.set_grad_enabled(train):
        for x, y in loader:
            x, y = x.to(runtime.device), y.to(runtime.device)
            with runtime.autocast():
                logits = model(x)
            logits = logits.float()  # the loss in fp32 (a no-op in fp32)
            loss = loss_fn(logits, y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            n += len(y)
            loss_sum += float(loss.detach()) * len(y)
            top1 += _topk(logits, y, 1)
            top5 += _topk(logits, y, 5)
            if bar is not None:
                bar.step(loss=float(loss.detach()))
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "n": n}


def resolve_config(config: TrainConfig | Mapping[str, Any] | str | Path | None = None, sets: Iterable[str] = (),
                   flags: Mapping[str, Any] | None = None) -> TrainConfig:
    """DEFAULTS <- config (TrainConfig, dict or JSON/TOML file) <- `sets` ("key=value") <- flags; checked.

    UserError (one line, naming the source, key and expected type) on a bad setting."""
    if isinstance(config, TrainConfig):
        config = asdict(config)
    cfg = resolve_settings(DEFAULTS, config=config, sets=sets, flags=flags, optional={"init": ""})
    resolved = TrainConfig(**cfg)
    resolved.check()
    return resolved


def train_skeleton(prepared: str | Path, out: str | Path,
                   config: TrainConfig | Mapping[str, Any] | str | Path | None = None, *, sets: Iterable[str] = (),
                   flags: Mapping[str, Any] | None = None, overwrite: bool = False,
                   runtime: Runtime | None = None) -> TrainResult:
    """Train `config.stream` on the training split of `prepared`, validating every epoch, into `out`.

    Settings: DEFAULTS <- `config` <- `sets` <- `flags` (resolve_config). `runtime`: where it runs
    (device, and bf16 autocast or fp32); None = `Runtime()`, the CPU in fp32. Rerunning into `out`
    resumes after the last finished epoch; a run of other settings there is refused unless `overwrite`.
    Returns a TrainResult; the best checkpoint is `out/best.pt` (see the module docstring).
    UserError (one line) on bad settings, fp16, a prepared folder without skeletons, or a refused `out`.
    """
    config = resolve_config(config, sets, flags)
    runtime = training_runtime(runtime)
    device = runtime.device
    out = Path(out)
    manifest = Manifest.load(prepared)
    split = choose_split(manifest)
    usable = {v for v, info in manifest.videos.items() if info.skeleton}
    dropped = [i for i in split.train + split.val if manifest.clip(i).video_id not in usable]
    if dropped:
        log.warning("%d clips of videos without a skeleton are left out (e.g. %s)", len(dropped), dropped[0])
    train_ids = [i for i in split.train if manifest.clip(i).video_id in usable]
    val_ids = [i for i in split.val if manifest.clip(i).video_id in usable]
    if not train_ids:
        raise UserError(f"no training clip of {prepared} has a skeleton; check prepare_report.json")

    pre = config.preprocess()
    check_readable(pre.layout, get_layout(pre.layout).source, manifest.skeleton_layouts(), str(prepared))
    provenance = {
        "data": str(Path(prepared).resolve()), "arch": config.arch, "stream": config.stream, "layout": pre.layout,
        "preprocess": pre.to_dict(), "split": split.source, "train_clips": len(train_ids), "val_clips": len(val_ids),
        "seed": config.seed, "base_channels": config.base_channels, "balance": config.balance, "init": config.init,
        "num_class": NUM_CLASSES,
    }
    with RunFolder.open(out, "skeleton", asdict(config), provenance, overwrite=overwrite,
                        resumable=RESUMABLE) as run:
        run.update_provenance({"compute": runtime.record()})  # not compared on resume: another device may go on
        log.info("training %s/%s on %d clips, validating on %d (%s), on %s in %s", config.stream, config.arch,
                 len(train_ids), len(val_ids), split.source, device, runtime.precision)
        torch.manual_seed(config.seed)
        train_ds = SkeletonClipDataset(manifest, train_ids, config.stream, pre, train=True, seed=config.seed)
        val_ds = SkeletonClipDataset(manifest, val_ids, config.stream, pre)
        labels = train_ds.labels()
        weights = class_weights(labels, NUM_CLASSES, power=0.5).numpy()  # inverse square root of the frequency
        model = build_model(config).to(device)
        if config.init and run.resume_state is None:
            load_init(model, config.init, trusted=runtime.trust_checkpoint)
        loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device) if config.balance == "loss"
                                      else None)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                    weight_decay=config.weight_decay)
        # Half lr in the first epoch (the adaptive graphs are unstable at full lr from scratch), with a cosine
        # over all `epochs`; stepped once per epoch. A larger --epochs on resume stretches the cosine.
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine(e, config.epochs, WARMUP_EPOCHS, cosine_from_start=True))
        drop_last = len(train_ds) > config.batch_size

        def train_epoch(epoch: int, bar) -> dict[str, float]:
            train_ds.epoch = epoch
            # Per-epoch generators: a resumed run shuffles (or samples) exactly like an uninterrupted one.
            gen = epoch_generator(config.seed, epoch)
            sampler = None
            if config.balance == "sampler":
                per_clip = weights[labels] ** 2  # inverse frequency: every class drawn equally often
                sampler = torch.utils.data.WeightedRandomSampler(per_clip.tolist(), len(labels), generator=gen)
            loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None,
                                                 sampler=sampler, generator=gen, num_workers=config.workers,
                                                 drop_last=drop_last)
            tr = _epoch(model, loader, runtime, loss_fn, optimizer, bar=bar)
            sched.step()
            return {"train_loss": tr["loss"], "train_top1": tr["top1"], "train_top5": tr["top5"]}

        def validate(epoch: int) -> dict[str, float | None]:
            if not len(val_ds):  # no validation clips: the columns stay, empty
                return {"val_loss": None, "val_top1": None, "val_top5": None}
            loader = torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size, num_workers=config.workers)
            va = _epoch(model, loader, runtime, nn.CrossEntropyLoss())
            return {"val_loss": va["loss"], "val_top1": va["top1"], "val_top5": va["top5"]}

        steps = len(train_ds) // config.batch_size if drop_last else 1
        result = fit(run, model, optimizer, scheduler=sched, epochs=config.epochs, train_epoch=train_epoch,
                     validate=validate,
                     select=Selection("val_top1" if len(val_ds) else "train_top1", "max"), seed=config.seed,
                     steps_per_epoch=steps, desc=f"skeleton {config.stream}")
    metric = "val_top1" if len(val_ds) else "train_top1"
    return TrainResult(out=out, best_checkpoint=out / "best.pt", best_epoch=result.best_epoch,
                       best_top1=result.best[metric], epochs_run=result.epochs_run, history=result.history)
