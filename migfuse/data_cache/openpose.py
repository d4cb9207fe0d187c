"""OpenPose output -> one (T, 137, 3) skeleton per video, plus the 137-point layout.

The 137 keypoints (x, y, confidence in pixels) are OpenPose's BODY_25 + face-70 + left hand-21 +
right hand-21, in the order of the MiGA 2025 ``_openpose.xlsx`` files:

=========  =======  ==========================================
points     count    OpenPose array
=========  =======  ==========================================
0-24       25       ``pose_keypoints_2d`` (BODY_25)
25-94      70       ``face_keypoints_2d``
95-115     21       ``hand_left_keypoints_2d``
116-136    21       ``hand_right_keypoints_2d``
=========  =======  ==========================================

Undetected points are (0, 0, 0), as OpenPose writes them.

Several people in one frame: the tracked person is kept. The first frame with people picks the
person with the largest summed body confidence; every later frame picks the person whose body
centre (confidence-weighted mean of the BODY_25 points) is nearest to the centre of the last pick.
Press-conference videos show one seated player, so this follows the player when a second person
(a moderator walking by) appears, instead of jumping to whoever is detected more confidently.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from migfuse.errors import UserError

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 137
BODY = slice(0, 25)
FACE = slice(25, 95)
LEFT_HAND = slice(95, 116)
RIGHT_HAND = slice(116, 137)
#: (OpenPose JSON key, slice of the 137 points) in array order
PARTS: tuple[tuple[str, slice], ...] = (
    ("pose_keypoints_2d", BODY),
    ("face_keypoints_2d", FACE),
    ("hand_left_keypoints_2d", LEFT_HAND),
    ("hand_right_keypoints_2d", RIGHT_HAND),
)

_FRAME_FILE = re.compile(r"_(\d+)_keypoints\.json$")


_PART_SIZES = tuple(3 * (part.stop - part.start) for _, part in PARTS)


def person_array(person: dict) -> np.ndarray:
    """The (137, 3) float32 points of one OpenPose ``people[i]`` record (missing parts are zeros)."""
    values = [person.get(key) or [] for key, _ in PARTS]
    if tuple(map(len, values)) == _PART_SIZES:  # the usual case: one conversion for all parts
        return np.array(values[0] + values[1] + values[2] + values[3], dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
    out = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for (key, part), part_values, size in zip(PARTS, values, _PART_SIZES):
        if len(part_values) == size:
            out[part] = np.asarray(part_values, dtype=np.float32).reshape(-1, 3)
        elif part_values:
            raise ValueError(f"{key} has {len(part_values)} values, expected {size}")
    return out


def read_openpose_json(path: str | Path) -> np.ndarray:
    """All people of one OpenPose frame file as a (P, 137, 3) float32 array (P may be 0)."""
    with open(path, "rb") as f:
        data = json.loads(f.read())
    people = data.get("people", [])
    if not people:
        return np.zeros((0, NUM_KEYPOINTS, 3), dtype=np.float32)
    return np.stack([person_array(p) for p in people])


def body_centre(points: np.ndarray) -> np.ndarray | None:
    """Confidence-weighted mean (x, y) of the BODY_25 points of (137, 3) points; None if no body."""
    body = points[BODY]
    weight = body[:, 2]
    total = float(weight.sum())
    if total <= 0:
        return None
    return (body[:, :2] * weight[:, None]).sum(axis=0) / total


class PersonTracker:
    """Picks one person per frame by the rule in the module docstring."""

    def __init__(self) -> None:
        self.last: np.ndarray | None = None  # (137, 3) points of the last pick with a body

    def pick(self, people: np.ndarray) -> int | None:
        """Index of the tracked person among (P, 137, 3) ``people``; None when P == 0."""
        if len(people) == 0:
            return None
        index = 0
        if len(people) > 1:
            previous = body_centre(self.last) if self.last is not None else None
            centres = [body_centre(p) for p in people]
            if previous is not None and any(c is not None for c in centres):
                distances = [np.inf if c is None else float(np.linalg.norm(c - previous)) for c in centres]
                index = int(np.argmin(distances))
            else:
                index = int(np.argmax(people[:, BODY, 2].sum(axis=1)))
        if people[index, BODY, 2].any():  # centres are only computed when several people appear
            self.last = people[index]
        return index


@dataclass
class OpenPoseStats:
    """What reading one OpenPose folder found (goes to prepare_report.json)."""

    files: int = 0
    frames: int = 0
    empty_frames: int = 0          # frame files with no person
    multi_person_frames: int = 0
    missing_frames: list[int] = field(default_factory=list)   # frame numbers with no file
    unreadable: list[str] = field(default_factory=list)        # file names that failed to parse


def frame_files(folder: str | Path) -> dict[int, Path]:
    """Frame number -> file of the ``*_<frame>_keypoints.json`` files in an OpenPose output folder."""
    out: dict[int, Path] = {}
    for path in Path(folder).iterdir():
        m = _FRAME_FILE.search(path.name)
        if m:
            out[int(m.group(1))] = path
    return out


def read_openpose_folder(folder: str | Path, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray, OpenPoseStats]:
    """Read one video's OpenPose JSON folder into (T, 137, 3) float32 points and a (T,) bool mask.

    T = last frame number + 1; frames without a file or without a person are zeros, mask False.
    Unreadable files count as frames without a person and are listed in the stats. UserError when
    the folder holds no frame file.
    """
    folder = Path(folder)
    files = frame_files(folder)
    if not files:
        raise UserError(f"no *_<frame>_keypoints.json files in {folder}; point --root at the OpenPose output")
    stats = OpenPoseStats(files=len(files))
    n_frames = max(files) + 1
    stats.frames = n_frames
    array = np.zeros((n_frames, NUM_KEYPOINTS, 3), dtype=np.float32)
    mask = np.zeros(n_frames, dtype=bool)
    tracker = PersonTracker()
    for frame in tqdm(range(n_frames), desc=f"openpose {folder.name}", unit="frame",
                      disable=None if progress else True, leave=False):
        path = files.get(frame)
        if path is None:
            stats.missing_frames.append(frame)
            continue
        try:
            people = read_openpose_json(path)
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            log.debug("unreadable OpenPose file %s: %s", path, e)
            stats.unreadable.append(path.name)
            continue
        if len(people) > 1:
            stats.multi_person_frames += 1
        index = tracker.pick(people)
        if index is None:
            stats.empty_frames += 1
            continue
        array[frame] = people[index]
        mask[frame] = True
    return array, mask, stats
