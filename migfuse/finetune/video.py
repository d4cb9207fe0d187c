"""Fine-tune MViTv2-S on the micro-gesture clips of a prepared iMiGUE folder (`migfuse backbone train video`).

Every top MiGA micro-gesture entry fine-tuned its video backbone on iMiGUE before extracting with it;
this module goes from torchvision's Kinetics-400 file (or an mmaction2 MViTv2-S file) to a 32-class
MViTv2-S whose `best.pt` `migfuse extract video|context --checkpoint` loads.

What the model sees is what extraction feeds it: clips are decoded, sampled and resized/cropped by the
very loader of `extract video` (`video.ClipLoader`: `sampling.ClipSampling` + `video.resize_crop`),
then normalised with `mvit.PREPROCESSING`'s mean/std on the device. Training adds, on the device, a
random resized crop (one box per clip, all frames) and colour jitter; no horizontal flip by default
(several iMiGUE classes are left/right specific). Validation uses no augmentation: its input is
bit-for-bit the extraction input (tested).

Recipe (`DEFAULTS`, every setting commented there; `--config FILE` / `--set k=v` change them): AdamW
with layer-wise learning-rate decay, linear warm-up then cosine (per optimiser step), label smoothing, a class-balanced sampler or loss
weights, drop path, gradient clipping, bf16 autocast on CUDA, optional activation checkpointing,
gradient accumulation up to a target batch over all processes.

Multi-GPU: launch with `torchrun --nproc_per_node N`; each process takes `cuda:LOCAL_RANK` (NCCL) or the
CPU (gloo), trains on its share of each epoch's clip order, and rank 0 alone writes the run folder.

Run folder (`--out`): the migfuse.training layout (config.json, metrics.jsonl/.csv, curves.png, train.log,
best.pt, last.pt; locked; resumed or refused; atomic). best.pt is the best epoch by validation top-1, in
the migfuse checkpoint format (weights only, torchvision MViT key names, no DDP `module.` prefix), with
`meta["migfuse"]`: kind "mvit_v2_s fine-tuned", width, base checkpoint + sha256, run id, split,
preprocessing, sampling, epoch and its metrics. Rerunning with the same settings resumes after the last
finished epoch (a larger `epochs` extends it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from migfuse.datasets.classes import NUM_CLASSES
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError

log = logging.getLogger(__name__)

BALANCE = ("loss", "sampler", "none")
PRECISIONS = ("auto", "fp32", "bf16")
TRAINER = "video"

#: The recipe: every setting with its default (this dict is the documentation; docs/finetune.md copies it).
#: Defaults follow the MViTv2 fine-tuning recipes (mmaction2 `mvit-small` K400 -> downstream, the SlowFast
#: MViTv2 configs), scaled to iMiGUE's ~13k training clips.
DEFAULTS: dict[str, Any] = {
    "width": "full",  # full = MViTv2-S (34.5M parameters); demo = 4 narrow blocks, same token grid (tests, CPU)
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
    "drop_path": 0.2,  # stochastic depth of the last block (linear in depth), as torchvision's MViTv2-S
    "head_dropout": 0.5,  # dropout before the classifier, as torchvision's MViTv2-S
    "clip_grad": 1.0,  # max global gradient norm; 0 = off
    "precision": "auto",  # auto = bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16
    "activation_checkpointing": False,  # recompute block activations in backward: less memory, ~30% slower
    "crop_scale": [0.4, 1.0],  # random resized crop: area fraction of the 224x224 crop (same box for all frames)
    "crop_ratio": [0.75, 1.3333],  # ... and its aspect-ratio range
    "color_jitter": 0.3,  # brightness, contrast, saturation factors drawn in [1 - x, 1 + x]; 0 = off
    "hflip": False,  # off: several iMiGUE classes are left/right specific (e.g. touching the left/right ear)
    "frames": 16,  # frames per clip, sampled as `extract video` does (MViTv2-S is built for 16)
    "patience": 0,  # stop after this many epochs without a better val_top1; 0 = never
    "seed": 0,  # head weights, clip order, augmentation, drop path
    "workers": 2,  # DataLoader processes decoding clips (per training process)
    "device": "auto",  # auto = cuda:LOCAL_RANK when CUDA is available, else cpu | cpu | cuda | cuda:N
}
#: Settings a rerun may change and still resume.
RESUMABLE = ("epochs", "device", "workers", "activation_checkpointing", "patience")


def check_config(cfg: dict[str, Any]) -> None:
    """UserError (one line) on a setting out of range."""
    from migfuse.backbones.mvit import WIDTHS
    from migfuse.training.config import check_choice, check_positive

    check_choice(cfg, "width", WIDTHS)
    if cfg["balance"] == "weights":  # the word of earlier releases
        log.warning("balance 'weights' is now called 'loss' (class-weighted loss)")
        cfg["balance"] = "loss"
    check_choice(cfg, "balance", BALANCE)
    check_choice(cfg, "precision", PRECISIONS)
    check_positive(cfg, ("epochs", "batch_size", "target_batch", "lr", "frames", "layer_decay"))
    if cfg["layer_decay"] > 1:
        raise UserError(f"the config: layer_decay must be in (0, 1], not {cfg['layer_decay']!r}")
    for key in ("crop_scale", "crop_ratio"):
        lo_hi = cfg[key]
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or (key == "crop_scale" and lo_hi[1] > 1):
            raise UserError(f"the config: {key} must be [low, high] with 0 < low <= high"
                            f"{' <= 1' if key == 'crop_scale' else ''}, not {lo_hi!r}")


def resolve(config: str | Path | dict | None = None, sets: Sequence[str] = (),
            flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS <- `config` (JSON/TOML file or dict) <- `sets` ("k=v") <- `flags`, checked (UserError)."""
    from migfuse.training.config import resolve_config

    cfg = resolve_config(DEFAULTS, config=config, sets=sets, flags=flags)
    check_config(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# data: the extraction loader, one clip at a time
# ------------------------------------------------------------------------------------------------
def clip_loader(manifest: Manifest, frames: int = 16):
    """The `extract video` loader (decoding, sampling, resize + centre crop) for this manifest.

    The one place fine-tuning reaches the decoder: switch here if `video.ClipLoader` changes.
    """
    from migfuse.backbones.mvit import PREPROCESSING
    from migfuse.extract.sampling import ClipSampling
    from migfuse.extract.video import ClipLoader

    clips = {c.clip_id: (c.start_frame, c.end_frame) for c in manifest.clips}
    return ClipLoader(paths=manifest.video_files(), short_side=int(PREPROCESSING["resize_short_side"]),
                      crop=int(PREPROCESSING["crop_size"][0]), clips=clips, sampling=ClipSampling(frames=frames))


class VideoClipDataset(torch.utils.data.Dataset):
    """(frames (F, 224, 224, 3) uint8, label) per clip, exactly as `extract video` prepares them.

    A clip that cannot be decoded yields None (dropped by `collate`, logged once per clip), so one
    damaged video does not stop a long run.
    """

    def __init__(self, manifest: Manifest, ids: Sequence[str], frames: int = 16):
        self.ids = list(ids)
        self.labels = np.array([manifest.clip(i).label for i in self.ids], dtype=np.int64)
        self.videos = [manifest.clip(i).video_id for i in self.ids]
        self.loader = clip_loader(manifest, frames)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int] | None:
        from migfuse.extract.interface import WorkItem

        for sample in self.loader(WorkItem(self.videos[i], (self.ids[i],))):
            if sample.failure is not None:
                log.warning("clip %s left out: %s: %s", self.ids[i], sample.failure.stage, sample.failure.message)
                return None
            return sample.inputs["frames"][0], int(self.labels[i])  # one window: (F, 224, 224, 3)
        return None


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the clips that decoded: (B, F, 224, 224, 3) uint8, (B,) int64 (B may be 0)."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.zeros((0,), dtype=torch.uint8), torch.zeros((0,), dtype=torch.int64)
    return (torch.from_numpy(np.stack([k[0] for k in kept])), torch.tensor([k[1] for k in kept], dtype=torch.int64))


def epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This process's clip indices for one epoch (deterministic in seed and epoch, so a resumed run
    and every rank agree). "sampler" draws len(labels) clips with replacement, every present class
    equally likely; otherwise a permutation. The order is padded to a multiple of `world` and rank r
    takes every world-th clip from r."""
    gen = np.random.default_rng([seed, epoch])
    n = len(labels)
    if balance == "sampler":
        counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
        p = 1.0 / counts[labels]
        order = gen.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = gen.permutation(n)
    pad = (-n) % world
    order = np.concatenate([order, order[:pad]])
    return order[rank::world].tolist()


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Inverse-square-root frequency weights, mean 1 over the classes present (absent classes: 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    return (w / w[counts > 0].mean()).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# device side: normalisation and augmentation
# ------------------------------------------------------------------------------------------------
def normalise(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B, 3, F, H, W) float32, scaled and normalised as `mvit.PREPROCESSING`
    (the same operations, in the same order, as `VideoExtractor` before its forward pass)."""
    from migfuse.backbones.mvit import PREPROCESSING

    mean = torch.tensor(PREPROCESSING["mean"], device=frames.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(PREPROCESSING["std"], device=frames.device).view(1, 3, 1, 1, 1)
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    return (x - mean) / std


@dataclass
class Augment:
    """Training augmentation on the device, on (B, F, H, W, 3) uint8 frames -> normalised float input.

    Per clip (the same for all its frames): a random resized crop of the 224x224 frames resized back
    to 224 (bilinear), colour jitter (brightness, contrast, saturation, random order not needed at
    these strengths), optional horizontal flip. Parameters come from a CPU generator, so a run is
    reproducible whatever the device.
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    color_jitter: float = 0.3
    hflip: bool = False

    def crop_box(self, h: int, w: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) as torchvision's RandomResizedCrop.get_params (10 tries, then whole)."""
        area = h * w
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=gen).tolist()
            target = area * (self.crop_scale[0] + u[0] * (self.crop_scale[1] - self.crop_scale[0]))
            ratio = math.exp(log_lo + u[1] * (log_hi - log_lo))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                return top, left, ch, cw
        return 0, 0, h, w

    def __call__(self, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, f, h, w, _ = frames.shape
        x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, F, H, W) in [0, 1]
        out = torch.empty_like(x)
        for i in range(b):
            top, left, ch, cw = self.crop_box(h, w, gen)
            crop = x[i, :, :, top:top + ch, left:left + cw].transpose(0, 1)  # (F, 3, ch, cw)
            crop = nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            if self.hflip and bool(torch.rand(1, generator=gen) < 0.5):
                crop = crop.flip(-1)
            out[i] = crop.transpose(0, 1)
        if self.color_jitter > 0:
            s = self.color_jitter
            factors = (1 - s + 2 * s * torch.rand(b, 3, generator=gen)).to(x.device)
            bright, contrast, sat = (factors[:, j].view(b, 1, 1, 1, 1) for j in range(3))
            out = out * bright
            gray = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
            out = (out - gray.mean(dim=(2, 3, 4), keepdim=True)) * contrast + gray.mean(dim=(2, 3, 4), keepdim=True)
            gray = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
            out = (out - gray) * sat + gray
            out = out.clamp_(0.0, 1.0)
        from migfuse.backbones.mvit import PREPROCESSING

        mean = torch.tensor(PREPROCESSING["mean"], device=x.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(PREPROCESSING["std"], device=x.device).view(1, 3, 1, 1, 1)
        return (out - mean) / std


# ------------------------------------------------------------------------------------------------
# the model and its optimiser
# ------------------------------------------------------------------------------------------------
def build_model(cfg: dict[str, Any], base: str | Path | None) -> tuple[nn.Module, dict[str, Any]]:
    """MViTv2-S (`cfg["width"]`) with the base checkpoint's weights and a fresh 32-class head.

    Returns (module, base provenance {"base_checkpoint", "base_checkpoint_sha256"}). Without `base`
    the weights are random (seeded; warned): only for tests.
    """
    from migfuse.backbones.mvit import MViTBackbone

    torch.manual_seed(cfg["seed"])
    bb = MViTBackbone(num_classes=400, width=cfg["width"], drop_path=cfg["drop_path"])
    if base is not None:
        bb.load(base)
        if bb.width != cfg["width"]:
            raise UserError(f"{base} is a {bb.width}-width model; train it with --set width={bb.width}")
    else:
        log.warning("NO BASE CHECKPOINT: fine-tuning starts from RANDOM weights; pass --checkpoint "
                    "mvit_v2_s-ae3be167.pth (torchvision Kinetics-400) for a real run")
    model = bb.model
    model.head[0].p = cfg["head_dropout"]
    head = nn.Linear(model.head[1].in_features, NUM_CLASSES)
    nn.init.trunc_normal_(head.weight, std=0.02)  # torchvision's MViT initialisation
    nn.init.zeros_(head.bias)
    model.head[1] = head
    info = {"base_checkpoint": str(base) if base is not None else None,
            "base_checkpoint_sha256": bb.checkpoint_sha256 if base is not None else None}
    if bb.fine_tune:  # fine-tuning a fine-tuned run again: keep the chain
        info["base_fine_tune"] = {k: bb.fine_tune.get(k) for k in ("run_id", "base_checkpoint_sha256")}
    return model, info


class FineTuneModel(nn.Module):
    """torchvision's MViT as a classifier whose forward is `mvit.forward_tokens` (the extraction maths),
    with optional activation checkpointing. `.mvit` holds the weights that go into best.pt."""

    def __init__(self, mvit: nn.Module, checkpointing: bool = False):
        super().__init__()
        self.mvit, self.checkpointing = mvit, checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 224, 224) normalised float -> (B, 32) logits."""
        from migfuse.backbones.mvit import forward_tokens

        return forward_tokens(self.mvit, x, self.checkpointing)[1]


def layer_id(name: str, num_blocks: int) -> int:
    """Depth of a parameter of torchvision's MViT for layer-wise lr decay: conv_proj and pos_encoding
    0, blocks.i -> i + 1, the final norm and head num_blocks + 1."""
    if name.startswith(("conv_proj.", "pos_encoding.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases, the class token and relative position tables get no weight decay."""
    return param.ndim <= 1 or name.startswith("pos_encoding.") or ".rel_pos_" in name


