"""Prepared skeletons -> OpenPose-style JSON, one file per frame, as OpenPose's ``--write_json`` writes.

``OUT/<vid4>/<vid4>_<frame:012d>_keypoints.json`` for every frame 0..T-1 of each video with a
skeleton: ``{"version": 1.3, "people": [...]}`` with one person where the skeleton's mask is True
(none elsewhere), its points in OpenPose's arrays: ``pose_keypoints_2d`` = BODY_25, flat
[x, y, c] x 25 (75 values), ``face_keypoints_2d`` (70 points), ``hand_left_keypoints_2d`` and
``hand_right_keypoints_2d`` (21 each), in frame pixels. Estimated skeletons are written at their
OpenPose points (`pose_layouts.as_openpose137`): a COCO-17 one fills BODY_25 0, 2-7, 9-18 plus the
derived neck (1) and mid-hip (8); points the model does not give (feet, face, hands of COCO-17) are
0, 0, 0 as OpenPose writes an undetected point. `migfuse data prepare` reads these folders back.

numpy only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from migfuse.atomic_write import write_text
from migfuse.datasets.manifest import POSE_PENDING, Manifest
from migfuse.datasets.openpose import PARTS
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar


@dataclass
class OpenPoseExport:
    """Where the files went: `videos` video id -> frames written; `skipped` video id -> why not."""

    out: Path
    videos: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def frame_json(points: np.ndarray | None) -> str:
    """One frame's OpenPose JSON text: (137, 3) points of one person, or None for nobody."""
    people = []
    if points is not None:
        person: dict = {"person_id": [-1]}
        for key, part in PARTS:
            person[key] = np.asarray(points[part], dtype=np.float64).reshape(-1).tolist()  # exact float32 values
        person.update({"pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
                       "hand_right_keypoints_3d": []})
        people.append(person)
    return json.dumps({"version": 1.3, "people": people})


def export_openpose(prepared: str | Path | Manifest, out: str | Path, *, progress: bool = True) -> OpenPoseExport:
    """Write every video's skeleton of `prepared` as OpenPose JSON frame files under `out` (see above).

    Raises:
        UserError: no video of `prepared` has a skeleton, a skeleton file is unreadable, or `out` is a
            folder that is not empty and not an earlier export (e.g. the PREPARED folder itself).
    """
    manifest = prepared if isinstance(prepared, Manifest) else Manifest.load(prepared)
    result = OpenPoseExport(Path(out))
    _check_out(result.out, manifest)
    with_skeleton = [v for v, info in sorted(manifest.videos.items()) if info.skeleton]
    for vid, info in sorted(manifest.videos.items()):
        if not info.skeleton:
            result.skipped[vid] = (f"{POSE_PENDING}: run `migfuse data pose` for the other shards" if
                                   info.pose_source == POSE_PENDING else "no skeleton (see prepare_report.json)")
    if not with_skeleton:
        raise UserError(f"no video of {manifest.root or 'the manifest'} has a skeleton: run `migfuse data pose` or "
                        "`migfuse data prepare` with the skeleton files first")
    for vid in progress_bar(with_skeleton, desc="openpose json", unit="video", disable=not progress):
        points, mask = manifest.skeleton(vid)
        points = np.asarray(points)  # estimated points are placed at their OpenPose points once, not per frame
        folder = result.out / vid
        for t in range(points.shape[0]):
            text = frame_json(points[t] if mask[t] else None)
            write_text(folder / f"{vid}_{t:012d}_keypoints.json", text, sync=False)
        result.videos[vid] = int(points.shape[0])
    return result


def _check_out(out: Path, manifest: Manifest) -> None:
    """UserError unless `out` is new, empty, or an earlier export of these videos (only <vid4>/ folders of
    the manifest's videos): a PREPARED folder, a dataset root or any other folder is never written into."""
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out} is a file: pass a new folder for the OpenPose JSON files")
    if not out.is_dir():
        return
    strangers = [p.name for p in sorted(out.iterdir()) if not (p.is_dir() and p.name in manifest.videos)]
    if strangers:
        raise UserError(f"OUT {out} is not empty and is not an earlier OpenPose export of these videos (it holds "
                        f"{strangers[0]}): pass a new or empty folder")
