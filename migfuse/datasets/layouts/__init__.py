"""Dataset layouts: find which one a download uses and read its labels and skeleton sources.

=========  =====================================================================================
layout     recognised by
=========  =====================================================================================
oulu       a ``labels_*.csv`` (``Label/labels_20200831.csv``) and no ``<vid4>_label.csv`` files
miga2025   ``<vid4>/<vid4>_label.csv`` files next to ``<vid4>_openpose.xlsx`` (or with no skeleton)
miga2023   ``<vid4>/<vid4>_label.csv`` files next to ``<vid4>_light_hand.csv`` and no ``.xlsx``
=========  =====================================================================================
"""
from __future__ import annotations

from pathlib import Path

from migfuse.datasets.layouts.base import LayoutScan, SkeletonRead, SourceClip, SourceVideo
from migfuse.datasets.layouts.tree import DatasetTree, scan_tree
from migfuse.errors import UserError

LAYOUTS = ("oulu", "miga2025", "miga2023")
_KIND_WORDS = {"videos": "video files", "json_dirs": "OpenPose JSON folders", "openpose_xlsx": "xlsx skeletons",
               "label_csvs": "_label.csv files", "light_hand_csvs": "_light_hand.csv files"}

__all__ = ["LAYOUTS", "DatasetTree", "LayoutScan", "SkeletonRead", "SourceClip", "SourceVideo",
           "detect_layout", "read_layout", "scan_tree"]


def detect_layout(tree: DatasetTree) -> str:
    """The layout of an indexed tree; UserError naming what was looked for when none matches."""
    if tree.label_csvs:
        if tree.light_hand_csvs and not tree.openpose_xlsx:
            return "miga2023"
        return "miga2025"
    if tree.oulu_labels:
        return "oulu"
    raise UserError(
        f"{tree.root} matches no dataset layout: looked for Label/labels_20200831.csv (oulu) and "
        f"<vid4>/<vid4>_label.csv (miga2025 with _openpose.xlsx, miga2023 with _light_hand.csv); "
        f"point --root at the folder that holds them")


def read_layout(root: str | Path, layout: str = "auto", *, frame_base: int = 0) -> LayoutScan:
    """Index ``root``, pick the layout (``auto`` detects it) and read labels + skeleton sources."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root {root} is not a folder; pass the folder of the unpacked download")
    if layout not in ("auto", *LAYOUTS):
        raise UserError(f"unknown layout {layout!r}; use auto, {', '.join(LAYOUTS)}")
    tree = scan_tree(root)
    if layout == "auto":
        layout = detect_layout(tree)
    if layout == "oulu":
        from migfuse.datasets.layouts.oulu import read_oulu

        scan = read_oulu(tree)
    else:
        from migfuse.datasets.layouts.miga import read_miga

        scan = read_miga(tree, layout, frame_base=frame_base)
    for kind, vid, path in tree.duplicates:
        kept = getattr(tree, kind)[vid]
        what = _KIND_WORDS.get(kind, kind)
        scan.problem("duplicate_file", f"two {what} for video {vid}: kept {kept}, ignored {path}; "
                     f"remove or rename one", video_id=vid, path=str(path), kept=str(kept))
    return scan
