"""The prepared dataset: one row per clip, one row per video, skeleton arrays per video.

A PREPARED/ folder holds (see docs/contracts.md):

- ``manifest.csv``  one row per clip: clip_id, video_id, k, start_frame, end_frame, label, raw_class,
  subject, win_lose, split_cs, split_miga, split_emotion
- ``videos.csv``    one row per video: video_id, subject, win_lose, split_emotion, video_path,
  skeleton, n_frames, rotation, dataset_root (``video_path`` relative to ``dataset_root``; files
  written before these two columns existed hold absolute paths and still load), then what decodes
  from the video file (`video_measure.VideoMeasure`: decoded_frames, origin_s, fps, width, height,
  header_frames, reorder) or why it does not (``unreadable``); older files without them still load
  and extraction measures the videos itself
- ``skeletons/<video_id>.npy`` (T, 137, 3) float32 and ``skeletons/<video_id>.mask.npy`` (T,) bool
- ``prepare_report.json`` (written by the layout readers, not by this module)

Building one by hand (tests, demo data)::

    m = Manifest(clips=[Clip.make("0298", 0, 10, 50, raw_class=8, subject=22)],
                 videos={"0298": VideoInfo("0298", subject=22, win_lose="Win")})
    m.videos["0298"].skeleton = write_skeleton(out, "0298", array, mask)
    m.save(out)

Frames are 0-based at 25 fps, ``start_frame``/``end_frame`` inclusive. ``label`` is the class
index 0..31 or None when unknown (challenge test data).
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

import numpy as np

from migfuse.atomic_write import open_atomic
from migfuse.datasets import classes
from migfuse.datasets.video_measure import VideoMeasure
from migfuse.datasets.csv_files import reading_csv
from migfuse.datasets.pose_layouts import OPENPOSE_137, STORED_LAYOUTS, OpenPoseView, stored_layout_of
from migfuse.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
VIDEOS_FILE = "videos.csv"
REPORT_FILE = "prepare_report.json"
SKELETON_DIR = "skeletons"
#: `pose_source` of a video an unfinished `migfuse data pose` run (another shard, or killed) has not done yet
POSE_PENDING = "not estimated yet"
#: the run identity `migfuse data pose` writes first into its output folder
POSE_RUN_FILE = "pose_run.json"
NUM_KEYPOINTS = 137  # BODY_25 0-24, face 25-94, left hand 95-115, right hand 116-136

SCHEMES = ("split_cs", "split_miga", "split_emotion")


def format_video_id(video_id: int | str) -> str:
    """The 4-digit video id string used everywhere ("298" / 298 -> "0298")."""
    try:
        return f"{int(video_id):04d}"
    except (TypeError, ValueError):
        raise ValueError(f"video id {video_id!r} is not a number") from None


def clip_id_of(video_id: int | str, k: int) -> str:
    """Challenge clip id ``{vid4}_{k}`` (k = 0-based row of the clip in its video)."""
    return f"{format_video_id(video_id)}_{int(k)}"


@dataclass
class Clip:
    """One labelled clip; fields are the columns of manifest.csv."""

    clip_id: str
    video_id: str
    k: int
    start_frame: int
    end_frame: int
    label: int | None = None
    raw_class: int | None = None
    subject: int | None = None
    win_lose: str = ""
    split_cs: str = ""
    split_miga: str = ""
    split_emotion: str = ""

    @classmethod
    def make(cls, video_id: int | str, k: int, start_frame: int, end_frame: int, *,
             raw_class: int | None = None, subject: int | None = None, win_lose: str = "",
             split_miga: str | None = None) -> "Clip":
        """A clip with its id, label and splits derived from the protocol rules in `classes`.

        ``split_miga`` defaults to the rule of `classes.split_miga` (needs a subject).
        """
        vid = format_video_id(video_id)
        label = classes.raw_to_index(raw_class) if raw_class is not None else None
        cs = classes.split_cs(subject) if subject is not None else ""
        if split_miga is None:
            split_miga = classes.split_miga(int(vid), k, subject) if subject is not None else ""
        return cls(clip_id=clip_id_of(vid, k), video_id=vid, k=int(k), start_frame=int(start_frame),
                   end_frame=int(end_frame), label=label, raw_class=raw_class, subject=subject,
                   win_lose=win_lose, split_cs=cs, split_miga=split_miga,
                   split_emotion=classes.split_emotion(int(vid)))

    @property
    def n_frames(self) -> int:
        """Number of frames of the clip (end inclusive)."""
        return self.end_frame - self.start_frame + 1


@dataclass
class VideoInfo:
    """One video; fields are the columns of videos.csv.

    ``video_path`` is the video file (None when not found), relative to ``dataset_root`` when that
    is set (what `prepare` writes), else as given; resolve it with `Manifest.video_path`.
    ``skeleton`` is the .npy path relative to the prepared folder ("" when the video has no usable
    skeleton); ``n_frames`` is the skeleton length. ``rotation`` is the clockwise turn in degrees
    (0, 90, 180, 270) the video's track asks for at display and that decoding applies (None when
    not probed). ``measured`` is what decodes from the file (`VideoMeasure`, None when not
    measured); ``unreadable`` is why the file is not a decodable video ("" when it is or unknown).
    ``skeleton_layout`` is the point layout of the skeleton file (`pose_layouts`: "" = openpose-137);
    ``pose_source`` says where the points come from ("openpose", or "estimated: <models>" written by
    `migfuse data pose`, or POSE_PENDING for a video its unfinished run has not estimated yet; "" =
    openpose in folders written before the column existed).
    """

    video_id: str
    subject: int | None = None
    win_lose: str = ""
    split_emotion: str = ""
    video_path: Path | None = None
    skeleton: str = ""
    n_frames: int | None = None
    rotation: int | None = None
    dataset_root: Path | None = None
    measured: VideoMeasure | None = None
    unreadable: str = ""
    skeleton_layout: str = ""
    pose_source: str = ""

    def __post_init__(self) -> None:
        self.video_id = format_video_id(self.video_id)
        if not self.split_emotion:
            self.split_emotion = classes.split_emotion(int(self.video_id))
        if self.video_path is not None and not isinstance(self.video_path, Path):
            self.video_path = Path(self.video_path)
        if self.dataset_root is not None and not isinstance(self.dataset_root, Path):
            self.dataset_root = Path(self.dataset_root)


CLIP_COLUMNS = [f.name for f in fields(Clip)]
#: videos.csv columns of `VideoInfo.measured` (column -> `VideoMeasure` field)
MEASURE_COLUMNS = {"decoded_frames": "frames", "origin_s": "origin", "fps": "fps", "width": "width",
                   "height": "height", "header_frames": "header_frames", "reorder": "reorder"}
VIDEO_COLUMNS = [f.name for f in fields(VideoInfo) if f.name != "measured"] + list(MEASURE_COLUMNS)
#: videos.csv columns added later: files without them still load
OPTIONAL_VIDEO_COLUMNS = ("rotation", "dataset_root", "unreadable", "skeleton_layout", "pose_source",
                          *MEASURE_COLUMNS)
#: environment variable naming the folder that holds the videos (as ``--video-root``)
VIDEO_ROOT_ENV = "MIGFUSE_VIDEO_ROOT"


def _opt_int(text: str) -> int | None:
    return int(text) if text.strip() != "" else None


def _cell(value: object) -> str:
    return "" if value is None else str(value)


@dataclass
class Manifest:
    """All clips and videos of a prepared dataset. ``root`` is the PREPARED folder (None if unsaved)."""

    clips: list[Clip]
    videos: dict[str, VideoInfo] = field(default_factory=dict)
    root: Path | None = None

    def __post_init__(self) -> None:
        self._by_id = {c.clip_id: c for c in self.clips}
        if len(self._by_id) != len(self.clips):
            seen: set[str] = set()
            dup = next(c.clip_id for c in self.clips if c.clip_id in seen or seen.add(c.clip_id))
            raise ValueError(f"duplicate clip id {dup} in manifest")
        for c in self.clips:  # every clip's video gets a row, so videos.csv is never incomplete
            if c.video_id not in self.videos:
                self.videos[c.video_id] = VideoInfo(c.video_id, subject=c.subject, win_lose=c.win_lose)

    # ----- queries --------------------------------------------------------------------------------
    def clip(self, clip_id: str) -> Clip:
        """The clip with this id (KeyError if absent)."""
        return self._by_id[clip_id]

    def __len__(self) -> int:
        return len(self.clips)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._by_id

    def ids(self, split: str | None = None, scheme: str = "split_miga") -> list[str]:
        """Clip ids in manifest order, optionally only those whose ``scheme`` column equals ``split``."""
        _check_scheme(scheme)
        return [c.clip_id for c in self.clips if split is None or getattr(c, scheme) == split]

    def video_ids(self, split: str | None = None, scheme: str = "split_emotion") -> list[str]:
        """Video ids (sorted), optionally only videos having ``scheme == split``.

        For ``split_emotion`` the video's own column decides; for the clip schemes a video belongs to a
        split when at least one of its clips does.
        """
        _check_scheme(scheme)
        if split is None:
            return sorted(self.videos)
        if scheme == "split_emotion":
            return sorted(v for v, info in self.videos.items() if info.split_emotion == split)
        return sorted({c.video_id for c in self.clips if getattr(c, scheme) == split})

    def clips_of_video(self, video_id: str | int) -> list[Clip]:
        """The clips of one video, in row order (k ascending)."""
        vid = format_video_id(video_id)
        return sorted((c for c in self.clips if c.video_id == vid), key=lambda c: c.k)

    def clips_by_video(self, clip_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Video id -> the given clips of that video in frame order (start frame, then k), videos in
        order of first appearance: how extraction decodes each video once for all its clips."""
        by_video: dict[str, list[Clip]] = {}
        for cid in clip_ids:
            clip = self.clip(cid)
            by_video.setdefault(clip.video_id, []).append(clip)
        return {v: tuple(c.clip_id for c in sorted(cs, key=lambda c: (c.start_frame, c.k)))
                for v, cs in by_video.items()}

    def skeleton(self, video_id: str | int) -> tuple[np.ndarray, np.ndarray]:
        """Skeleton of a video at iMiGUE's 137 OpenPose points: (T, 137, 3) float32 (x, y, conf in
        pixels) and (T,) bool mask (True where a person was found). An OpenPose file is memory-mapped;
        an estimated one (COCO-17, WholeBody) is a memory-mapped `pose_layouts.OpenPoseView` that places
        the frames indexed at their OpenPose points (`np.asarray` gives the whole array). UserError
        when the video has none, or its files are missing, unreadable or of another dtype or shape."""
        vid = format_video_id(video_id)
        info = self.videos.get(vid)
        if info is None:
            raise UserError(f"video {vid} is not in the manifest{self._where()}; check the video id")
        if not info.skeleton and info.pose_source == POSE_PENDING:
            raise UserError(f"video {vid} is {POSE_PENDING} in {self._where().strip() or 'the manifest'}: run "
                            "`migfuse data pose` for the other shards (or run it again to finish), then read it")
        if not info.skeleton:
            raise UserError(f"video {vid} has no skeleton in {self._where().strip() or 'the manifest'}; "
                            f"see prepare_report.json for why")
        if self.root is None:
            raise UserError(f"manifest is not saved, so skeleton of {vid} cannot be read; call save() first")
        stored = stored_layout_of(info.skeleton_layout)
        array, mask = open_skeleton(self.root / info.skeleton, stored)
        return (array if stored == OPENPOSE_137 else OpenPoseView(array, stored)), mask  # type: ignore[return-value]

    def pending_poses(self) -> list[str]:
        """Videos an unfinished `migfuse data pose` run has not estimated yet (sorted ids; [] when none)."""
        return sorted(v for v, info in self.videos.items() if info.pose_source == POSE_PENDING and not info.skeleton)

    def skeleton_layouts(self) -> set[str]:
        """The stored layouts of the videos that have a skeleton (e.g. {"openpose-137"})."""
        return {stored_layout_of(v.skeleton_layout) for v in self.videos.values() if v.skeleton}

    def video_path(self, video_id: str | int, video_root: str | Path | None = None) -> Path | None:
        """The video file of a video, resolved on this machine; None when `prepare` found none.

        A relative ``video_path`` (what `prepare` writes) is looked up under, in order: ``video_root``
        (``--video-root``), the environment variable ``MIGFUSE_VIDEO_ROOT``, and the dataset root
        recorded at prepare time; the first root holding the file wins. When none holds it, the path
        under the first of them is returned (the caller reports the missing file). An absolute path
        (videos.csv of older versions) is used where it exists, else looked up by its file name under
        the roots given now.
        """
        vid = format_video_id(video_id)
        info = self.videos.get(vid)
        if info is None or info.video_path is None:
            return None
        given = _given_roots(video_root)
        if info.video_path.is_absolute():
            if info.video_path.is_file():
                return info.video_path
            moved = (root / info.video_path.name for root in given)
            return next((p for p in moved if p.is_file()), info.video_path)
        roots = given + ([info.dataset_root] if info.dataset_root is not None else [])
        candidates = [root / info.video_path for root in roots] or [info.video_path]
        return next((c for c in candidates if c.is_file()), candidates[0])

    def video_paths(self, video_root: str | Path | None = None) -> dict[str, Path | None]:
        """Video id -> resolved video file (`video_path`) for every video of the manifest.

        Raises:
            UserError: videos have files recorded but not one of them is found: the videos live
                elsewhere on this machine (the message names a missing file and ``--video-root``).
        """
        paths = {vid: self.video_path(vid, video_root) for vid in sorted(self.videos)}
        recorded = {vid: p for vid, p in paths.items() if p is not None}
        if recorded and not any(p.is_file() for p in recorded.values()):
            vid, missing = next(iter(recorded.items()))
            raise UserError(f"none of the {len(recorded)} video files of {self.root or 'the manifest'} is found "
                            f"(e.g. video {vid}: {missing}); pass --video-root DIR (or set {VIDEO_ROOT_ENV}) "
                            f"to the folder that holds the videos")
        return paths

    def video_files(self, video_root: str | Path | None = None) -> dict[str, str | None]:
        """Video id -> video file (str) for every video of the manifest and of its clips (None where
        `data prepare` found none): `video_paths` plus an entry for clips whose video is missing
        from videos.csv, so that they fail with a reason instead of being skipped.

        Raises:
            UserError: as `video_paths` (no video found at all: names ``--video-root``).
        """
        paths = {v: (str(p) if p else None) for v, p in self.video_paths(video_root).items()}
        for c in self.clips:
            paths.setdefault(c.video_id, None)
        return paths

    def video_measures(self) -> dict[str, VideoMeasure | None]:
        """Video id -> what `data prepare` measured of its file (None: not measured, e.g. a folder
        prepared by an older version; extraction then measures it itself, never trusting the header)."""
        return {vid: info.measured for vid, info in self.videos.items()}

    def _where(self) -> str:
        return f" {self.root}" if self.root is not None else ""

    # ----- files ----------------------------------------------------------------------------------
    def save(self, prepared_dir: str | Path) -> Path:
        """Write manifest.csv and videos.csv into ``prepared_dir`` (skeletons via `write_skeleton`)."""
        out = Path(prepared_dir)
        with open_atomic(out / MANIFEST_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CLIP_COLUMNS)
            for c in self.clips:
                w.writerow([_cell(v) for v in asdict(c).values()])
        with open_atomic(out / VIDEOS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(VIDEO_COLUMNS)
            for vid in sorted(self.videos):
                w.writerow(_video_row(self.videos[vid]))
        self.root = out
        return out

    @classmethod
    def load(cls, prepared_dir: str | Path) -> "Manifest":
        """Read a PREPARED folder written by `save` / `migfuse data prepare`."""
        root = Path(prepared_dir)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise UserError(_not_prepared(root))
        clips = [_clip_from_row(row, path, i) for i, row in enumerate(_read_rows(path, CLIP_COLUMNS), 2)]
        videos: dict[str, VideoInfo] = {}
        vpath = root / VIDEOS_FILE
        if vpath.is_file():
            required = [c for c in VIDEO_COLUMNS if c not in OPTIONAL_VIDEO_COLUMNS]
            for i, row in enumerate(_read_rows(vpath, required), 2):
                info = _video_from_row(row, vpath, i, root)
                videos[info.video_id] = info
        try:
            return cls(clips=clips, videos=videos, root=root)
        except ValueError as e:
            raise UserError(f"{path}: {e}; re-run `migfuse data prepare`") from None


def _not_prepared(root: Path) -> str:
    """Why `root` is not a PREPARED folder, and the fix, for the mistakes people make."""
    if root.is_file():
        return f"{root} is a file, not a PREPARED folder: pass the folder `migfuse data prepare --out` wrote"
    if not root.exists():
        return f"no PREPARED folder at {root}: run `migfuse data prepare --root DATA --out {root}` (or fix the path)"
    if (root / POSE_RUN_FILE).is_file():
        return (f"{root} is an unfinished `migfuse data pose` output (no {MANIFEST_FILE} yet): run the same "
                f"`migfuse data pose --out {root}` command again to finish it")
    if (root / "zarr.json").is_file() or root.suffix == ".zarr":
        return f"{root} is a token cache, not a PREPARED folder: did you swap --cache and --data?"
    return (f"no {MANIFEST_FILE} in {root}: it is not a PREPARED folder; "
            "run `migfuse data prepare --root DATA --out DIR`")


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def _read_rows(path: Path, columns: list[str]) -> Iterable[dict[str, str]]:
    with reading_csv(path, "re-run `migfuse data prepare`"), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks columns {', '.join(missing)}; re-run `migfuse data prepare`")
        yield from reader


def _clip_from_row(row: dict[str, str], path: Path, line: int) -> Clip:
    try:
        return Clip(clip_id=row["clip_id"], video_id=format_video_id(row["video_id"]), k=int(row["k"]),
                    start_frame=int(row["start_frame"]), end_frame=int(row["end_frame"]),
                    label=_opt_int(row["label"]), raw_class=_opt_int(row["raw_class"]),
                    subject=_opt_int(row["subject"]), win_lose=row["win_lose"], split_cs=row["split_cs"],
                    split_miga=row["split_miga"], split_emotion=row["split_emotion"])
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} line {line} is invalid ({e}); re-run `migfuse data prepare`") from None