def param_groups(model: nn.Module, lr: float, layer_decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per (depth, decay or not), lr = lr * layer_decay ** (N + 1 - depth).

    Each group carries "lr_scale" (its share of the scheduled lr) and "layer" (for tests and logs).
    """
    num_blocks = len(model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_id(name, num_blocks)
        decay = not no_weight_decay(name, p)
        key = (depth, decay)
        if key not in groups:
            scale = layer_decay ** (num_blocks + 1 - depth)
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale, "layer": depth,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    # deepest first: param_groups[0] is the head's, at the peak lr (what metrics.jsonl's "lr" shows)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based): linear warm-up over `warmup`
    steps from 1/warmup, then cosine from 1 down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False  # this call created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> str:
    """auto -> cuda:LOCAL_RANK when CUDA is available, else cpu; cuda -> cuda:LOCAL_RANK.

    Raises UserError for cuda without CUDA."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this torch has no CUDA device; use --device cpu (or auto)")
        if device == "cuda":
            device = f"cuda:{local_rank}"
    return device


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    owns = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.startswith("cuda") else "gloo"
            if dev.startswith("cuda"):
                torch.cuda.set_device(torch.device(dev))
            dist.init_process_group(backend=backend)
            owns = True
    return Dist(rank=rank, world=world, local_rank=local, device=dev, owns_group=owns)


