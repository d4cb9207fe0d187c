"""The three per-video skeleton formats, each read into (T, 137, 3) float32 + (T,) bool mask.

- `OpenPoseFolder`: OpenPose JSON per frame (Oulu release), see `migfuse.datasets.openpose`.
- `OpenPoseXlsx`: ``<vid4>_openpose.xlsx`` / ``<vid4>_2.xlsx``, T rows x 411 = 137 x (x, y, c).
- `LightHandCsv`: MiGA 2023 ``<vid4>_light_hand.csv``: a first non-joint column, then 35 joints x
  (x, y, c) = BODY_25, 5 right-hand and 5 left-hand finger points. They fill points 0-24 and the
  fingertips of the 21-point OpenPose hands (thumb 4, index 8, middle 12, ring 16, little 20), i.e.
  right hand 120, 124, 128, 132, 136 and left hand 99, 103, 107, 111, 115; every other point is 0.
  The fingertip reading of "Finger1..5" is an assumption: no source names the hand points.

In every format a frame's mask is True when any point has confidence > 0 (the files carry no
separate "person found" flag), and a point with an infinite value is undetected (0, 0, 0), counted
as ``nonfinite_points`` (NaN after a header row means a non-numeric cell: the file is refused).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from migfuse.atomic_write import open_atomic
from migfuse.datasets.csv_files import reading_csv
from migfuse.datasets.layouts.base import SkeletonRead
from migfuse.datasets.openpose import LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND, clean_points, read_openpose_folder
from migfuse.datasets.xlsx import read_xlsx, write_xlsx
from migfuse.errors import UserError

log = logging.getLogger(__name__)

FINGERTIPS = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, little tip in an OpenPose hand
#: the 137-point index of each of the 35 light_hand joints, in file order
LIGHT_HAND_POINTS: tuple[int, ...] = (
    tuple(range(25))
    + tuple(RIGHT_HAND.start + i for i in FINGERTIPS)
    + tuple(LEFT_HAND.start + i for i in FINGERTIPS)
)
LIGHT_HAND_COLUMNS = 1 + 3 * len(LIGHT_HAND_POINTS)  # 106


def _mask_of(points: np.ndarray) -> np.ndarray:
    return (points[:, :, 2] > 0).any(axis=1)


def _drop_header(table: np.ndarray, path: Path, info: dict) -> np.ndarray:
    """Drop a first row that is not numbers (a header some re-exports add)."""
    if len(table) and np.isnan(table[0]).any():
        info["header_row_dropped"] = True
        table = table[1:]
    if np.isnan(table).any():
        raise UserError(f"{path} has non-numeric cells after its first row; re-export it as numbers only")
    return table


def _clean(points: np.ndarray, info: dict) -> None:
    """Infinite values (text "inf" in a cell) make their point undetected, counted in ``info``."""
    bad_frames = int((~np.isfinite(points)).any(axis=(1, 2)).sum())
    if bad_frames:
        info["nonfinite_points"] = clean_points(points)
        info["nonfinite_frames"] = bad_frames


@dataclass
class OpenPoseFolder:
    """A folder of ``<id>_<frame>_keypoints.json`` files."""

    path: Path
    kind: str = "openpose_json"

    def read(self, progress: bool = True) -> SkeletonRead:
        points, mask, stats = read_openpose_folder(self.path, progress=progress)
        info = {"files": stats.files, "body_model": stats.body_model, "old_key_names": stats.old_key_names,
                "empty_frames": stats.empty_frames, "multi_person_frames": stats.multi_person_frames,
                "missing_frames": len(stats.missing_frames), "unreadable_files": stats.reasons,
                "n_unreadable_files": len(stats.unreadable), "nonfinite_points": stats.nonfinite_points,
                "nonfinite_frames": stats.nonfinite_frames}
        return SkeletonRead(points, mask, info)


@dataclass
class OpenPoseXlsx:
    """A T x 411 spreadsheet (MiGA 2025 ``_openpose.xlsx``, Oulu ``_2.xlsx``)."""

    path: Path
    kind: str = "openpose_xlsx"

    def read(self, progress: bool = True) -> SkeletonRead:
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path} is an empty file")
        info: dict = {}
        table = _drop_header(read_xlsx(self.path), self.path, info)
        if table.size == 0:
            raise UserError(f"{self.path} has no rows")
        if table.shape[1] != 3 * NUM_KEYPOINTS:
            raise UserError(f"{self.path} has {table.shape[1]} columns, expected 411 (137 points x 3)")
        points = np.ascontiguousarray(table.reshape(len(table), NUM_KEYPOINTS, 3), dtype=np.float32)
        _clean(points, info)
        return SkeletonRead(points, _mask_of(points), info)


@dataclass
class LightHandCsv:
    """A MiGA 2023 ``_light_hand.csv`` (T x 106), mapped into the 137 points (see module docstring)."""

    path: Path
    kind: str = "light_hand_csv"

    def read(self, progress: bool = True) -> SkeletonRead:
        info: dict = {}
        with reading_csv(self.path, "re-export it"), open(self.path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
        if not rows:
            raise UserError(f"{self.path} has no rows")

        def number(text: str) -> float:
            try:
                return float(text) if text.strip() else 0.0
            except ValueError:
                return float("nan")

        widths = {len(r) for r in rows[1:]} or {len(rows[0])}
        if widths != {LIGHT_HAND_COLUMNS}:
            raise UserError(f"{self.path} has rows of {sorted(widths)} columns, expected {LIGHT_HAND_COLUMNS} "
                            f"(a first column + 35 joints x 3)")
        table = _drop_header(np.array([[number(x) for x in r] for r in rows], dtype=np.float64), self.path, info)
        joints = table[:, 1:].reshape(len(table), len(LIGHT_HAND_POINTS), 3)
        points = np.zeros((len(table), NUM_KEYPOINTS, 3), dtype=np.float32)
        points[:, list(LIGHT_HAND_POINTS)] = joints
        _clean(points, info)
        return SkeletonRead(points, _mask_of(points), info)


# ----- writers (tests and the demo dataset write the challenge layouts with these) ---------------

def write_openpose_xlsx(path: str | Path, points: np.ndarray) -> Path:
    """Write (T, 137, 3) points as a MiGA 2025 ``_openpose.xlsx`` (T x 411, no header)."""
    points = np.asarray(points, dtype=np.float32)
    return write_xlsx(path, points.reshape(len(points), NUM_KEYPOINTS * 3))


def write_light_hand_csv(path: str | Path, points: np.ndarray) -> Path:
    """Write (T, 137, 3) points as a MiGA 2023 ``_light_hand.csv`` (no header; the first column is
    the frame number; only the 35 points of `LIGHT_HAND_POINTS` are kept)."""
    points = np.asarray(points, dtype=np.float32)
    path = Path(path)
    joints = points[:, list(LIGHT_HAND_POINTS)].reshape(len(points), -1).astype(np.float64)
    with open_atomic(path, "w", newline="") as f:
        w = csv.writer(f)
        for t, row in enumerate(joints.tolist()):
            w.writerow([t] + [repr(v) if not v.is_integer() else str(int(v)) for v in row])
    return path
