"""Small generated skeleton datasets whose classes differ by motion, for tests and benchmarks.

Each clip is a seated upper body in OpenPose's 137-point layout (pixels, ~1280x720 frame) whose
class decides a movement: which hand moves (right, left, both), the direction (up/down or sideways)
and the speed. Each video draws its own body position and size, so a model must rely on the
normalised motion, and Gaussian jitter plus dropped hand points imitate OpenPose noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from migfuse.datasets.manifest import Clip, Manifest, VideoInfo, write_skeleton

# A neutral pose (BODY_25 points used by the layouts), in shoulder widths around the neck, y down.
_POSE = {0: (0.0, -0.9), 1: (0.0, 0.0), 2: (-0.5, 0.0), 3: (-0.7, 0.8), 4: (-0.4, 1.4), 5: (0.5, 0.0),
         6: (0.7, 0.8), 7: (0.4, 1.4), 8: (0.0, 1.8), 9: (-0.3, 1.8), 12: (0.3, 1.8), 15: (-0.15, -1.0),
         16: (0.15, -1.0), 17: (-0.3, -0.9), 18: (0.3, -0.9)}


def _hand(wrist: np.ndarray, side: float) -> np.ndarray:
    """(21, 2) hand points: wrist then 5 fingers of 4 points fanning out below the wrist."""
    pts = [wrist]
    for f in range(5):
        angle = np.pi / 2 + side * (f - 2) * 0.25
        for j in range(1, 5):
            pts.append(wrist + 0.08 * j * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(pts)


def clip_motion(label: int, n: int, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """(n, 137, 3) frames of one clip of class `label` in shoulder-width units around the neck."""
    hands = ((4,), (7,), (4, 7))[label % 3]
    direction = np.array((0.0, -1.0)) if (label // 3) % 2 == 0 else np.array((1.0, 0.0))
    cycles = 1.0 + (label // 6)  # slow or fast
    phase = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0, 1, n)
    offset = 0.5 * np.sin(2 * np.pi * cycles * t + phase)[:, None] * direction  # (n, 2)
    out = np.zeros((n, 137, 3))
    for p, xy in _POSE.items():
        out[:, p, :2] = xy
        out[:, p, 2] = rng.uniform(0.6, 0.95)
    for w in hands:
        out[:, w, :2] += offset
        out[:, w - 1, :2] += offset / 2  # the elbow follows halfway
    for start, wrist, side in ((95, 7, 1.0), (116, 4, -1.0)):
        for i in range(n):
            out[i, start:start + 21, :2] = _hand(out[i, wrist, :2], side)
        out[:, start:start + 21, 2] = rng.uniform(0.3, 0.8, (n, 21))
    out[..., :2] += rng.normal(0, noise, (n, 137, 2))
    lost = rng.random((n, 137)) < 0.05  # OpenPose misses some hand points
    lost[:, :95] = False
    out[lost] = 0.0
    return out


def make_toy_dataset(out: str | Path, *, classes: int = 4, videos: int = 6, clips_per_video: int = 12,
                     frames_per_clip: tuple[int, int] = (20, 60), val_videos: int = 2, seed: int = 0) -> Manifest:
    """Write a prepared folder (manifest.csv, videos.csv, skeletons/) of generated clips and return it.

    Labels cycle through `classes` (raw classes 1..classes); the last `val_videos` videos are
    split_miga 'validation', the others 'train'. Frames between clips have no person (mask False).
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    clips: list[Clip] = []
    infos: dict[str, VideoInfo] = {}
    for v in range(videos):
        vid = f"{9000 + v:04d}"
        split = "validation" if v >= videos - val_videos else "train"
        centre = np.array([rng.uniform(500, 780), rng.uniform(250, 350)])
        scale = rng.uniform(120, 200)
        frames, mask, t = [], [], 0
        for k in range(clips_per_video):
            gap = int(rng.integers(3, 10))
            frames.append(np.zeros((gap, 137, 3)))
            mask.append(np.zeros(gap, bool))
            t += gap
            n = int(rng.integers(*frames_per_clip))
            label = (k + v) % classes
            motion = clip_motion(label, n, rng)
            seen = motion[..., 2] > 0
            motion[..., :2] = motion[..., :2] * scale + centre
            motion[~seen] = 0.0
            frames.append(motion)
            mask.append(np.ones(n, bool))
            clips.append(Clip.make(vid, k, t, t + n - 1, raw_class=label + 1, subject=22, split_miga=split))
            t += n
        info = VideoInfo(vid, subject=22, win_lose="Win")
        info.skeleton = write_skeleton(out, vid, np.concatenate(frames).astype(np.float32), np.concatenate(mask))
        info.n_frames = t
        infos[vid] = info
    m = Manifest(clips=clips, videos=infos)
    m.save(out)
    return m