def _all_sum(values: list[float], dist_info: Dist) -> list[float]:
    if dist_info.world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(t)
    return t.tolist()


def _unwrapped(model: nn.Module) -> nn.Module:
    """The torchvision MViT inside DDP and FineTuneModel."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return model.mvit if isinstance(model, FineTuneModel) else model


def state_dict_plain(model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision MViT weights (no DDP `module.` prefix, no wrapper prefix), on the CPU."""
    return {k: v.detach().cpu() for k, v in _unwrapped(model).state_dict().items()}


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def choose_video_split(manifest: Manifest) -> tuple[list[str], list[str], str]:
    """(train ids, validation ids, where they came from): split_miga train / validation, or held-out
    training videos when there is none (the rule of `skeleton.data.choose_split`); clips of videos
    without a video file are left out (warned)."""
    from migfuse.finetune.skeleton_data import choose_split

    split = choose_split(manifest)
    have_video = {v for v, info in manifest.videos.items() if info.video_path}
    train = [i for i in split.train if manifest.clip(i).video_id in have_video]
    val = [i for i in split.val if manifest.clip(i).video_id in have_video]
    left = len(split.train) + len(split.val) - len(train) - len(val)
    if left:
        log.warning("%d clips of videos without a video file are left out", left)
    if not train:
        raise UserError(f"no training clip of {manifest.root} has a video file; put the videos next to the "
                        "labels and re-run `migfuse data prepare`")
    return train, val, split.source


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
                dist_info: Dist) -> Iterator[Any]:
    """Rank 0 opens (locks, resumes or refuses) the run folder; the other ranks wait for its decision,
    then follow with the same last.pt."""
    from migfuse.training.checkpoint import load_checkpoint
    from migfuse.training.run_folder import RunFolder

    if dist_info.world == 1:
        with RunFolder.open(out, TRAINER, cfg, provenance, overwrite=overwrite, resumable=RESUMABLE) as run:
            yield run
        return
    import tempfile

    import torch.distributed as dist

    if dist_info.main:
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
                    runtime: Any = None) -> dict[str, Any]:
    """Fine-tune MViTv2-S from `checkpoint` on the training clips of `prepared`; resumable.

    Args:
        prepared: PREPARED folder (`migfuse data prepare`), with its video files.
        out: run folder (migfuse.training layout; an earlier run of the same settings resumes).
        checkpoint: base MViTv2-S file (torchvision `mvit_v2_s-ae3be167.pth`, mmaction2, or a migfuse
            fine-tuned best.pt); None = random weights, for tests only (warned).
        config, sets, flags: settings over DEFAULTS (file or dict, "k=v" strings, CLI options).
        overwrite: replace a run of other settings in `out`.
    Returns:
        {"best": best epoch's record, "history", "epochs_run", "n_train", "n_validation",
        "validation_source", "best_checkpoint"}; best.pt loads with `extract video --checkpoint`.
    Raises:
        UserError: bad settings, no usable clips, a base checkpoint that does not fit, a run folder
            of other settings or in use.
    """
    from migfuse.backbones.checkpoints import sha256_file
    from migfuse.backbones.mvit import FINETUNE_KIND, PREPROCESSING
    from migfuse.extract.sampling import ClipSampling
    from migfuse.training.loop import Selection, epoch_generator, fit

    cfg = resolve(config, sets, flags)
    out = Path(out)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint} (pass a local MViTv2-S file, e.g. "
                        "mvit_v2_s-ae3be167.pth)")
    dist_info = init_distributed(runtime.device if runtime is not None else cfg["device"])
    device = dist_info.device
    manifest = Manifest.load(prepared)
    train_ids, val_ids, source = choose_video_split(manifest)
    if dist_info.main:
        log.info("fine-tuning MViTv2-S (%s width) on %d clips, validating on %d (%s), %d process(es) on %s",
                 cfg["width"], len(train_ids), len(val_ids), source, dist_info.world, device)
    provenance = {
        "kind": FINETUNE_KIND, "width": cfg["width"], "num_classes": NUM_CLASSES, "data": str(Path(prepared).resolve()),
        "base_checkpoint": str(checkpoint) if checkpoint is not None else None,
        "base_checkpoint_sha256": sha256_file(checkpoint) if checkpoint is not None else None,
        "split": source, "train_clips": len(train_ids), "val_clips": len(val_ids),
        "preprocessing": PREPROCESSING, "sampling": ClipSampling(frames=cfg["frames"]).record(),
    }
    mvit, base_info = build_model(cfg, checkpoint)
    mvit.to(device)
    if "base_fine_tune" in base_info:
        provenance["base_fine_tune"] = base_info["base_fine_tune"]
    train_ds = VideoClipDataset(manifest, train_ids, cfg["frames"])
    val_ds = VideoClipDataset(manifest, val_ids, cfg["frames"])
    weights = class_weights(train_ds.labels)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device) if cfg["balance"] == "loss" else None,
                                  label_smoothing=cfg["label_smoothing"])
    groups = param_groups(mvit, cfg["lr"], cfg["layer_decay"], cfg["weight_decay"])
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups],
                                  lr=cfg["lr"], betas=(0.9, 0.999))
    accum = max(1, math.ceil(cfg["target_batch"] / (cfg["batch_size"] * dist_info.world)))
    per_rank = math.ceil(len(train_ids) / dist_info.world)
    batches_per_epoch = math.ceil(per_rank / cfg["batch_size"])
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accum))
    total = steps_per_epoch * cfg["epochs"]
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg["min_lr_ratio"]))
    if runtime is not None:
        use_bf16 = str(runtime.precision) == "bf16"
    else:
        use_bf16 = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and device.startswith("cuda"))
    augment = Augment(tuple(cfg["crop_scale"]), tuple(cfg["crop_ratio"]), cfg["color_jitter"], cfg["hflip"])
    model: nn.Module = FineTuneModel(mvit, cfg["activation_checkpointing"])
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                        else None)
    loader_args = dict(batch_size=cfg["batch_size"], num_workers=cfg["workers"], collate_fn=collate)
    autocast = dict(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16)

    def train_epoch(epoch: int, bar) -> dict[str, float]:
        gen = epoch_generator(cfg["seed"] * 1009 + dist_info.rank, epoch)  # augmentation, per rank
        order = epoch_order(train_ds.labels, cfg["balance"], cfg["seed"], epoch, dist_info.rank, dist_info.world)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, order), shuffle=False, **loader_args)
        model.train()
        n = loss_sum = correct = 0.0
        micro = 0
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for x, y in _batches(loader):
            x, y = x.to(device, non_blocking=True), y.to(device)
            inputs = augment(x, gen)
            micro += 1
            last_micro = micro % accum == 0 or micro == batches_per_epoch
            # DDP all-reduces gradients on every backward unless told not to: only on the last micro-batch
            sync = contextlib.nullcontext() if (dist_info.world == 1 or last_micro) else model.no_sync()
            with sync:
                with torch.autocast(**autocast):
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
        n, loss_sum, correct = _all_sum([n, loss_sum, correct], dist_info)
        return {"train_loss": loss_sum / n if n else float("nan"), "train_top1": correct / n if n else float("nan"),
                "train_clips_per_s": round(n / max(seconds, 1e-9), 3)}

    def validate(epoch: int) -> dict[str, float]:
        return evaluate(model, val_ds, device, dist_info, use_bf16, loader_args)

    with _run_folder(out, cfg, provenance, overwrite, dist_info) as run:
        if dist_info.main:
            run.update_provenance({"run_id": run_id_of(out), "run_dir": str(out.resolve()),
                                   "world_size": dist_info.world})
        result = fit(run, mvit, optimizer, scheduler=scheduler, epochs=cfg["epochs"], train_epoch=train_epoch,
                     validate=validate if len(val_ds) else None, select=Selection("val_top1", "max", "val_loss"),
                     patience=cfg["patience"], seed=cfg["seed"], steps_per_epoch=steps_per_epoch,
                     desc=f"video fine-tuning (rank {dist_info.rank})" if dist_info.world > 1 else "video fine-tuning")
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        if dist_info.owns_group:
            dist.destroy_process_group()
    return {"best": result.best, "history": result.history, "epochs_run": result.epochs_run,
            "n_train": len(train_ids), "n_validation": len(val_ids), "validation_source": source,
            "best_checkpoint": out / "best.pt"}


def _batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        if len(y):
            yield x, y


def _optimizer_step(model: nn.Module, optimizer, scheduler, clip_grad: float) -> None:
    """Clip the global gradient norm, step, advance the lr schedule (per optimiser step), zero."""
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoClipDataset, device: str, dist_info: Dist, use_bf16: bool,
             loader_args: dict) -> dict[str, float]:
    """val_loss, val_top1, val_top5 on `dataset` with no augmentation (the extraction input), over all ranks."""
    from migfuse.backbones.mvit import forward_tokens

    mvit = _unwrapped(model)
    mvit.eval()
    order = list(range(dist_info.rank, len(dataset), dist_info.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order), shuffle=False, **loader_args)
    n = loss_sum = top1 = top5 = 0.0
    for x, y in _batches(loader):
        x, y = x.to(device), y.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            _, logits = forward_tokens(mvit, normalise(x))
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top1 += float((logits.argmax(1) == y).sum())
        top5 += float((logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum())
        n += len(y)
    n, loss_sum, top1, top5 = _all_sum([n, loss_sum, top1, top5], dist_info)
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan")}
    return {"val_loss": loss_sum / n, "val_top1": top1 / n, "val_top5": top5 / n}
