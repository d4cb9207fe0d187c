"""What a pose estimator gives per frame, and the protocol every estimator follows (the agreed
interface; `models` imports and re-exports them).

numpy only: the tracker, the run and the tests use these without torch or a model library. The run
reads only these attributes, so any object that has them (e.g. another module's FramePoses) works.
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


class PoseEstimator(Protocol):
    """A person detector + top-down pose model. `layout`: "coco-17" or "coco-wholebody-133"."""

    layout: str

    def provenance(self) -> dict:
        """Models (name, path, sha256, architecture), thresholds, input size, decoding."""
        ...

    def __call__(self, frames: Sequence[np.ndarray]) -> list[FramePoses]:
        """One FramePoses per frame; frames are RGB uint8 (H, W, 3), batched inside."""
        ...
