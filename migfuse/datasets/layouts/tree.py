"""One walk over a dataset root that finds every file a layout reader may need, by name pattern.

Walking once matters: an Oulu skeleton folder holds ~21k JSON files per video, and the readers
would otherwise each walk the whole tree.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: file name patterns -> the field of `DatasetTree` they fill (group 1 = video id)
_PATTERNS: dict[str, re.Pattern[str]] = {
    "label_csvs": re.compile(r"^(\d{1,4})_label\.csv$", re.I),
    "openpose_xlsx": re.compile(r"^(\d{1,4})_(?:openpose|2)\.xlsx$", re.I),
    "light_hand_csvs": re.compile(r"^(\d{1,4})_light_hand\.csv$", re.I),
    "videos": re.compile(r"^(\d{1,4})\.(?:mp4|avi|mkv|mov|webm)$", re.I),
}
#: video containers found under a root (any letter case)
VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "mov", "webm")
_KEYPOINTS = re.compile(r"^(\d{1,4})_\d+_keypoints\.json$")
_OULU_LABELS = re.compile(r"^labels_\d+\.csv$", re.I)


@dataclass
class DatasetTree:
    """Files found under a root, each keyed by 4-digit video id (first path in sorted order wins)."""

    root: Path
    label_csvs: dict[str, Path] = field(default_factory=dict)
    openpose_xlsx: dict[str, Path] = field(default_factory=dict)
    light_hand_csvs: dict[str, Path] = field(default_factory=dict)
    videos: dict[str, Path] = field(default_factory=dict)
    json_dirs: dict[str, Path] = field(default_factory=dict)
    oulu_labels: list[Path] = field(default_factory=list)
    raw_label_dirs: list[Path] = field(default_factory=list)
    duplicates: list[tuple[str, str, Path]] = field(default_factory=list)  # (kind, video_id, ignored path)


def scan_tree(root: str | Path) -> DatasetTree:
    """Walk ``root`` (following symlinks, each real folder once) and index the dataset files in it."""
    root = Path(root)
    tree = DatasetTree(root=root)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()
        here = Path(dirpath)
        # an OpenPose output folder: check a few names, not all 21k
        if filenames and any(_KEYPOINTS.match(name) for name in filenames[:50]):
            m = next(_KEYPOINTS.match(n) for n in filenames[:50] if _KEYPOINTS.match(n))
            _put(tree, "json_dirs", f"{int(m.group(1)):04d}", here)
            for name in sorted(filenames):  # a video kept next to its frames (a cheap check per name)
                if (v := _PATTERNS["videos"].match(name)):
                    _put(tree, "videos", f"{int(v.group(1)):04d}", here / name)
            continue
        for name in sorted(filenames):
            for kind, pattern in _PATTERNS.items():
                m = pattern.match(name)
                if m:
                    _put(tree, kind, f"{int(m.group(1)):04d}", here / name)
                    break
            else:
                if _OULU_LABELS.match(name):
                    tree.oulu_labels.append(here / name)
        if here.name == "raw" and here.parent.name.lower() == "label" and any(f.endswith(".txt") for f in filenames):
            tree.raw_label_dirs.append(here)
    return tree


def _put(tree: DatasetTree, kind: str, video_id: str, path: Path) -> None:
    found: dict[str, Path] = getattr(tree, kind)
    if video_id in found:
        tree.duplicates.append((kind, video_id, path))
    else:
        found[video_id] = path
