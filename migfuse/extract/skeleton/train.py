"""Train one skeleton stream (joint or bone) of 2s-AGCN / AAGCN on a prepared iMiGUE folder.

Output folder (`--out`):
  best.pt        the best epoch by validation top-1, as {"meta": {"migfuse": provenance}, "state_dict"}:
                 loads with `create_backbone("agcn"|"aagcn", "best.pt")` and `migfuse extract skeleton`
  last.pt        everything needed to resume (model, optimiser, epoch, best so far, settings)
  metrics.jsonl  one JSON line per epoch: loss, top-1 / top-5 on train and validation, lr, seconds
  config.json    the settings of the run

Re-running with the same settings continues after the last finished epoch (more --epochs extend it).
The class imbalance of iMiGUE (class 99 "non-MG" is about a quarter of the clips) is handled by
inverse-square-root class weights in the loss (default) or a class-balanced sampler.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from migfuse.data_cache.classes import NUM_CLASSES
from migfuse.data_cache.manifest import Manifest
from migfuse.errors import UserError
from migfuse.extract.skeleton.data import SkeletonClipDataset, choose_split
from migfuse.extract.skeleton.graphs import get_layout
from migfuse.extract.skeleton.preprocess import STREAMS, PreprocessConfig, check_layout

log = logging.getLogger(__name__)

ARCHS = ("agcn", "aagcn")
BALANCE = ("weights", "sampler", "none")
# Settings that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("epochs", "device", "workers")


@dataclass
class TrainConfig:
    """Settings of one training run (all stored in config.json and the checkpoint's provenance)."""

    stream: str = "joint"
    layout: str = "imigue"
    arch: str = "agcn"
    length: int = 64
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 5e-4
    base_channels: int = 64
    balance: str = "weights"
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    init: str | None = None  # mmaction2 / 2s-AGCN checkpoint to start from (head and data_bn re-initialised)

    def check(self) -> None:
        if self.stream not in STREAMS:
            raise UserError(f"unknown --stream '{self.stream}': choose joint or bone")
        if self.arch not in ARCHS:
            raise UserError(f"unknown --arch '{self.arch}': choose agcn or aagcn")
        if self.balance not in BALANCE:
            raise UserError(f"unknown --balance '{self.balance}': choose {', '.join(BALANCE)}")
        check_layout(get_layout(self.layout))
        if self.length < 4 or self.epochs < 1 or self.batch_size < 1 or self.base_channels < 4:
            raise UserError("--length must be >= 4, --epochs and --batch-size >= 1, --base-channels >= 4")

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(layout=get_layout(self.layout).name, length=self.length)


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
    from migfuse.extract.skeleton.aagcn import RecognizerGCN
    from migfuse.extract.skeleton.agcn import AGCN

    layout = get_layout(config.layout)
    cls = AGCN if config.arch == "agcn" else RecognizerGCN
    return cls(layout, num_class=NUM_CLASSES, num_person=1, base_channels=config.base_channels)


def load_init(model: nn.Module, path: str | Path) -> list[str]:
    """Start from a published checkpoint of the same architecture and layout: every tensor whose name
    and shape fit is copied; the classifier and a data_bn of another person count stay fresh.
    Returns the names left at their initial value."""
    from migfuse.extract.checkpoints import read_checkpoint
    from migfuse.extract.skeleton.agcn import unwrap_state_dict

    sd, _ = unwrap_state_dict(read_checkpoint(path), path)
    own = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
            and "fc." not in k}
    # data_bn of a 2-person checkpoint (channel m*V*C + v*C + c): keep person 0's half.
    for k, v in sd.items():
        if "data_bn" in k and k in own and v.ndim == 1 and v.shape[0] == 2 * own[k].shape[0]:
            fits[k] = v[: own[k].shape[0]].clone()
    if not any("gcn" in k for k in fits):
        raise UserError(f"{path} does not fit --arch/--layout (no layer matched); pass a checkpoint of the same "
                        f"architecture and layout, e.g. mmaction2's coco 2s-AGCN with --arch aagcn --layout coco-17")
    own.update(fits)
    model.load_state_dict(own)
    left = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    log.info("initialised %d tensors from %s; fresh: %s", len(fits), path, ", ".join(left) or "none")
    return left


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Inverse-square-root frequency weights, mean 1 over the classes present (absent classes: 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    return (w / w[counts > 0].mean()).astype(np.float32)


def _epoch(model: nn.Module, loader, device: str, loss_fn, optimizer=None, desc: str = "") -> dict:
    from tqdm import tqdm

    train = optimizer is not None
    model.train(train)
    n = loss_sum = top1 = top5 = 0
    with torch.set_grad_enabled(train):
        for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            n += len(y)
            loss_sum += float(loss.detach()) * len(y)
            top1 += _topk(logits, y, 1)
            top5 += _topk(logits, y, 5)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "n": n}


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_resume(out: Path, config: TrainConfig) -> dict | None:
    """The saved state of an earlier run in `out` with the same settings, else None; UserError on a clash."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    state = torch.load(last, map_location="cpu", weights_only=False)
    saved = state.get("config", {})
    for k, v in asdict(config).items():
        if k not in _RESUMABLE_CHANGES and saved.get(k) != v:
            raise UserError(f"{last} was trained with {k}={saved.get(k)!r}, not {v!r}; use another --out "
                            f"or the same settings to resume")
    return state


def train_skeleton(prepared: str | Path, out: str | Path, config: TrainConfig) -> TrainResult:
    """Train `config.stream` on the training split of `prepared`, validating every epoch; resumable.

    Returns a TrainResult; the best checkpoint is `out/best.pt` (see the module docstring).
    """
    config.check()
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
    log.info("training %s/%s on %d clips, validating on %d (%s)", config.stream, config.arch, len(train_ids),
             len(val_ids), split.source)

    torch.manual_seed(config.seed)
    pre = config.preprocess()
    train_ds = SkeletonClipDataset(manifest, train_ids, config.stream, pre, train=True, seed=config.seed)
    val_ds = SkeletonClipDataset(manifest, val_ids, config.stream, pre)
    labels = train_ds.labels()
    weights = class_weights(labels)
    device = config.device
    model = build_model(config).to(device)
    if config.init:
        load_init(model, config.init)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device) if config.balance == "weights"
                                  else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)

    out.mkdir(parents=True, exist_ok=True)
    state = _check_resume(out, config)
    start, best_top1, best_epoch = 1, -1.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_top1, best_epoch = state["epoch"] + 1, state["best_top1"], state["best_epoch"]
        log.info("resuming %s after epoch %d (best top-1 %.4f at epoch %d)", out, state["epoch"], best_top1,
                 best_epoch)
    # Half lr in the first epoch (the adaptive graphs are unstable at full lr from scratch), then cosine
    # over --epochs. Built at the resumed epoch, so a larger --epochs on resume stretches the cosine.
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: min(1.0, (e + 1) / 2) * 0.5 * (1 + math.cos(math.pi * e / config.epochs)),
        last_epoch=start - 2)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    metrics_path = out / "metrics.jsonl"
    history = _read_metrics(metrics_path, upto=start - 1)
    metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    provenance = {
        "arch": config.arch, "stream": config.stream, "layout": pre.layout, "preprocess": pre.to_dict(),
        "split": split.source, "train_clips": len(train_ids), "val_clips": len(val_ids), "seed": config.seed,
        "base_channels": config.base_channels, "balance": config.balance, "init": config.init,
        "num_class": NUM_CLASSES,
    }
    for epoch in range(start, config.epochs + 1):
        t0 = time.monotonic()
        train_ds.epoch = epoch
        # Per-epoch generators: a resumed run shuffles (or samples) exactly like an uninterrupted one.
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        sampler = None
        if config.balance == "sampler":
            per_clip = weights[labels] ** 2  # inverse frequency: every class drawn equally often
            sampler = torch.utils.data.WeightedRandomSampler(per_clip.tolist(), len(labels), generator=gen)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None,
                                             sampler=sampler, generator=gen, num_workers=config.workers,
                                             drop_last=len(train_ds) > config.batch_size)
        lr = optimizer.param_groups[0]["lr"]
        tr = _epoch(model, loader, device, loss_fn, optimizer, desc=f"epoch {epoch}/{config.epochs} train")
        sched.step()
        va = _epoch(model, torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size,
                                                        num_workers=config.workers),
                    device, nn.CrossEntropyLoss(), desc=f"epoch {epoch} val") if len(val_ds) else None
        score = va["top1"] if va else tr["top1"]
        row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
               "train_top5": tr["top5"], "val_loss": va["loss"] if va else None,
               "val_top1": va["top1"] if va else None, "val_top5": va["top5"] if va else None,
               "seconds": round(time.monotonic() - t0, 3)}
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("epoch %d: train loss %.4f top-1 %.3f | val top-1 %s top-5 %s", epoch, tr["loss"], tr["top1"],
                 f"{va['top1']:.3f}" if va else "-", f"{va['top5']:.3f}" if va else "-")
        if score > best_top1:
            best_top1, best_epoch = score, epoch
            meta = {"migfuse": {**provenance, "epoch": epoch, "val_top1": row["val_top1"],
                                "val_top5": row["val_top5"]}}
            _atomic_save({"meta": meta, "state_dict": model.state_dict()}, out / "best.pt")
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "epoch": epoch, "best_top1": best_top1,
                      "best_epoch": best_epoch, "config": asdict(config)}, out / "last.pt")
    return TrainResult(out=out, best_checkpoint=out / "best.pt", best_epoch=best_epoch, best_top1=best_top1,
                       epochs_run=max(0, config.epochs - start + 1), history=history)


def _read_metrics(path: Path, upto: int) -> list[dict]:
    """Metric rows of epochs <= upto (rows of an epoch whose checkpoint was never written are dropped)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto]
