"""Clips as a video backbone takes them: the one uint8 -> normalised float step, on the model's device.

`extract video|context` (`VideoExtractor._tokens_batch`), `backbone train video` (validation input and
the end of its augmentation) and the benchmarks all call these, with the mean/std of the backbone's
recipe (`Backbone.preprocessing`, e.g. `mvit.PREPROCESSING`), so fine-tuning sees bit for bit what
extraction feeds the model (tests/test_video_train.py checks it). The CPU side before it (decode,
sample, resize, centre crop to uint8) is `extract.video.resize_crop`.

Torch is imported when a function runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def normalise_clips(frames: Any, mean: Sequence[float] | Any, std: Sequence[float] | Any) -> Any:
    """(B, F, H, W, 3) uint8 clips -> (B, 3, F, H, W) float32 model input: scaled to [0, 1], then
    (x - mean) / std per channel, on the device of `frames`.

    Args:
        frames: (B, F, H, W, 3) uint8 torch tensor (RGB frames as the loaders give them).
        mean, std: 3 per-channel values on the [0, 1] scale (`PREPROCESSING["mean"]`), or tensors of
            shape (1, 3, 1, 1, 1) already on the device (what an extractor keeps between batches).
    """
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, F, H, W) in [0, 1]
    return standardise(x, mean, std)


def standardise(x: Any, mean: Sequence[float] | Any, std: Sequence[float] | Any) -> Any:
    """(B, 3, F, H, W) float in [0, 1] -> (x - mean) / std per channel (the last step of
    `normalise_clips`, for input that was augmented in [0, 1] first)."""
    import torch

    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std
