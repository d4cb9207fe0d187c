"""The data side of `backbone train video`: clips as `extract video` prepares them, each epoch's clip
order, and the training augmentation.

    ds = VideoClipDataset(manifest, ids, frames=16)      # ds[i] = ((16, 224, 224, 3) uint8, label) or None
                                                         # (+ a backbone's recipe: its resize, crop, mean/std)
    loader = DataLoader(Subset(ds, epoch_order(ds.labels, "sampler", seed, epoch, rank, world)),
                        batch_size=4, collate_fn=collate)
    for x, y in decoded_batches(loader):                 # (B, 16, 224, 224, 3) uint8, (B,) int64
        inputs = Augment()(x.to(device), generator)      # (B, 3, 16, 224, 224) normalised float32

Decoding, sampling and resize + centre crop are the `extract video` loader's (`clip_loader`), and the
normalisation is `backbones.video_input`'s, so validation input (no augmentation) is bit for bit the
extraction input (tests/test_video_train.py).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from migfuse.datasets.classes import NUM_CLASSES
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# which clips: the split, the extraction loader, one clip at a time
# ------------------------------------------------------------------------------------------------
def choose_video_split(manifest: Manifest) -> tuple[list[str], list[str], str]:
    """(train ids, validation ids, where they came from): split_miga train / validation, or held-out
    training videos when there is none (the rule of `skeleton_data.choose_split`); clips of videos
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


def clip_loader(manifest: Manifest, frames: int = 16, preprocessing: dict[str, Any] | None = None):
    """The `extract video` loader (decoding, sampling, resize + centre crop) for this manifest, with the
    resize and crop of `preprocessing` (a backbone's recipe; None = `mvit.PREPROCESSING`).

    The one place fine-tuning reaches the decoder: switch here if `video.ClipLoader` changes.
    """
    from migfuse.extract.sampling import ClipSampling
    from migfuse.extract.video import ClipLoader

    pre = preprocessing or _mvit_recipe()
    clips = {c.clip_id: (c.start_frame, c.end_frame) for c in manifest.clips}
    return ClipLoader(paths=manifest.video_files(), short_side=int(pre["resize_short_side"]),
                      crop=int(pre["crop_size"][0]), clips=clips, sampling=ClipSampling(frames=frames))


def _mvit_recipe() -> dict[str, Any]:
    from migfuse.backbones.mvit import PREPROCESSING

    return PREPROCESSING


class VideoClipDataset(torch.utils.data.Dataset):
    """(frames (F, crop, crop, 3) uint8, label) per clip, exactly as `extract video` prepares them for a
    backbone of recipe `preprocessing` (None = MViTv2-S's; kept as `.preprocessing` for the mean/std).

    A clip that cannot be decoded yields None (dropped by `collate`, logged once per clip), so one
    damaged video does not stop a long run.
    """

    def __init__(self, manifest: Manifest, ids: Sequence[str], frames: int = 16,
                 preprocessing: dict[str, Any] | None = None):
        self.ids = list(ids)
        self.labels = np.array([manifest.clip(i).label for i in self.ids], dtype=np.int64)
        self.videos = [manifest.clip(i).video_id for i in self.ids]
        self.preprocessing = dict(preprocessing or _mvit_recipe())
        self.loader = clip_loader(manifest, frames, self.preprocessing)

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



def decoded_batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of `loader` that kept at least one clip (`collate` drops clips that failed to decode)."""
    for x, y in loader:
        if len(y):
            yield x, y


# ------------------------------------------------------------------------------------------------
# device side: augmentation
# ------------------------------------------------------------------------------------------------
@dataclass
class Augment:
    """Training augmentation on the device, on (B, F, H, W, 3) uint8 frames -> normalised float input.

    Per clip (the same for all its frames): a random resized crop of the 224x224 frames resized back
    to 224 (bilinear), colour jitter (brightness, contrast, saturation, random order not needed at
    these strengths), optional horizontal flip; then the backbone recipe's `mean`/`std` (None =
    MViTv2-S's). Parameters come from a CPU generator, so a run is reproducible whatever the device.
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    color_jitter: float = 0.3
    hflip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def crop_box(self, h: int, w: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) as torchvision's RandomResizedCrop.get_params (10 tries, then whole)."""
        area = h * w
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=gen).tolist()
            target = area * (self.crop_scale[0] + u[0] * (self.crop_scale[1] - self.crop_scale[0]))
            ratio = math.exp(log_lo + u[1] * (log_hi - log_lo))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                return top, left, ch, cw
        return 0, 0, h, w

    def __call__(self, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w, _ = frames.shape
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
        from migfuse.backbones.video_input import standardise

        pre = _mvit_recipe()
        return standardise(out, self.mean or pre["mean"], self.std or pre["std"])
