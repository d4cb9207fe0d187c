"""Which frames a clip or a video contributes: the sampling rules of the video and context tracks.

All indices are 0-based annotation frames at 25 fps (inclusive clip ends, as in the manifest).
Pure numpy, no torch: the rules run in loader workers and the face track reuses `context_windows`.

* Clip (video track): `frames` indices spread uniformly over [start, end], one per equal segment,
  at the segment's centre (TSN-style test sampling; short clips repeat frames). With
  `max_windows > 1`, a long clip is cut into up to that many equal parts (one per `window_span`
  frames) and each part is sampled the same way -> several windows.
* Context (emotion track): K windows of `frames` frames, every `stride`-th frame, centred on K
  equally spaced points of the whole video and kept inside it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def uniform_indices(start: int, end: int, frames: int = 16) -> np.ndarray:
    """(frames,) int64: centres of `frames` equal segments of [start, end] (inclusive)."""
    if end < start:
        raise ValueError(f"empty frame range {start}..{end}")
    if frames < 1:
        raise ValueError("frames must be >= 1")
    length = end - start + 1
    return start + np.floor((np.arange(frames) + 0.5) * length / frames).astype(np.int64)


def clip_windows(start: int, end: int, frames: int = 16, max_windows: int = 1, window_span: int = 64) -> np.ndarray:
    """(W, frames) int64 frame indices of a clip; W = min(max_windows, ceil(length / window_span)), >= 1.

    The clip is cut into W equal parts, each sampled with `uniform_indices`; W = 1 is plain
    uniform sampling over the whole clip.
    """
    length = end - start + 1
    w = 1 if max_windows <= 1 else max(1, min(max_windows, math.ceil(length / window_span)))
    bounds = start + np.floor(np.arange(w + 1) * length / w).astype(np.int64)
    return np.stack([uniform_indices(int(bounds[j]), int(bounds[j + 1]) - 1, frames) for j in range(w)])


def context_windows(n_frames: int, k: int = 8, frames: int = 16, stride: int = 4) -> np.ndarray:
    """(k, frames) int64 frame indices of the K context windows of a video of `n_frames` frames.

    Window j covers `frames` frames `stride` apart ((frames-1)*stride+1 frames in all), centred on
    (j + 0.5) * n_frames / k and shifted to lie inside the video; a video shorter than one window
    repeats its last frame. The face track uses the same windows (face frames per context window).
    """
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame to place context windows (got {n_frames})")
    span = (frames - 1) * stride + 1
    centres = (np.arange(k) + 0.5) * n_frames / k
    first = np.clip(np.round(centres - span / 2).astype(np.int64), 0, max(0, n_frames - span))
    idx = first[:, None] + np.arange(frames, dtype=np.int64)[None, :] * stride
    return np.minimum(idx, n_frames - 1)


@dataclass(frozen=True)
class ClipSampling:
    """The video track's rule, as recorded in the cache provenance."""

    frames: int = 16
    max_windows: int = 1
    window_span: int = 64  # frames per window when a long clip gets several (16 x stride 4)

    def windows(self, start: int, end: int) -> np.ndarray:
        """(W, frames) indices of one clip."""
        return clip_windows(start, end, self.frames, self.max_windows, self.window_span)

    def record(self) -> dict:
        return {"rule": "uniform segment centres over [start_frame, end_frame] (0-based, 25 fps)", **asdict(self)}


@dataclass(frozen=True)
class ContextSampling:
    """The context track's rule, as recorded in the cache provenance."""

    windows: int = 8
    frames: int = 16
    stride: int = 4

    def indices(self, n_frames: int) -> np.ndarray:
        """(windows, frames) indices for a video of `n_frames` frames."""
        return context_windows(n_frames, self.windows, self.frames, self.stride)

    def record(self) -> dict:
        return {"rule": "K windows of `frames` frames every `stride`-th, centred at (j+0.5)*n_frames/K, kept inside",
                **asdict(self)}