def _video_from_row(row: dict[str, str], path: Path, line: int, root: Path) -> VideoInfo:
    try:
        video_path = Path(row["video_path"]) if row["video_path"] else None
        dataset_root = Path(row["dataset_root"]) if row.get("dataset_root") else None
        if video_path is not None and not video_path.is_absolute() and dataset_root is None:
            video_path = root / video_path  # a hand-written file: relative to the PREPARED folder
        return VideoInfo(video_id=row["video_id"], subject=_opt_int(row["subject"]), win_lose=row["win_lose"],
                         split_emotion=row["split_emotion"], video_path=video_path,
                         skeleton=row["skeleton"], n_frames=_opt_int(row["n_frames"]),
                         rotation=_opt_int(row.get("rotation") or ""), dataset_root=dataset_root,
                         measured=_measured_from_row(row), unreadable=row.get("unreadable") or "",
                         skeleton_layout=_stored_layout_cell(row.get("skeleton_layout") or ""),
                         pose_source=row.get("pose_source") or "")
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} line {line} is invalid ({e}); re-run `migfuse data prepare`") from None


def _stored_layout_cell(text: str) -> str:
    """The videos.csv skeleton_layout cell as written ("" stays ""), checked to name a known layout."""
    stored_layout_of(text)
    return text


