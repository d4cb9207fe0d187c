"""What a pose estimator gives per frame, and the protocol every estimator follows.

numpy only: the tracker, the run and the tests use these without torch or a model library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

#: the layouts a pose estimator writes -> keypoints per person (as `datasets.pose_layouts` stores them)
ESTIMATED_LAYOUTS = {"coco-17": 17, "coco-wholebody-133": 133}


@dataclass(frozen=True)
class FramePoses:
    """Every person found in one frame. P persons, K keypoints of the estimator's `layout`."""

    boxes: np.ndarray       # (P, 4) float32, x1, y1, x2, y2 in frame pixels (of the frame as given)
    box_scores: np.ndarray  # (P,) float32, detector confidence
    keypoints: np.ndarray   # (P, K, 2) float32, x, y in frame pixels
    scores: np.ndarray      # (P, K) float32, per-point confidence in [0, 1] as the model gives it

    @classmethod
    def empty(cls, num_keypoints: int) -> "FramePoses":
        """A frame with nobody in it."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0, num_keypoints, 2), np.float32), np.zeros((0, num_keypoints), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class PoseEstimator(Protocol):
    """A person detector + top-down pose model. `layout`: "coco-17" or "coco-wholebody-133"."""

    layout: str

    def provenance(self) -> dict:
        """Models (name, path, sha256, architecture), thresholds, input size, decoding."""
        ...

    def __call__(self, frames: Sequence[np.ndarray]) -> list[FramePoses]:
        """One FramePoses per frame; frames are RGB uint8 (H, W, 3), batched inside."""
        ...
