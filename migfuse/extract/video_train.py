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

Recipe (`VideoTrainConfig`, every default commented there): AdamW with layer-wise learning-rate decay,
linear warm-up then cosine (per optimiser step), label smoothing, a class-balanced sampler or loss
weights, drop path, gradient clipping, bf16 autocast on CUDA, optional activation checkpointing,
gradient accumulation up to a target batch over all processes.

Multi-GPU: launch with `torchrun --nproc_per_node N`; each process takes `cuda:LOCAL_RANK` (NCCL) or the
CPU (gloo), trains on its share of each epoch's clip order, and rank 0 alone writes the run folder.

Run folder (`--out`):
  best.pt        {"meta": {"migfuse": provenance}, "state_dict"} of the best epoch by validation top-1;
                 weights only, no `module.` prefix; provenance: kind, width, base checkpoint + sha256,
                 run id, epoch, validation top-1, preprocessing, sampling, config
  last.pt        everything needed to resume (model, optimiser, scheduler, epoch, best so far, config)
  metrics.jsonl  one JSON line per epoch; config.json  the settings of the run
Rerunning with the same settings resumes after the last finished epoch (a larger `epochs` extends it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from migfuse.data_cache.classes import NUM_CLASSES
from migfuse.data_cache.manifest import Manifest
from migfuse.errors import UserError

log = logging.getLogger(__name__)

BALANCE = ("sampler", "weights", "none")
PRECISIONS = ("auto", "fp32", "bf16")
# Settings that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("epochs", "device", "workers", "batch_size", "activation_checkpointing")


@dataclass
class VideoTrainConfig:
    """Settings of one fine-tuning run: the commented defaults (all stored in config.json and best.pt).

    Defaults follow the MViTv2 fine-tuning recipes (mmaction2 `mvit-small` K400 -> downstream,
    SlowFast MViTv2 configs) scaled to iMiGUE's ~13k training clips.
    """

    width: str = "full"  # full = MViTv2-S (34.5M parameters); demo = 4 narrow blocks (tests, CPU benchmarks)
    epochs: int = 20  # epochs in all (a resumed run goes on to this)
    batch_size: int = 4  # clips per forward pass per process (memory: ~3 GB/clip in fp32 training)
    target_batch: int = 32  # clips per optimiser step over all processes; gradient accumulation fills it
    lr: float = 2e-4  # peak AdamW learning rate of the head, reached at the end of warm-up
    layer_decay: float = 0.75  # layer-wise lr decay: block i of N gets lr * layer_decay ** (N + 1 - i)
    weight_decay: float = 0.05  # AdamW; not on norms, biases, class token and relative positions
    warmup_epochs: float = 2.0  # linear warm-up from 0, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    balance: str = "sampler"  # long tail (class 99 ~ a quarter of clips): sampler | weights (loss) | none
    drop_path: float = 0.2  # stochastic depth of the last block (linear in depth), as MViTv2-S
    head_dropout: float = 0.5  # dropout before the classifier, as torchvision's MViTv2-S
    clip_grad: float = 1.0  # max global gradient norm; 0 = off
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% slower
    crop_scale: tuple[float, float] = (0.4, 1.0)  # random resized crop: area fraction of the 224 crop
    crop_ratio: tuple[float, float] = (0.75, 1.3333)  # ... and aspect ratio range
    color_jitter: float = 0.3  # brightness, contrast, saturation factors in [1 - x, 1 + x]; 0 = off
    hflip: bool = False  # off: several iMiGUE classes are left/right specific
    frames: int = 16  # frames per clip (MViTv2-S is built for 16)
    seed: int = 0  # weights of the head, clip order, augmentation, drop path
    workers: int = 2  # DataLoader processes decoding clips (per training process)
    device: str = "auto"  # auto = cuda:LOCAL_RANK when CUDA is available, else cpu | cpu | cuda | cuda:N

    def check(self) -> None:
        from migfuse.extract.mvit import check_width

        check_width(self.width)
        if self.balance not in BALANCE:
            raise UserError(f"unknown balance '{self.balance}': choose {', '.join(BALANCE)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision '{self.precision}': choose {', '.join(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.target_batch < 1 or self.frames < 1:
            raise UserError("epochs, batch_size, target_batch and frames must be >= 1")
        if not 0 < self.layer_decay <= 1 or self.lr <= 0:
            raise UserError(f"lr must be > 0 and layer_decay in (0, 1] (got lr={self.lr}, "
                            f"layer_decay={self.layer_decay})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop_scale must be 0 < low <= high <= 1 (got {self.crop_scale})")


def config_from(config_file: str | Path | None = None, sets: Sequence[str] = (), **options: Any) -> VideoTrainConfig:
    """A VideoTrainConfig from the defaults, then a JSON `config_file`, then `k=v` `sets`, then `options`.

    Raises UserError naming an unknown key or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(VideoTrainConfig)}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        values.update(loaded)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set lr=1e-4")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw  # a bare word: a string
    values.update({k: v for k, v in options.items() if v is not None})
    default = VideoTrainConfig()
    for key, value in values.items():
        if key not in known:
            raise UserError(f"unknown setting '{key}': choose from {', '.join(known)}")
        want = getattr(default, key)
        if isinstance(want, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(want):
                raise UserError(f"setting {key} takes {len(want)} numbers, e.g. {json.dumps(list(want))}")
            values[key] = tuple(float(v) for v in value)
        elif isinstance(want, bool):
            if not isinstance(value, bool):
                raise UserError(f"setting {key} takes true or false, not {value!r}")
        elif isinstance(want, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(want, int) and not isinstance(value, int)):
                raise UserError(f"setting {key} takes a number like {want!r}, not {value!r}")
            values[key] = type(want)(value)
    config = VideoTrainConfig(**values)
    config.check()
    return config


# ------------------------------------------------------------------------------------------------
# data: the extraction loader, one clip at a time
# ------------------------------------------------------------------------------------------------
def clip_loader(manifest: Manifest, frames: int = 16):
    """The `extract video` loader (decoding, sampling, resize + centre crop) for this manifest.

    The one place fine-tuning reaches the decoder: switch here if `video.ClipLoader` changes.
    """
    from migfuse.extract.mvit import PREPROCESSING
    from migfuse.extract.runner import video_files
    from migfuse.extract.sampling import ClipSampling
    from migfuse.extract.video import ClipLoader

    clips = {c.clip_id: (c.start_frame, c.end_frame) for c in manifest.clips}
    return ClipLoader(paths=video_files(manifest), short_side=int(PREPROCESSING["resize_short_side"]),
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
        from migfuse.extract.runner import WorkItem

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
    from migfuse.extract.mvit import PREPROCESSING

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
        from migfuse.extract.mvit import PREPROCESSING

        mean = torch.tensor(PREPROCESSING["mean"], device=x.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(PREPROCESSING["std"], device=x.device).view(1, 3, 1, 1, 1)
        return (out - mean) / std


# ------------------------------------------------------------------------------------------------
# the model and its optimiser
# ------------------------------------------------------------------------------------------------
def build_model(config: VideoTrainConfig, base: str | Path | None) -> tuple[nn.Module, dict[str, Any]]:
    """MViTv2-S (`config.width`) with the base checkpoint's weights and a fresh 32-class head.

    Returns (module, base provenance {"base_checkpoint", "base_checkpoint_sha256"}). Without `base`
    the weights are random (seeded; warned): only for tests.
    """
    from migfuse.extract.mvit import MViTBackbone

    torch.manual_seed(config.seed)
    bb = MViTBackbone(num_classes=400, width=config.width, drop_path=config.drop_path)
    if base is not None:
        bb.load(base)
        if bb.width != config.width:
            raise UserError(f"{base} is a {bb.width}-width model; train it with --set width={bb.width}")
    else:
        log.warning("NO BASE CHECKPOINT: fine-tuning starts from RANDOM weights; pass --checkpoint "
                    "mvit_v2_s-ae3be167.pth (torchvision Kinetics-400) for a real run")
    model = bb.model
    model.head[0].p = config.head_dropout
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
        from migfuse.extract.mvit import forward_tokens

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
    return [groups[k] for k in sorted(groups)]


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
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.startswith("cuda") else "gloo"
            if dev.startswith("cuda"):
                torch.cuda.set_device(torch.device(dev))
            dist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


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
@dataclass
class FineTuneResult:
    """Where the run left its files and how good the best epoch was."""

    out: Path
    best_checkpoint: Path
    best_epoch: int
    best_top1: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def choose_video_split(manifest: Manifest):
    """split_miga train / validation (held-out training videos when there is none); see skeleton.data."""
    from migfuse.extract.skeleton.data import choose_split

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


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_resume(out: Path, config: VideoTrainConfig, base_sha: str | None) -> dict | None:
    """The saved state of an earlier run in `out` with the same settings, else None; UserError on a clash."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file: one line
        raise UserError(f"cannot read {last} to resume ({type(e).__name__}); delete it to start over, or use "
                        "another --out") from None
    saved = dict(state.get("config", {}))
    mine = json.loads(json.dumps(asdict(config)))
    for k, v in mine.items():
        if k not in _RESUMABLE_CHANGES and saved.get(k) != v:
            raise UserError(f"{last} was trained with {k}={saved.get(k)!r}, not {v!r}; use another --out "
                            "or the same settings to resume")
    if state.get("base_checkpoint_sha256") != base_sha:
        raise UserError(f"{last} was fine-tuned from another base checkpoint (sha256 "
                        f"{str(state.get('base_checkpoint_sha256'))[:12]}); use another --out")
    return state


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto]


def _batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        if len(y):
            yield x, y


def fine_tune_video(prepared: str | Path, out: str | Path, config: VideoTrainConfig,
                    checkpoint: str | Path | None = None) -> FineTuneResult:
    """Fine-tune MViTv2-S from `checkpoint` on the training clips of `prepared`; resumable.

    Args:
        prepared: PREPARED folder (`migfuse data prepare`), with video files.
        out: run folder (created; an earlier run with the same settings is resumed).
        config: the recipe (`VideoTrainConfig`).
        checkpoint: base MViTv2-S file (torchvision `mvit_v2_s-ae3be167.pth`, mmaction2, or a migfuse
            fine-tuned best.pt); None = random weights, for tests only.
    Returns:
        FineTuneResult (best.pt loads with `migfuse extract video --checkpoint OUT/best.pt`).
    Raises:
        UserError: bad settings, no usable clips, a base checkpoint that does not fit, a run folder
            of other settings.
    """
    from tqdm import tqdm

    from migfuse.extract.mvit import PREPROCESSING
    from migfuse.extract.sampling import ClipSampling

    config.check()
    out = Path(out)
    dist_info = init_distributed(config.device)
    device = dist_info.device
    manifest = Manifest.load(prepared)
    train_ids, val_ids, source = choose_video_split(manifest)
    if dist_info.main:
        log.info("fine-tuning MViTv2-S (%s width) on %d clips, validating on %d (%s), %d process(es) on %s",
                 config.width, len(train_ids), len(val_ids), source, dist_info.world, device)
    mvit, base_info = build_model(config, checkpoint)
    mvit.to(device)
    train_ds = VideoClipDataset(manifest, train_ids, config.frames)
    val_ds = VideoClipDataset(manifest, val_ids, config.frames)
    weights = class_weights(train_ds.labels)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device) if config.balance == "weights" else None,
                                  label_smoothing=config.label_smoothing)
    groups = param_groups(mvit, config.lr, config.layer_decay, config.weight_decay)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups],
                                  lr=config.lr, betas=(0.9, 0.999))
    accum = max(1, math.ceil(config.target_batch / (config.batch_size * dist_info.world)))
    per_rank = math.ceil(len(train_ids) / dist_info.world)
    steps_per_epoch = max(1, math.ceil(math.ceil(per_rank / config.batch_size) / accum))
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.startswith("cuda"))
    augment = Augment(config.crop_scale, config.crop_ratio, config.color_jitter, config.hflip)

    out.mkdir(parents=True, exist_ok=True)
    state = _check_resume(out, config, base_info["base_checkpoint_sha256"])
    start, best_top1, best_epoch, step = 1, -1.0, 0, 0
    run_id = uuid.uuid4().hex[:12]
    if state is not None:
        mvit.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_top1, best_epoch = state["epoch"] + 1, state["best_top1"], state["best_epoch"]
        step, run_id = state["step"], state["run_id"]
        if dist_info.main:
            log.info("resuming %s after epoch %d (best top-1 %.4f at epoch %d)", out, state["epoch"], best_top1,
                     best_epoch)
    model: nn.Module = FineTuneModel(mvit, config.activation_checkpointing)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                        else None)
    metrics_path = out / "metrics.jsonl"
    history = _read_metrics(metrics_path, upto=start - 1)
    if dist_info.main:
        (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    provenance = {
        "kind": "mvit_v2_s fine-tuned", "width": config.width, "num_classes": NUM_CLASSES, **base_info,
        "run_id": run_id, "run_dir": str(out.resolve()), "split": source, "train_clips": len(train_ids),
        "val_clips": len(val_ids), "preprocessing": PREPROCESSING,
        "sampling": ClipSampling(frames=config.frames).record(), "config": json.loads(json.dumps(asdict(config))),
    }
    loader_args = dict(batch_size=config.batch_size, num_workers=config.workers, collate_fn=collate,
                       persistent_workers=False)

    for epoch in range(start, config.epochs + 1):
        t0 = time.monotonic()
        # Everything random in an epoch is seeded by (seed, epoch): a resumed run matches an uninterrupted one.
        torch.manual_seed(config.seed * 1000 + epoch * 10 + dist_info.rank)
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch * 10 + dist_info.rank)
        order = epoch_order(train_ds.labels, config.balance, config.seed, epoch, dist_info.rank, dist_info.world)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, order), shuffle=False, **loader_args)
        model.train()
        n = loss_sum = correct = 0.0
        micro = 0
        lr_now = optimizer.param_groups[-1]["lr"]
        bar = tqdm(_batches(loader), total=len(loader), desc=f"epoch {epoch}/{config.epochs} train", unit="batch",
                   leave=False, disable=None if dist_info.main else True)
        optimizer.zero_grad(set_to_none=True)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device)
            inputs = augment(x, gen)
            micro += 1
            last_micro = micro % accum == 0
            # DDP all-reduces gradients on every backward unless told not to: only on the last micro-batch
            ctx = model.no_sync() if (dist_info.world > 1 and not last_micro) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = model(inputs)
                    loss = loss_fn(logits.float(), y)
                (loss / accum).backward()
            if last_micro:
                step = _optimizer_step(model, optimizer, config, step, total, warmup)
            n += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            lr_now = optimizer.param_groups[-1]["lr"]
        if micro % accum:  # the epoch's last, partial accumulation
            step = _optimizer_step(model, optimizer, config, step, total, warmup)
        n, loss_sum, correct = _all_sum([n, loss_sum, correct], dist_info)
        va = evaluate(model, val_ds, device, dist_info, config, use_bf16, loader_args) if len(val_ds) else None
        tr_top1 = correct / n if n else float("nan")
        score = va["top1"] if va else tr_top1
        row = {"epoch": epoch, "step": step, "lr": lr_now, "train_loss": loss_sum / n if n else float("nan"),
               "train_top1": tr_top1, "val_loss": va["loss"] if va else None, "val_top1": va["top1"] if va else None,
               "val_top5": va["top5"] if va else None, "seconds": round(time.monotonic() - t0, 3),
               "clips_per_s": round(n / max(1e-9, time.monotonic() - t0), 3)}
        history.append(row)
        if dist_info.main:
            log.info("epoch %d: train loss %.4f top-1 %.3f | val top-1 %s", epoch, row["train_loss"], tr_top1,
                     f"{va['top1']:.3f}" if va else "-")
            if score > best_top1:
                best_top1, best_epoch = score, epoch
                meta = {"migfuse": {**provenance, "epoch": epoch, "val_top1": row["val_top1"],
                                    "val_top5": row["val_top5"]}}
                _atomic_save({"meta": meta, "state_dict": state_dict_plain(model)}, out / "best.pt")
            _atomic_save({"model": state_dict_plain(model), "optimizer": optimizer.state_dict(), "epoch": epoch,
                          "step": step, "best_top1": best_top1, "best_epoch": best_epoch, "run_id": run_id,
                          "base_checkpoint_sha256": base_info["base_checkpoint_sha256"],
                          "config": json.loads(json.dumps(asdict(config)))}, out / "last.pt")
            with open(metrics_path, "a") as f:  # after the checkpoint: a metrics row means a saved epoch
                f.write(json.dumps(row) + "\n")
        elif score > best_top1:
            best_top1, best_epoch = score, epoch
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return FineTuneResult(out=out, best_checkpoint=out / "best.pt", best_epoch=best_epoch, best_top1=best_top1,
                          epochs_run=max(0, config.epochs - start + 1), history=history)


