"""The main subject of a run of consecutive frames: people tracked frame to frame, one chosen.

iMiGUE films one seated interviewee, large and near the middle of the picture, for the whole
video; reporters or passers-by are smaller, off-centre or brief. So:

1. track: each frame's people are matched to the tracks of the frames before by the IoU of their
   box with the track's predicted box (its last box moved on at its last velocity, so two people
   crossing keep their identities), greedily from the best match down, a match needing IoU >=
   `min_iou`; unmatched people start tracks; a track unseen for more than `max_gap` frames ends.
2. score: each track's per-frame weight is box area (share of the frame) x centrality (1 at the
   centre, 0 at a corner) x detector score; a track's score is the sum over its frames (persistence).
3. choose: the best-scoring track is the subject; tracks that never share a frame with the chosen
   ones join them in score order (the same person found again after a gap the tracker did not
   bridge); a track that shares frames is someone else.
4. ambiguity: where another person's weight summed over the frames shared with the subject is at
   least `ambiguity` x the subject's over those frames, the two are about equally likely: those
   frames are flagged (`Subject.ambiguous`), never decided silently. The subject is still the one
   written (the better score); the run report names the clips.

numpy only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from migfuse.pose_estimation.types import FramePoses


@dataclass(frozen=True)
class TrackerSettings:
    """How people are followed and when a choice is ambiguous (recorded in the provenance)."""

    min_iou: float = 0.3
    max_gap: int = 10
    ambiguity: float = 0.8

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Subject:
    """The main subject of T frames: `person` (T,) int, the subject's index among each frame's people
    (-1: not found); `ambiguous` (T,) bool; `tracks`: how many people were tracked."""

    person: np.ndarray
    ambiguous: np.ndarray
    tracks: int


def persons(frame: FramePoses) -> int:
    """How many people a frame's poses hold."""
    return int(frame.boxes.shape[0])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) and b (M, 4), x1 y1 x2 y2 -> (N, M)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def person_weight(boxes: np.ndarray, box_scores: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """(P,) weight of each box: area share of the frame x centrality x detector score."""
    h, w = frame_size
    size = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
    area = size.prod(-1) / float(max(h * w, 1))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    off = np.linalg.norm(centre - np.array([w / 2, h / 2]), axis=-1) / max(np.hypot(w / 2, h / 2), 1e-9)
    return area * np.clip(1 - off, 0, 1) * box_scores


def _tracks(frames: Sequence[FramePoses], settings: TrackerSettings) -> np.ndarray:
    """(T, P_max) track id of each person of each frame (-1: no person there)."""
    width = max((persons(f) for f in frames), default=0)
    ids = np.full((len(frames), width), -1, dtype=np.int64)
    live: dict[int, dict] = {}  # track id -> last box, velocity of its centre, last frame
    next_id = 0
    for t, fp in enumerate(frames):
        live = {k: v for k, v in live.items() if t - v["t"] <= settings.max_gap + 1}
        keys = list(live)
        taken: set[int] = set()
        if keys and persons(fp):
            predicted = np.stack([live[k]["box"] + np.tile(live[k]["v"] * (t - live[k]["t"]), 2) for k in keys])
            overlap = iou(predicted, fp.boxes.astype(np.float64))
            for flat in np.argsort(-overlap, axis=None, kind="stable"):
                i, j = divmod(int(flat), overlap.shape[1])
                if overlap[i, j] < settings.min_iou:
                    break
                if keys[i] in taken or ids[t, j] >= 0:
                    continue
                ids[t, j] = keys[i]
                taken.add(keys[i])
        for j in range(persons(fp)):
            box = fp.boxes[j].astype(np.float64)
            k = int(ids[t, j])
            if k < 0:
                k = ids[t, j] = next_id
                next_id += 1
                live[k] = {"box": box, "v": np.zeros(2), "t": t}
                continue
            old = live[k]
            shift = ((box[:2] + box[2:]) - (old["box"][:2] + old["box"][2:])) / 2
            live[k] = {"box": box, "v": shift / max(t - old["t"], 1), "t": t}
    return ids


def follow_main_subject(frames: Sequence[FramePoses], frame_size: tuple[int, int],
                        settings: TrackerSettings = TrackerSettings()) -> Subject:
    """The main subject of consecutive frames (see the module docstring); `frame_size` (H, W) pixels."""
    n = len(frames)
    person = np.full(n, -1, dtype=np.int64)
    ambiguous = np.zeros(n, dtype=bool)
    ids = _tracks(frames, settings)
    if ids.size == 0 or ids.max() < 0:
        return Subject(person, ambiguous, 0)
    n_tracks = int(ids.max()) + 1
    weight = np.zeros((n, n_tracks))  # per frame, per track
    where = np.full((n, n_tracks), -1, dtype=np.int64)  # person index of the track in the frame
    for t, fp in enumerate(frames):
        if persons(fp):
            w = person_weight(fp.boxes.astype(np.float64), fp.box_scores.astype(np.float64), frame_size)
            for j, k in enumerate(ids[t, :persons(fp)]):
                weight[t, k], where[t, k] = w[j], j
    present = where >= 0
    order = np.argsort(-weight.sum(0), kind="stable")
    chosen: list[int] = []
    covered = np.zeros(n, dtype=bool)
    for k in order:
        if not (present[:, k] & covered).any():
            chosen.append(int(k))
            covered |= present[:, k]
    for k in chosen:
        person[present[:, k]] = where[present[:, k], k]
    mine = np.zeros(n)
    for k in chosen:
        mine[present[:, k]] = weight[present[:, k], k]
    for k in set(range(n_tracks)) - set(chosen):
        shared = present[:, k] & covered
        if shared.any() and weight[shared, k].sum() >= settings.ambiguity * mine[shared].sum():
            ambiguous |= shared
    return Subject(person, ambiguous, n_tracks)
