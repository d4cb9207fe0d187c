"""Generated token caches with a planted class signal, in the real per-track shapes (tests, benchmark).

    prepared, cache = write_synthetic(tmp / "syn", n_videos=8, clips_per_video=12, num_classes=4)

Every clip's class c adds `signal` x a fixed random unit-variance direction p_c (one per class and
track) to all of its tokens; emotion adds a Win/Lose direction to face features and context tokens.
Noise is standard normal, so a head must average over tokens to find the signal (with signal 0 the
best possible accuracy is chance). Tokens are written THROUGH the store API (`TokenGroup.write`),
exactly as the extract tracks write them. Needs numpy only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from migfuse.datasets import classes
from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
from migfuse.data_cache.store import ArraySpec, GroupSpec, TokenCache
from migfuse.data_cache.tracks import TRACKS, row_definition

VIDEO_SHAPE = (393, 768)
FACE_DIM, FACE_LOGITS = 512, 7
ALL_TRACKS = ("video", "joint", "bone", "face", "context", "face_context")


def synthetic_manifest(n_videos: int, clips_per_video: int, num_classes: int, seed: int = 0,
                       with_validation: bool = True) -> Manifest:
    """Videos 0001.. with clips labelled 0..num_classes-1 (cycling, then shuffled per video).

    split_miga: the last quarter of videos is test, one video (if `with_validation`) validation,
    the rest train; split_emotion alternates train/test; win_lose alternates in pairs so both
    emotion splits hold both classes.
    """
    rng = np.random.default_rng(seed)
    n_test = max(1, n_videos // 4)
    clips, videos = [], {}
    for v in range(n_videos):
        vid = f"{v + 1:04d}"
        if v >= n_videos - n_test:
            miga = "test"
        elif with_validation and v == n_videos - n_test - 1:
            miga = "validation"
        else:
            miga = "train"
        win_lose = "Win" if (v // 2) % 2 == 0 else "Lose"
        emotion = "train" if v % 2 == 0 else "test"
        videos[vid] = VideoInfo(vid, subject=v + 1, win_lose=win_lose, split_emotion=emotion,
                                n_frames=clips_per_video * 50)
        labels = rng.permutation([(v + k) % num_classes for k in range(clips_per_video)])
        for k in range(clips_per_video):
            raw = classes.index_to_raw(int(labels[k]))
            clips.append(Clip(clip_id=f"{vid}_{k}", video_id=vid, k=k, start_frame=50 * k, end_frame=50 * k + 39,
                              label=int(labels[k]), raw_class=raw, subject=v + 1, win_lose=win_lose,
                              split_cs="test" if miga == "test" else "train", split_miga=miga,
                              split_emotion=emotion))
    return Manifest(clips=clips, videos=videos)


class Planter:
    """Fixed random class directions per (track, width): `add(x, label, axis)` adds the signal."""

    def __init__(self, num_classes: int, signal: float, seed: int = 0):
        self.num_classes, self.signal, self.seed = num_classes, signal, seed
        self._dirs: dict[tuple[str, int], np.ndarray] = {}

    def direction(self, key: str, dim: int) -> np.ndarray:
        if (key, dim) not in self._dirs:
            rng = np.random.default_rng([self.seed, dim, sum(map(ord, key))])
            self._dirs[(key, dim)] = rng.standard_normal((self.num_classes, dim)).astype(np.float32)
        return self._dirs[(key, dim)]

    def add(self, x: np.ndarray, label: int, key: str, axis: int = -1) -> np.ndarray:
        """x + signal * direction[label], broadcast along every axis but `axis` (the feature axis)."""
        d = self.direction(key, x.shape[axis])[label] * self.signal
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        return x + d.reshape(shape)


def write_synthetic(root: str | Path, n_videos: int = 8, clips_per_video: int = 12, num_classes: int = 4,
                    tracks: Sequence[str] = ALL_TRACKS, joints: int = 55, pose_steps: int = 16,
                    windows: int = 4, faces: int = 6, signal: float = 1.0, seed: int = 0,
                    skip: Sequence[str] = (), with_validation: bool = True) -> tuple[Path, Path]:
    """Write PREPARED (manifest) and CACHE.zarr (raw track groups) under `root`.

    `skip` lists ids left unwritten (status missing) in every group, to test coverage checks.
    Returns (prepared_dir, cache_path).
    """
    root = Path(root)
    m = synthetic_manifest(n_videos, clips_per_video, num_classes, seed, with_validation)
    prepared = m.save(root / "prepared")
    cache = TokenCache(root / "cache.zarr")
    rng = np.random.default_rng(seed + 1)
    mg, emo = Planter(num_classes, signal, seed), Planter(2, signal, seed + 7)
    clip_ids = [c.clip_id for c in m.clips]
    video_ids = sorted(m.videos)
    prov = {"backbone": "synthetic", "seed": seed, "signal": signal}

    def group(name: str, ids: list[str], arrays: dict[str, ArraySpec]):
        return cache.require_group(GroupSpec(name, ids, arrays, prov))

    def rowdef(track: str, row_id: str) -> str:  # stored per row, as extraction does
        return row_definition(TRACKS[track], m, row_id)

    if "video" in tracks:
        g = group("video/mvit_v2_s", clip_ids, {"tokens": ArraySpec(VIDEO_SHAPE, "float16")})
        for c in m.clips:
            if c.clip_id not in skip:
                g.write(c.clip_id, {"tokens": mg.add(rng.standard_normal(VIDEO_SHAPE, np.float32), c.label, "video")},
                        rowdef=rowdef("video", c.clip_id))
    for stream in ("joint", "bone"):
        if stream in tracks:
            shape = (256, pose_steps, joints)
            g = group(f"{stream}/agcn", clip_ids, {"features": ArraySpec(shape, "float16")})
            for c in m.clips:
                if c.clip_id not in skip:
                    g.write(c.clip_id, {"features": mg.add(rng.standard_normal(shape, np.float32),
                                                           c.label, stream, axis=0)}, rowdef=rowdef(stream, c.clip_id))
    if "face" in tracks:
        g = group("face/swinface", clip_ids, {"features": ArraySpec((faces, FACE_DIM), "float16"),
                                              "logits": ArraySpec((faces, FACE_LOGITS), "float16"),
                                              "mask": ArraySpec((faces,), "bool")})
        for c in m.clips:
            if c.clip_id not in skip:
                mask = rng.random(faces) < 0.7
                feats = mg.add(rng.standard_normal((faces, FACE_DIM), np.float32), c.label, "face") * mask[:, None]
                g.write(c.clip_id, {"features": feats,
                                    "logits": rng.standard_normal((faces, FACE_LOGITS)), "mask": mask},
                        rowdef=rowdef("face", c.clip_id))
    if "context" in tracks:
        shape = (windows, *VIDEO_SHAPE)
        g = group("context/mvit_v2_s", video_ids, {"tokens": ArraySpec(shape, "float16"),
                                                    "valid": ArraySpec((windows,), "bool")})
        for i, v in enumerate(video_ids):
            if v in skip:
                continue
            valid = np.arange(windows) < windows - (i % 2)  # every other video has a padded last window
            y = classes.emotion_label(m.videos[v].win_lose)
            tokens = emo.add(rng.standard_normal(shape, np.float32) * 2.0, y, "context") * valid[:, None, None]
            g.write(v, {"tokens": tokens, "valid": valid}, rowdef=rowdef("context", v))
    if "face_context" in tracks:
        g = group("face_context/swinface", video_ids, {"features": ArraySpec((windows, faces, FACE_DIM), "float16"),
                                                       "logits": ArraySpec((windows, faces, FACE_LOGITS), "float16"),
                                                       "mask": ArraySpec((windows, faces), "bool")})
        for i, v in enumerate(video_ids):
            if v in skip:
                continue
            # Every third video has no face at all: the head must cope (InterFusion's no-face path).
            mask = (rng.random((windows, faces)) < 0.6) & (i % 3 != 2)
            y = classes.emotion_label(m.videos[v].win_lose)
            feats = emo.add(rng.standard_normal((windows, faces, FACE_DIM), np.float32), y, "face") * mask[..., None]
            g.write(v, {"features": feats, "logits": rng.standard_normal((windows, faces, FACE_LOGITS)), "mask": mask},
                    rowdef=rowdef("face_context", v))
    return prepared, cache.path
