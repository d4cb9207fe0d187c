"""Skeleton clips of a prepared folder as model inputs: the training dataset and the split choice."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from migfuse.datasets.manifest import Clip, Manifest
from migfuse.errors import UserError
from migfuse.extract.skeleton.preprocess import ClipInput, PreprocessConfig, clip_frames, clip_input

log = logging.getLogger(__name__)


class VideoSkeletons:
    """Per-video memory-mapped skeletons of a manifest, opened once each."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def clip(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """The clip's frames (T, 137, 3) and person mask (T,) (UserError when the video has no skeleton)."""
        if clip.video_id not in self._open:
            self._open[clip.video_id] = self.manifest.skeleton(clip.video_id)
        skel, mask = self._open[clip.video_id]
        return clip_frames(skel, mask, clip.start_frame, clip.end_frame)

    def input(self, clip: Clip, stream: str, config: PreprocessConfig,
              rng: np.random.Generator | None = None) -> ClipInput:
        skel, mask = self.clip(clip)
        return clip_input(skel, mask, stream, config, rng)


@dataclass
class Split:
    """Which clips train and which validate, and where that choice came from."""

    train: list[str]
    val: list[str]
    source: str  # e.g. "split_miga train / validation"


def choose_split(manifest: Manifest) -> Split:
    """Training clips: split_miga 'train', else split_cs 'train' (labelled clips only).

    Validation: split_miga 'validation', else split_cs 'test' when labelled; when neither has
    labelled clips, every 10th training video (sorted ids) is held out so the best epoch can be chosen.
    """
    labelled = {c.clip_id for c in manifest.clips if c.label is not None}
    for scheme, val_name in (("split_miga", "validation"), ("split_cs", "test")):
        train = [i for i in manifest.ids("train", scheme) if i in labelled]
        if not train:
            continue
        val = [i for i in manifest.ids(val_name, scheme) if i in labelled]
        if val:
            return Split(train, val, f"{scheme} train / {val_name}")
        videos = sorted({manifest.clip(i).video_id for i in train})
        held = set(videos[::10]) if len(videos) > 1 else set()
        if not held:
            return Split(train, [], f"{scheme} train / none")
        return Split([i for i in train if manifest.clip(i).video_id not in held],
                     [i for i in train if manifest.clip(i).video_id in held],
                     f"{scheme} train / every 10th training video held out")
    raise UserError(f"no labelled training clips in {manifest.root}/manifest.csv (split_miga or split_cs "
                    f"'train'); prepare a dataset with labels")


class SkeletonClipDataset(torch.utils.data.Dataset):
    """(x (3, L, V, 1) float32, label) per clip. Training mode draws a random frame per segment."""

    def __init__(self, manifest: Manifest, ids: list[str], stream: str, config: PreprocessConfig,
                 train: bool = False, seed: int = 0):
        self.manifest, self.ids, self.stream, self.config = manifest, ids, stream, config
        self.train, self.seed, self.epoch = train, seed, 0
        self._videos: VideoSkeletons | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self) -> np.ndarray:
        return np.array([self.manifest.clip(i).label for i in self.ids], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._videos is None:  # opened per worker process: memory maps do not travel well
            self._videos = VideoSkeletons(self.manifest)
        clip = self.manifest.clip(self.ids[i])
        # Seeded by (seed, epoch, index) so a resumed run draws the same frames as an uninterrupted one.
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.train else None
        ci = self._videos.input(clip, self.stream, self.config, rng)
        return torch.from_numpy(ci.x), int(clip.label)