def _video_row(info: VideoInfo) -> list[str]:
    facts = info.measured
    return [_cell(getattr(facts, MEASURE_COLUMNS[name], None) if name in MEASURE_COLUMNS else getattr(info, name))
            for name in VIDEO_COLUMNS]


def _measured_from_row(row: dict[str, str]) -> VideoMeasure | None:
    """The `VideoMeasure` of a videos.csv row; None when the row has none (not measured, unreadable)."""
    if not (row.get("decoded_frames") or "").strip():
        return None
    header = _opt_int(row.get("header_frames") or "")
    return VideoMeasure(frames=int(row["decoded_frames"]), origin=float(row["origin_s"]), fps=float(row["fps"]),
                        width=int(row["width"]), height=int(row["height"]), header_frames=header,
                        reorder=int(row.get("reorder") or 0), rotation=_opt_int(row.get("rotation") or "") or 0)


def _given_roots(video_root: str | Path | None) -> list[Path]:
    """The video roots given for this run: ``video_root``, then ``$MIGFUSE_VIDEO_ROOT``."""
    roots = [Path(video_root).expanduser()] if video_root else []
    if env := os.environ.get(VIDEO_ROOT_ENV, "").strip():
        roots.append(Path(env).expanduser())
    return roots


def _mask_path(npy: Path) -> Path:
    return npy.with_name(npy.name[: -len(".npy")] + ".mask.npy")