def _optimizer_step(model: nn.Module, optimizer, config: VideoTrainConfig, step: int, total: int,
                    warmup: int) -> int:
    """Clip, set this step's lr on every group (peak lr * group scale * schedule), step; -> next step."""
    if config.clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
    factor = lr_factor(step, total, warmup, config.min_lr_ratio)
    for g in optimizer.param_groups:
        g["lr"] = config.lr * g["lr_scale"] * factor
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step + 1


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoClipDataset, device: str, dist_info: Dist, config: VideoTrainConfig,
             use_bf16: bool, loader_args: dict) -> dict[str, float]:
    """Top-1, top-5 and loss on `dataset` (no augmentation: the extraction input), summed over ranks."""
    from migfuse.extract.mvit import forward_tokens

    model.eval()
    order = list(range(dist_info.rank, len(dataset), dist_info.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order), shuffle=False, **loader_args)
    n = loss_sum = top1 = top5 = 0.0
    for x, y in _batches(loader):
        x, y = x.to(device), y.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            _, logits = forward_tokens(_unwrapped(model), normalise(x))
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top1 += float((logits.argmax(1) == y).sum())
        top5 += float((logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum())
        n += len(y)
    n, loss_sum, top1, top5 = _all_sum([n, loss_sum, top1, top5], dist_info)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "n": int(n)}
