"""Test helpers (no tests here): scripted pose estimators that follow `migfuse.pose_estimation.types`.

`ScriptedEstimator` reads each frame's own index (the binary blocks of `test_decode_util.frame_image`)
and returns the people a scene function draws for that index, so a test knows every point the run
must write. Scenes are in pixels of the 128 x 96 test videos.
"""
from __future__ import annotations

import time

import numpy as np
from test_decode_util import H, W, read_index

from migfuse.pose_estimation.types import FramePoses

K = 17


def person(cx: float, cy: float, w: float, h: float, score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box centred at (cx, cy) and 17 points at fixed places inside it, each with confidence `score`."""
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)
    i = np.arange(K)
    kp = np.stack([box[0] + (i + 1) / (K + 1) * w, box[1] + ((i * 7) % K + 1) / (K + 1) * h], -1).astype(np.float32)
    return box, kp, np.full(K, score, np.float32) - i.astype(np.float32) * 0.01


def nobody() -> FramePoses:
    return FramePoses(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, K, 2), np.float32),
                      np.zeros((0, K), np.float32))


def frame_of(people: list[tuple[np.ndarray, np.ndarray, np.ndarray]], box_scores: list[float]) -> FramePoses:
    if not people:
        return nobody()
    return FramePoses(np.stack([p[0] for p in people]), np.asarray(box_scores, np.float32),
                      np.stack([p[1] for p in people]), np.stack([p[2] for p in people]))


def crossing(t: int) -> tuple[FramePoses, int]:
    """Subject A walks left to right while B, a little smaller, walks right to left, 6 pixels a frame, so
    that at the crossing (frames 9-10) B's new box overlaps A's last box more than A's new one does;
    the order of the two in the detector's list flips every frame. Returns (frame, index of A)."""
    a = person(7 + 6 * t, 48, 40, 60, 0.9)
    b = person(121 - 6 * t, 52, 36, 56, 0.8)
    if t % 2:
        return frame_of([b, a], [0.8, 0.9]), 1
    return frame_of([a, b], [0.9, 0.8]), 0


def twins(t: int) -> tuple[FramePoses, int]:
    """Two people of the same size, either side of the centre: neither is more likely."""
    return frame_of([person(44, 48, 30, 50, 0.9), person(84, 48, 30, 50, 0.9)], [0.9, 0.9]), 0


def seated(t: int, empty: tuple[int, ...] = (10, 11, 12)) -> tuple[FramePoses, int]:
    """The iMiGUE case: one seated subject swaying a little, a small passer-by at the edge; nobody in the
    frames `empty`."""
    if t in empty:
        return nobody(), -1
    return frame_of([person(8 + t % 5, 20, 12, 18, 0.6), person(64 + np.sin(t / 5) * 3, 50, 44, 70, 0.95)],
                    [0.6, 0.95]), 1


class ScriptedEstimator:
    """A PoseEstimator whose people come from a scene function of the frame index."""

    layout = "coco-17"

    def __init__(self, scene=seated, delay: float = 0.0):
        self.scene, self.delay, self.calls = scene, delay, 0

    def provenance(self) -> dict:
        # the detector first, as `TransformersPoseEstimator.provenance` lists them (pose_source: pose model first)
        return {"models": [{"role": "detector", "name": "scripted-detector", "path": "-", "sha256": "1" * 64,
                            "architecture": "test"},
                           {"role": "pose", "name": "scripted-pose", "path": "-", "sha256": "0" * 64,
                            "architecture": "test"}],
                "thresholds": {"box": 0.3}, "scene": self.scene.__name__}

    def __call__(self, frames) -> list[FramePoses]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        for f in frames:
            assert f.shape == (H, W, 3) and f.dtype == np.uint8
        return [self.scene(read_index(f))[0] for f in frames]


def expected_points(scene, t: int) -> np.ndarray | None:
    """(17, 3) points the run must write for frame t of a scene (None: nobody)."""
    fp, i = scene(t)
    if i < 0:
        return None
    return np.concatenate([fp.keypoints[i], fp.scores[i][:, None]], -1)


class FrameContentEstimator:
    """Plumbing for real videos (the demo dataset): one person per frame, centred, whose 17 points move
    with the picture (point i's x follows the mean brightness of the i-th of 17 horizontal bands)."""

    layout = "coco-17"

    def provenance(self) -> dict:
        return {"models": [{"name": "frame-content", "path": "-", "sha256": "2" * 64, "architecture": "test"}]}

    def __call__(self, frames) -> list[FramePoses]:
        out = []
        for f in frames:
            h, w = f.shape[:2]
            bands = np.array([b.mean() for b in np.array_split(f.astype(np.float32).mean(axis=2), K)])
            kp = np.stack([w / 2 + (bands - bands.mean()) * w / 256, (np.arange(K) + 0.5) * h / K], -1)
            box = np.array([[w / 4, 0, 3 * w / 4, h]], np.float32)
            out.append(FramePoses(box, np.array([0.9], np.float32), kp[None].astype(np.float32),
                                  np.full((1, K), 0.9, np.float32)))
        return out