def open_skeleton(path: Path, layout: str = OPENPOSE_137) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a skeleton ``.npy`` and its ``.mask.npy``: (T, K, 3) float32 and (T,) bool, K the
    points of the stored `layout` (137 for OpenPose).

    Reads only the headers (cheap). UserError naming the file when either is missing, cut short,
    not memory-mappable (Python objects) or of another dtype or shape."""
    fix = ("re-run `migfuse data prepare`" if layout == OPENPOSE_137 else  # an estimated one: redo that video
           f"delete {path.parent.parent / 'pose' / (path.name[:-4] + '.json')} and rerun `migfuse data pose`")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        mask = np.load(_mask_path(path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:  # a .npy of Python objects: "Array can't be memory-mapped"
        raise UserError(f"cannot read skeleton {path} ({e}); {fix}") from None
    if array.dtype != np.float32 or mask.dtype != bool:
        raise UserError(f"skeleton {path} holds {array.dtype} / mask {mask.dtype}, not float32 / bool; {fix}")
    points = STORED_LAYOUTS[layout]
    if array.ndim != 3 or array.shape[1:] != (points, 3) or mask.shape != array.shape[:1]:
        raise UserError(f"skeleton {path} has shape {array.shape} / mask {mask.shape}, expected "
                        f"(T, {points}, 3) / (T,) for layout {layout}; {fix}")
    return array, mask


def write_skeleton(prepared_dir: str | Path, video_id: str | int, array: np.ndarray,
                   mask: np.ndarray | None = None, layout: str = OPENPOSE_137) -> str:
    """Write a video's skeleton (T, K, 3) float32 and mask (T,) bool under PREPARED/skeletons/, K the
    points of the stored `layout` (137 for OpenPose; record the layout in ``VideoInfo.skeleton_layout``).

    ``mask`` defaults to "any keypoint has confidence > 0". Returns the path relative to
    ``prepared_dir`` to store in ``VideoInfo.skeleton``.
    """
    array = np.asarray(array, dtype=np.float32)
    points = STORED_LAYOUTS[layout]
    if array.ndim != 3 or array.shape[1:] != (points, 3):
        raise ValueError(f"skeleton array must be (T, {points}, 3) for layout {layout}, got {array.shape}")
    if mask is None:
        mask = (array[:, :, 2] > 0).any(axis=1)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != array.shape[:1]:
        raise ValueError(f"mask must be ({array.shape[0]},), got {mask.shape}")
    rel = f"{SKELETON_DIR}/{format_video_id(video_id)}.npy"
    path = Path(prepared_dir) / rel
    for where, values in ((path, array), (_mask_path(path), mask)):
        with open_atomic(where, "wb") as f:
            np.save(f, values)
    return rel
