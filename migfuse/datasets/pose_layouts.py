"""The point layouts a prepared skeleton file is stored in, and how each reads as iMiGUE's 137 points.

`data prepare` stores OpenPose output as it comes: 137 points (BODY_25 0-24, face 25-94, left hand
95-115, right hand 116-136). `data pose` stores what the pose model gives: COCO-17 (17 body points)
or COCO-WholeBody (133: 17 body, 6 feet, 68 face, 21 left hand, 21 right hand). videos.csv records
the layout per video (column ``skeleton_layout``; empty = openpose-137, what older folders hold).

Every skeleton reader (extract skeleton, backbone train skeleton, export-pyskl) reads a video through
`as_openpose137`, so an estimated skeleton goes through exactly the code an OpenPose one does:

* each COCO point sits at the BODY_25 point it is (COCO-17 = BODY_25 0, 2-7, 9-18 in another order;
  the WholeBody feet, hands and first 68 face points are OpenPose's feet, hands and face 0-67);
* OpenPose's neck (1) and mid-hip (8) have no COCO point: they are derived as the midpoint of the
  shoulders / hips with the smaller of the two confidences, where both are found (as DWPose's
  OpenPose-format output derives the neck), else missing (confidence 0);
* points the stored layout lacks (hands, face of COCO-17; OpenPose's pupils 93, 94) are missing.
  A graph layout that needs such points is refused up front (`check_readable`), never fed zeros.

numpy only.
"""
from __future__ import annotations

import numpy as np

from migfuse.errors import UserError

OPENPOSE_137 = "openpose-137"
COCO_17 = "coco-17"
COCO_WHOLEBODY_133 = "coco-wholebody-133"
#: stored layout -> points per frame
STORED_LAYOUTS = {OPENPOSE_137: 137, COCO_17: 17, COCO_WHOLEBODY_133: 133}

#: the BODY_25 point of each COCO-17 point (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
COCO17_IN_BODY25 = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
NECK, MID_HIP = 1, 8
_SHOULDERS, _HIPS = (2, 5), (9, 12)  # BODY_25 right / left


def _wholebody_in_137() -> tuple[int, ...]:
    feet = (19, 20, 21, 22, 23, 24)  # WholeBody 17-22: left big toe, small toe, heel, right ... = BODY_25 19-24
    face = tuple(range(25, 25 + 68))  # WholeBody 23-90 = OpenPose face 0-67 (no pupils)
    hands = tuple(range(95, 116)) + tuple(range(116, 137))  # WholeBody 91-111 left, 112-132 right
    return COCO17_IN_BODY25 + feet + face + hands


#: stored layout -> the 137-point index of each stored point
_PLACE = {OPENPOSE_137: tuple(range(137)), COCO_17: COCO17_IN_BODY25, COCO_WHOLEBODY_133: _wholebody_in_137()}


def stored_layout_of(name: str) -> str:
    """The stored layout a videos.csv cell names ("" = openpose-137); UserError for an unknown name."""
    name = name or OPENPOSE_137
    if name not in STORED_LAYOUTS:
        raise UserError(f"unknown skeleton layout '{name}' in videos.csv: migfuse reads "
                        f"{', '.join(STORED_LAYOUTS)}; re-run `migfuse data prepare` or `migfuse data pose`")
    return name


def points_of(stored: str) -> frozenset[int]:
    """The 137-point indices a stored layout provides (the derived neck and mid-hip included)."""
    have = set(_PLACE[stored_layout_of(stored)])
    if stored != OPENPOSE_137:
        have |= {NECK, MID_HIP}
    return frozenset(have)


def as_openpose137(points: np.ndarray, stored: str) -> np.ndarray:
    """(T, K, 3) float32 points of `stored` layout -> (T, 137, 3) float32 at their OpenPose places.

    openpose-137 is returned as given (a memory map stays one). Missing points are zeros."""
    stored = stored_layout_of(stored)
    if stored == OPENPOSE_137:
        return points
    points = np.asarray(points, dtype=np.float32)
    out = np.zeros((points.shape[0], 137, 3), dtype=np.float32)
    out[:, list(_PLACE[stored])] = points
    for derived, (a, b) in ((NECK, _SHOULDERS), (MID_HIP, _HIPS)):
        both = (out[:, a, 2] > 0) & (out[:, b, 2] > 0)
        out[both, derived, :2] = (out[both, a, :2] + out[both, b, :2]) / 2
        out[both, derived, 2] = np.minimum(out[both, a, 2], out[both, b, 2])
    return out


class OpenPoseView:
    """A (T, 137, 3) float32 view of a stored (T, K, 3) skeleton that expands only the frames indexed
    (`as_openpose137` per access), so a memory-mapped file of a long video stays on disk until a clip
    of it is read. Supports `shape`, `len`, indexing (frames first) and `np.asarray`."""

    ndim, dtype = 3, np.dtype(np.float32)

    def __init__(self, points: np.ndarray, stored: str):
        self._points, self._stored = points, stored_layout_of(stored)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self._points.shape[0]), 137, 3)

    def __len__(self) -> int:
        return int(self._points.shape[0])

    def __getitem__(self, key: object) -> np.ndarray:
        frames, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(frames, (int, np.integer)):
            return as_openpose137(np.asarray(self._points[frames])[None], self._stored)[0][rest]
        return as_openpose137(np.asarray(self._points[frames]), self._stored)[(slice(None), *rest)]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        full = as_openpose137(np.asarray(self._points), self._stored)
        return full if dtype is None else full.astype(dtype)


def check_readable(graph_layout: str, source: tuple[int, ...] | None, stored: set[str] | frozenset[str],
                   where: str = "") -> None:
    """UserError when a graph layout needs points that some stored layout lacks; the message names the
    graph layouts that fit every stored layout present.

    `source`: the graph layout's 137-point indices (`Layout.source`); `stored`: the stored layouts of
    the videos read; `where`: the PREPARED folder, for the message."""
    from migfuse.datasets.skeleton_layouts import get_layout, list_layouts

    if source is None:
        return
    for name in sorted(stored):
        have = points_of(name)
        if set(source) <= have:
            continue
        fits = [n for n in list_layouts() if (s := get_layout(n).source) is not None
                and all(set(s) <= points_of(x) for x in stored)]
        of = f" of {where}" if where else ""
        raise UserError(f"layout {graph_layout} needs points that the {name} skeletons{of} "
                        f"do not have (e.g. hands, face): use --layout {' or '.join(fits) or 'coco-17'}"
                        + ("; hands and face need the OpenPose skeletons of `migfuse data prepare` (the pose "
                           "models of `data pose` give coco-17 only)" if name == COCO_17 else ""))
