"""Prepared skeletons in pyskl's 2D annotation format, so ST-GCN++ / PoseC3D train on migfuse's manifest.

    from migfuse.datasets.pyskl import export_pyskl
    result = export_pyskl("prepared", "imigue_coco.pkl", layout="coco-17")

The file is what pyskl's `PoseDataset` (and mmaction2 1.x's) reads (pyskl `tools/data/README.md`,
`pyskl/datasets/pose_dataset.py`): a pickled dict

    split:        {split name: [frame_dir, ...]}   e.g. {"train": [...], "validation": [...], "test": [...]}
    annotations:  one dict per clip, in manifest order:
        frame_dir       the migfuse clip id, e.g. "0054_0" (what `migfuse fuse import` keys scores by)
        label           the class index 0..31 (-1 for a clip without a label)
        img_shape       (height, width) of the frames, pixels (the video's measured size, displayed
                        upright); original_shape the same
        total_frames    T, the clip's frames that the skeleton file holds
        keypoint        (M=1, T, V, 2) float32, x, y in pixels of the layout's V joints
        keypoint_score  (M=1, T, V) float32, OpenPose confidence (0 where no person was found)

No torch, no pyskl: numpy arrays and builtins only, so the file also opens with plain `pickle`.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from migfuse.atomic_write import open_atomic
from migfuse.datasets.manifest import SCHEMES, Manifest
from migfuse.datasets.pose_layouts import check_readable
from migfuse.datasets.skeleton_layouts import get_layout, list_layouts
from migfuse.errors import UserError

log = logging.getLogger(__name__)

#: iMiGUE's press-conference videos are 1280x720 (MM-Gesture's pyskl configs assume the same): the
#: size of a video `data prepare` did not measure (no file, or an older PREPARED folder).
DEFAULT_IMG_SHAPE = (720, 1280)


@dataclass(frozen=True)
class PysklExport:
    """What `export_pyskl` wrote: the file, the layout, clips per split, clips left out (id -> why)."""

    path: Path
    layout: str
    num_joints: int
    clips: int
    splits: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)


def layouts_for_export() -> list[str]:
    """Layouts that say which of the 137 OpenPose points each joint is (the ones that can be exported)."""
    return [name for name in list_layouts() if get_layout(name).source is not None]


def export_pyskl(
    prepared: str | Path | Manifest,
    out: str | Path,
    layout: str = "coco-17",
    scheme: str = "split_miga",
    img_shape: tuple[int, int] | None = None,
) -> PysklExport:
    """Write the prepared skeletons of every clip as a pyskl 2D annotation pickle.

    prepared: the PREPARED folder (or its Manifest) written by `migfuse data prepare`.
    out: the .pkl to write (atomically).
    layout: which joints to keep (`layouts_for_export()`): "coco-17" (pyskl/mmaction2 `coco`, what
        PoseC3D's flip and ST-GCN++'s 2D configs expect), "openpose-18" (pyskl `openpose`),
        "openpose22" (the MiGA 2023 baselines) or "imigue" (55 joints; needs a custom pyskl graph).
    scheme: the manifest column whose values name the splits (split_miga, split_cs, split_emotion).
    img_shape: (height, width) in pixels written as img_shape / original_shape for every clip;
        None: each video's size as `data prepare` measured it (upright), else `DEFAULT_IMG_SHAPE`.
    Clips without skeleton frames (video without a skeleton, clip past its end) are left out and
    listed in `skipped`. UserError for an unknown layout or scheme, when no clip has a skeleton, or when
    a skeleton file of the manifest is missing or unreadable (e.g. a .npy of Python objects).
    """
    manifest = prepared if isinstance(prepared, Manifest) else Manifest.load(prepared)
    if scheme not in SCHEMES:
        raise UserError(f"unknown split scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    lay = get_layout(layout)
    if lay.source is None:
        raise UserError(f"layout {lay.name} is not read from OpenPose points; use one of "
                        f"{', '.join(layouts_for_export())}")
    check_readable(lay.name, lay.source, manifest.skeleton_layouts(), str(manifest.root or "the manifest"))
    source = np.asarray(lay.source)

    def shape_of(video_id: str) -> tuple[int, int]:
        if img_shape is not None:
            return int(img_shape[0]), int(img_shape[1])
        facts = manifest.videos[video_id].measured
        return (facts.height, facts.width) if facts is not None else DEFAULT_IMG_SHAPE

    annotations: list[dict] = []
    splits: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    opened: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    for clip in manifest.clips:
        if clip.video_id not in opened:
            try:
                opened[clip.video_id] = manifest.skeleton(clip.video_id)
            except UserError as e:
                info = manifest.videos.get(clip.video_id)
                if info is not None and info.skeleton:  # there but unreadable: refused, its clips never dropped
                    raise
                opened[clip.video_id] = str(e)
        video = opened[clip.video_id]
        if isinstance(video, str):
            skipped[clip.clip_id] = video
            continue
        skeleton = video[0]
        lo, hi = max(clip.start_frame, 0), min(clip.end_frame + 1, skeleton.shape[0])
        if hi <= lo:
            skipped[clip.clip_id] = (f"frames {clip.start_frame}-{clip.end_frame} are past the skeleton's "
                                     f"{skeleton.shape[0]} frames")
            continue
        points = np.asarray(skeleton[lo:hi][:, source], dtype=np.float32)  # (T, V, 3)
        height, width = shape_of(clip.video_id)
        annotations.append({
            "frame_dir": clip.clip_id,
            "label": -1 if clip.label is None else int(clip.label),
            "img_shape": (height, width),
            "original_shape": (height, width),
            "total_frames": int(hi - lo),
            "keypoint": np.ascontiguousarray(points[None, :, :, :2]),
            "keypoint_score": np.ascontiguousarray(points[None, :, :, 2]),
        })
        split = getattr(clip, scheme)
        if split:
            splits.setdefault(split, []).append(clip.clip_id)
    if not annotations:
        where = manifest.root or "the manifest"
        raise UserError(f"no clip of {where} has skeleton frames; prepare the dataset with its skeleton files")
    out = Path(out)
    with open_atomic(out, "wb") as f:
        pickle.dump({"split": splits, "annotations": annotations}, f, protocol=4)
    if skipped:
        log.warning("%d clips have no skeleton frames and were left out, e.g. %s", len(skipped),
                    ", ".join(list(skipped)[:3]))
    return PysklExport(out, lay.name, lay.num_node, len(annotations), {k: len(v) for k, v in splits.items()},
                       skipped)
