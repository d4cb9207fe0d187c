"""The MiGA challenge layouts: one folder per video with ``<vid4>_label.csv``.

- ``miga2025`` (Kaggle 2025): ``<vid4>/<vid4>_label.csv`` + ``<vid4>_openpose.xlsx`` (T x 411) and
  ``<vid4>.mp4`` in the RGB archive, inside phase/split folders such as
  ``imigue_data_phase1/datasets/imigue_skeleton_{train,validate}/`` and
  ``imigue_data_phase2/imigue_skeleton_test/``.
- ``miga2023`` (CodaLab 2023): the same with ``<vid4>_light_hand.csv`` (35 joints) instead.

``_label.csv`` rows are ``class,start_frame,end_frame`` without header; clip k = 0-based row. Frames
are read as 0-based like ``labels_20200831.csv`` (see docs/data.md, "frame base"); ``frame_base=1``
shifts them. The split comes from the folder names (``train`` / ``validat`` / ``test`` or
``phase2``); test label files carry placeholder classes, so test labels are unknown. Subjects and
win/lose are not in these files: they come from a ``labels_*.csv`` under the root when there is one,
else from the table of real iMiGUE videos (`migfuse.datasets.video_facts`).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from migfuse.datasets import classes
from migfuse.datasets.csv_files import reading_csv
from migfuse.datasets.layouts.base import LayoutScan, SourceClip, SourceVideo
from migfuse.datasets.layouts.oulu import pick_labels_csv, read_labels_csv
from migfuse.datasets.layouts.skeletons import LightHandCsv, OpenPoseXlsx
from migfuse.datasets.layouts.tree import DatasetTree
from migfuse.datasets.video_facts import video_facts
from migfuse.errors import UserError

log = logging.getLogger(__name__)


def split_of_path(path: Path, root: Path) -> str | None:
    """MiGA split named by the folders between ``root`` and ``path``; None when none is named."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in reversed([p.lower() for p in parts]):
        if "validat" in part or part in ("val", "valid"):
            return "validation"
        if "test" in part or "phase2" in part:
            return "test"
        if "train" in part:
            return "train"
    return None


def read_label_csv(path: Path, *, frame_base: int = 0, known_classes: bool = True) -> list[SourceClip]:
    """Clips of one ``<vid4>_label.csv`` (rows class,start_frame,end_frame; no header).

    ``known_classes`` False keeps raw_class None (test files carry a placeholder class).
    """
    clips: list[SourceClip] = []
    with reading_csv(path, "fix or re-download it"), open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    for k, row in enumerate(rows):
        try:
            cls, start, end = (int(float(x)) for x in row[:3])
        except ValueError:
            if k == 0:
                raise UserError(f"{path} starts with a non-numeric row {row}; _label.csv files have no header, "
                                f"remove it") from None
            raise UserError(f"{path} row {k + 1} is not class,start_frame,end_frame: {row}") from None
        if known_classes and not (1 <= cls <= 31 or cls == classes.RAW_ILLUSTRATIVE):
            raise UserError(f"{path} row {k + 1} has class {cls}, not an iMiGUE class (1..31 or 99); fix the row")
        clips.append(SourceClip(k=k, start_frame=start - frame_base, end_frame=end - frame_base,
                                raw_class=cls if known_classes else None))
    return clips


def read_miga(tree: DatasetTree, layout: str, *, frame_base: int = 0) -> LayoutScan:
    """Read a MiGA 2025 (``layout="miga2025"``) or 2023 (``"miga2023"``) tree into a `LayoutScan`."""
    if not tree.label_csvs:
        raise UserError(f"no <vid4>/<vid4>_label.csv under {tree.root}; the {layout} layout needs them")
    scan = LayoutScan(layout, tree.root, {})
    facts_csv = pick_labels_csv(tree)
    facts = read_labels_csv(facts_csv, scan.problems) if facts_csv else {}
    for vid, label_path in sorted(tree.label_csvs.items()):
        split = split_of_path(label_path, tree.root)
        video = SourceVideo(vid, split_miga=split, label_file=label_path, video_path=tree.videos.get(vid))
        video.clips = read_label_csv(label_path, frame_base=frame_base, known_classes=split != "test")
        if vid in facts:
            video.subject, video.win_lose = facts[vid].subject, facts[vid].win_lose
        else:
            video.subject, video.win_lose = video_facts(int(vid))
        if layout == "miga2025":
            sources = [(tree.openpose_xlsx, OpenPoseXlsx), (tree.light_hand_csvs, LightHandCsv)]
        else:
            sources = [(tree.light_hand_csvs, LightHandCsv), (tree.openpose_xlsx, OpenPoseXlsx)]
        for found, kind in sources:
            if vid in found:
                video.skeleton = kind(found[vid])
                break
        scan.videos[vid] = video
    if split_ids := [v for v, info in scan.videos.items() if info.split_miga is None]:
        scan.problem("no_split_folder", "label files outside train/validate/test folders: split_miga "
                     "follows the challenge rule", video_ids=split_ids)
    if unknown := [v for v, info in scan.videos.items() if info.subject is None]:
        scan.problem("unknown_subject", "videos that are not real iMiGUE videos and have no labels_*.csv row: "
                     "no subject, split_cs empty", video_ids=unknown)
    if facts:
        _compare_frames(scan, facts, facts_csv)
    return scan


def _compare_frames(scan: LayoutScan, facts: dict[str, SourceVideo], csv_path: Path) -> None:
    """Evidence for the frame base: compare the clip frames with the official CSV's (0-based)."""
    offsets: dict[int, int] = {}
    for vid, video in scan.videos.items():
        ref = facts.get(vid)
        if ref is None or len(ref.clips) != len(video.clips):
            continue
        for a, b in zip(video.clips, ref.clips):
            offsets[a.start_frame - b.start_frame] = offsets.get(a.start_frame - b.start_frame, 0) + 1
    if offsets and set(offsets) != {0}:
        scan.problem("frames_differ_from_labels_csv",
                     f"clip start frames minus those of {csv_path.name} (count per offset): {offsets}; "
                     f"if one offset dominates, re-run with --frame-base",
                     offsets={str(k): v for k, v in sorted(offsets.items())})
