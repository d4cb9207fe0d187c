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

Variants read (OpenPose's ``doc/output.md`` and its release notes):

- Key names: OpenPose before 1.2 writes ``pose_keypoints``, ``face_keypoints``,
  ``hand_left_keypoints``, ``hand_right_keypoints``; 1.2 and later add ``_2d`` (and ``_3d`` keys and
  ``part_candidates``, which are ignored). Both spellings are read; ``_2d`` wins when both appear.
- Body model, known from the number of body values per person: 75 = BODY_25 (as is); 54 = COCO-18,
  mapped into BODY_25 by the standard correspondence (`COCO18_TO_BODY25`; BODY_25's mid-hip 8 and
  the six foot points 19-24 have no COCO joint and stay undetected); 45 = MPI-15 is refused
  (`UnsupportedBodyModel`: MPI has no nose, eyes or ears, so the head the models rely on is missing).
- Non-finite values (NaN, inf) make that point undetected (0, 0, 0); they are counted.

Several people in one frame: the tracked person is kept. The first frame with people picks the
person with the largest summed body confidence; every later frame picks the person whose body
centre (confidence-weighted mean of the BODY_25 points) is nearest to the centre of the last pick.
Press-conference videos show one seated player, so this follows the player when a second person
(a moderator walking by) appears, instead of jumping to whoever is detected more confidently.

A frame's mask is True when its picked person has a point with confidence > 0.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 137
BODY = slice(0, 25)
FACE = slice(25, 95)
LEFT_HAND = slice(95, 116)
RIGHT_HAND = slice(116, 137)
#: (OpenPose JSON key of 1.2+, slice of the 137 points) in array order; pre-1.2 files drop "_2d"
PARTS: tuple[tuple[str, slice], ...] = (
    ("pose_keypoints_2d", BODY),
    ("face_keypoints_2d", FACE),
    ("hand_left_keypoints_2d", LEFT_HAND),
    ("hand_right_keypoints_2d", RIGHT_HAND),
)

#: BODY_25 index of each COCO-18 joint (nose, neck, R shoulder/elbow/wrist, L shoulder/elbow/wrist,
#: R hip/knee/ankle, L hip/knee/ankle, R eye, L eye, R ear, L ear); OpenPose's BODY_25 keeps the
#: COCO order and inserts mid-hip at 8 and the feet at 19-24.
COCO18_TO_BODY25: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
#: body values per person -> body model name
BODY_MODELS = {75: "BODY_25", 54: "COCO-18", 45: "MPI-15"}

_FRAME_FILE = re.compile(r"_(\d+)_keypoints\.json$")
_PART_SIZES = tuple(3 * (part.stop - part.start) for _, part in PARTS)


class UnsupportedBodyModel(ValueError):
    """The file holds a body model that cannot be mapped into BODY_25 (the whole video is refused)."""


def _part_values(person: dict, key: str) -> list:
    """A part's values under its 1.2+ name or its pre-1.2 name (``pose_keypoints_2d`` / ``pose_keypoints``)."""
    values = person.get(key)
    if values is None:
        values = person.get(key[: -len("_2d")])
    if values is None:
        return []
    if not isinstance(values, list):
        raise ValueError(f"{key} is a {type(values).__name__}, not a list of numbers")
    return values


def _numbers(values: list, key: str) -> np.ndarray:
    """(n, 3) float32 of a flat x, y, c list; ValueError for non-numbers (null counts as NaN)."""
    try:
        array = np.array(values, dtype=np.float32)  # a JSON null becomes NaN
    except (TypeError, ValueError):
        raise ValueError(f"{key} holds values that are not numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{key} is nested, not a flat list of numbers")
    return array.reshape(-1, 3)


def person_array(person: dict) -> np.ndarray:
    """The (137, 3) float32 points of one OpenPose ``people[i]`` record (missing parts are zeros).

    Reads both key spellings and maps a COCO-18 body (see the module docstring). Non-finite values
    are kept here; `clean_points` zeroes them. Raises ValueError for a record without any body or
    part key, a part of the wrong size, or non-numbers; `UnsupportedBodyModel` for an MPI-15 body.
    """
    if not isinstance(person, dict):
        raise ValueError(f"a people entry is a {type(person).__name__}, not an object")
    values = [_part_values(person, key) for key, _ in PARTS]
    if not any(values) and not any(k in person for key, _ in PARTS for k in (key, key[:-3])):
        raise ValueError(f"a person has none of the keys {PARTS[0][0]} / {PARTS[0][0][:-3]} "
                         f"(found {sorted(person)[:6]})")
    if tuple(map(len, values)) == _PART_SIZES:  # the usual case: one conversion for all parts
        return _numbers(values[0] + values[1] + values[2] + values[3], "the keypoint arrays")
    out = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    body = values[0]
    if body and len(body) != _PART_SIZES[0]:
        model = BODY_MODELS.get(len(body))
        if model == "COCO-18":
            out[list(COCO18_TO_BODY25)] = _numbers(body, PARTS[0][0])
        elif model is not None:
            raise UnsupportedBodyModel(
                f"pose_keypoints_2d has {len(body)} values per person ({model}): OpenPose's {model} model is "
                f"not supported (it has no nose, eyes or ears to map into BODY_25); re-run OpenPose with "
                f"--model_pose BODY_25 (or COCO)")
        else:
            raise ValueError(f"pose_keypoints_2d has {len(body)} values, expected 75 (BODY_25) or 54 (COCO-18)")
        values[0] = []  # mapped above
    for (key, part), part_values, size in zip(PARTS, values, _PART_SIZES):
        if not part_values:
            continue
        if len(part_values) != size:
            raise ValueError(f"{key} has {len(part_values)} values, expected {size}")
        out[part] = _numbers(part_values, key)
    return out


def clean_points(points: np.ndarray) -> int:
    """Zero (in place) every point of (..., 3) ``points`` with a non-finite value; returns how many."""
    bad = ~np.isfinite(points).all(axis=-1)
    count = int(bad.sum())
    if count:
        points[bad] = 0.0
    return count


def read_openpose_json(path: str | Path) -> np.ndarray:
    """All people of one OpenPose frame file as a (P, 137, 3) float32 array (P may be 0).

    Non-finite values are returned as they are (see `clean_points`). Raises ValueError (with the
    reason) for invalid JSON, a valid JSON of another structure, a file too large or nested too deep
    to be a frame, and `UnsupportedBodyModel` for MPI-15.
    """
    with open(path, "rb") as f:
        raw = f.read(MAX_FRAME_BYTES + 1)
    if len(raw) > MAX_FRAME_BYTES:
        raise ValueError(f"the file is over {MAX_FRAME_BYTES >> 20} MiB, too large for one frame's keypoints")
    data = _parse(raw)
    if not isinstance(data, dict):
        raise ValueError(f"the file is a JSON {type(data).__name__}, not an object with a 'people' list")
    people = data.get("people", [])
    if people is None:
        people = []
    if not isinstance(people, list):
        raise ValueError(f"'people' is a {type(people).__name__}, not a list")
    if not people:
        return np.zeros((0, NUM_KEYPOINTS, 3), dtype=np.float32)
    return np.stack([person_array(p) for p in people])


#: One person is 137 x 3 numbers (~4 KB of JSON): 64 MiB is thousands of people in one frame.
MAX_FRAME_BYTES = 64 << 20


def _parse(raw: bytes) -> object:
    """json.loads, with a hostile file's RecursionError (arrays nested 200,000 deep) or MemoryError
    turned into the ValueError of any other unreadable frame."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to be an OpenPose frame") from None
    except MemoryError:
        raise ValueError("the JSON needs more memory than this machine has: not an OpenPose frame") from None


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
    empty_frames: int = 0          # frame files with no person (or a person with no detected point)
    multi_person_frames: int = 0
    missing_frames: list[int] = field(default_factory=list)   # frame numbers with no file
    unreadable: list[str] = field(default_factory=list)        # file names that failed to parse
    reasons: dict[str, str] = field(default_factory=dict)      # file name -> why (first 20 files)
    nonfinite_points: int = 0      # points with a NaN / infinite value, stored as undetected
    nonfinite_frames: int = 0
    old_key_names: bool = False    # pre-1.2 names ("pose_keypoints") seen
    body_model: str = ""           # "BODY_25" / "COCO-18" of the first person with a body


def frame_files(folder: str | Path) -> dict[int, Path]:
    """Frame number -> file of the ``*_<frame>_keypoints.json`` files in an OpenPose output folder."""
    out: dict[int, Path] = {}
    for path in Path(folder).iterdir():
        m = _FRAME_FILE.search(path.name)
        if m:
            out[int(m.group(1))] = path
    return out


def _note_variant(path: Path, stats: OpenPoseStats) -> None:
    """Record key spelling and body model of the first person of one file (for the report)."""
    try:
        person = _parse(path.read_bytes())["people"][0]  # type: ignore[index]
        body = person.get("pose_keypoints_2d", person.get("pose_keypoints")) or []
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return
    stats.old_key_names = "pose_keypoints_2d" not in person and "pose_keypoints" in person
    stats.body_model = BODY_MODELS.get(len(body), "") if isinstance(body, list) else ""


def read_openpose_folder(folder: str | Path, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray, OpenPoseStats]:
    """Read one video's OpenPose JSON folder into (T, 137, 3) float32 points and a (T,) bool mask.

    T = last frame number + 1; frames without a file or without a detected person are zeros, mask
    False. Unreadable files (invalid JSON, another structure, parts of a wrong size) count as frames
    without a person and are listed in the stats with their reason.

    Raises:
        UserError: the folder holds no frame file.
        UnsupportedBodyModel: the files hold an MPI-15 body (the video is refused, with the reason).
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
    for frame in progress_bar(range(n_frames), desc=f"openpose {folder.name}", unit="frame",
                              disable=not progress, leave=False):
        path = files.get(frame)
        if path is None:
            stats.missing_frames.append(frame)
            continue
        try:
            people = read_openpose_json(path)
        except UnsupportedBodyModel as e:
            raise UnsupportedBodyModel(f"{path.name}: {e}") from None
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            log.debug("unreadable OpenPose file %s: %s", path, e)
            stats.unreadable.append(path.name)
            if len(stats.reasons) < 20:
                stats.reasons[path.name] = str(e)
            continue
        if not stats.body_model and len(people) and people[:, BODY, 2].any():
            _note_variant(path, stats)
        bad = clean_points(people)
        if bad:
            stats.nonfinite_points += bad
            stats.nonfinite_frames += 1
        if len(people) > 1:
            stats.multi_person_frames += 1
        index = tracker.pick(people)
        if index is None or not (people[index, :, 2] > 0).any():
            stats.empty_frames += 1
            continue
        array[frame] = people[index]
        mask[frame] = True
    return array, mask, stats
