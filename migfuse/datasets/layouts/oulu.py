"""The Oulu release layout: ``Label/labels_20200831.csv`` + per-video skeletons + videos anywhere.

- Labels: the official CSV (header ``video_id,label_id,start_time,start_frame,end_time,end_frame,
  class,subject_id,...,win_or_lose``), frames 0-based at 25 fps, clip k = label_id - 1. The CSV is
  the authority (also for the subjects of videos 85/86). ``Label/raw/<id>.txt`` files, when present,
  are only compared with it: they come from another annotation pass and differ for many videos.
- Skeletons: an OpenPose JSON folder ``<id>/<id>_<12-digit frame>_keypoints.json`` or a spreadsheet
  ``<vid4>_openpose.xlsx`` / ``<vid4>_2.xlsx`` (T x 411) anywhere under the root.
- Videos: ``<vid4>.<ext>`` or ``<id>.<ext>`` (mp4, avi, mkv, mov, webm; any letter case) anywhere
  under the root, also inside a skeleton folder.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from migfuse.datasets import classes
from migfuse.datasets.csv_files import reading_csv
from migfuse.datasets.layouts.base import LayoutScan, SourceClip, SourceVideo
from migfuse.datasets.layouts.skeletons import LightHandCsv, OpenPoseFolder, OpenPoseXlsx
from migfuse.datasets.layouts.tree import DatasetTree
from migfuse.errors import UserError

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame", "class",
                 "subject_id", "win_or_lose")


def pick_labels_csv(tree: DatasetTree) -> Path | None:
    """The official label CSV of a tree: ``labels_20200831.csv`` in a ``Label`` folder first."""
    if not tree.oulu_labels:
        return None
    return sorted(tree.oulu_labels, key=lambda p: (p.name.lower() != "labels_20200831.csv",
                                                  p.parent.name.lower() != "label", str(p)))[0]


def read_labels_csv(path: Path, problems: list[dict] | None = None) -> dict[str, SourceVideo]:
    """Videos with their clips, subject and win/lose from the official label CSV.

    Rows whose ``label_id`` is below 1 (the id is 1-based; 0 would make a clip id ``<vid4>_-1``)
    are skipped. A video's ``win_lose`` is set only where its rows agree on Win or Lose: a value other
    than the known spellings (`classes.WIN_LOSE_SPELLINGS`) in any row, or rows saying both, leave it
    empty (empty cells are ignored). Each of these is appended to ``problems`` when given.
    UserError for a row that is not numbers where numbers belong, or missing columns.
    """
    videos: dict[str, SourceVideo] = {}
    bad_ids: list[str] = []
    bad_win_lose: dict[str, str] = {}
    win_lose_values: dict[str, set[str]] = {}
    with reading_csv(path, "fix or re-download it"), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks the columns {', '.join(missing)}; "
                            f"pass the official Label/labels_20200831.csv")
        for line, row in enumerate(reader, 2):
            try:
                vid = f"{int(row['video_id']):04d}"
                label_id = int(row["label_id"])
                clip = SourceClip(k=label_id - 1, start_frame=int(row["start_frame"]),
                                  end_frame=int(row["end_frame"]), raw_class=int(float(row["class"])))
                subject = int(row["subject_id"])
            except (TypeError, ValueError) as e:
                raise UserError(f"{path} line {line} is not a valid label row ({e}); fix or re-download it") from None
            if label_id < 1:
                bad_ids.append(f"line {line} (video {vid}, label_id {label_id})")
                continue
            raw_win_lose = (row["win_or_lose"] or "").strip()
            if classes.normalise_win_lose(raw_win_lose) is None:
                bad_win_lose.setdefault(vid, raw_win_lose)
            win_lose_values.setdefault(vid, set()).add(classes.normalise_win_lose(raw_win_lose) or "")
            video = videos.setdefault(vid, SourceVideo(vid, subject=subject, label_file=path))
            video.clips.append(clip)
    # a video's emotion label is set only where its rows agree on Win or Lose (empty cells say nothing)
    conflicting = sorted(v for v, values in win_lose_values.items() if len(values - {""}) > 1)
    for vid, values in win_lose_values.items():
        if vid not in bad_win_lose and vid not in conflicting:
            videos[vid].win_lose = max(values)  # the one known value, or "" when every cell is empty
    if problems is not None and bad_ids:
        problems.append({"kind": "bad_label_id", "detail": f"{len(bad_ids)} rows of {path.name} have a label_id "
                         f"below 1 (label_id is 1-based); rows skipped: {', '.join(bad_ids[:5])}",
                         "rows": bad_ids})
    if problems is not None and bad_win_lose:
        values = sorted(set(bad_win_lose.values()))
        problems.append({"kind": "unknown_win_lose", "detail": f"{len(bad_win_lose)} videos in {path.name} have a "
                         f"win_or_lose value that is not Win or Lose ({', '.join(map(repr, values[:5]))}); their "
                         f"emotion label is left empty", "video_ids": sorted(bad_win_lose)})
    if problems is not None and conflicting:
        problems.append({"kind": "conflicting_win_lose", "detail": f"{len(conflicting)} videos in {path.name} have "
                         f"rows saying Win and rows saying Lose ({', '.join(conflicting[:5])}"
                         f"{' ...' if len(conflicting) > 5 else ''}); their emotion label is left empty",
                         "video_ids": conflicting})
    return videos


def _compare_raw_labels(scan: LayoutScan, raw_dirs: list[Path], csv_path: Path) -> None:
    differ: list[str] = []
    files = [p for d in raw_dirs for p in sorted(d.glob("*.txt"))]
    for path in files:
        try:
            vid = f"{int(path.stem):04d}"
            rows = [line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip()]
            raw = [(float(r[0]), float(r[1]), int(float(r[2]))) for r in rows]
        except (ValueError, IndexError):
            differ.append(path.stem)
            continue
        video = scan.videos.get(vid)
        clips = video.clips if video else []
        # the CSV's frames are floor(seconds * 25) for all 18,498 rows (not rounded)
        same = len(raw) == len(clips) and all(
            math.floor(s * 25) == c.start_frame and math.floor(e * 25) == c.end_frame and cls == c.raw_class
            for (s, e, cls), c in zip(raw, clips))
        if not same:
            differ.append(vid)
    if differ:
        scan.problem("raw_labels_differ",
                     f"{len(differ)} of {len(files)} Label/raw/*.txt files differ from {csv_path.name} "
                     f"(clip count, start or class); the CSV is used", video_ids=sorted(differ))


def read_oulu(tree: DatasetTree) -> LayoutScan:
    """Read an Oulu-layout tree into a `LayoutScan` (skeletons are found, not read)."""
    csv_path = pick_labels_csv(tree)
    if csv_path is None:
        raise UserError(f"no labels_*.csv under {tree.root}; the Oulu layout needs Label/labels_20200831.csv")
    problems: list[dict] = []
    scan = LayoutScan("oulu", tree.root, read_labels_csv(csv_path, problems), problems=problems)
    if not scan.videos:  # else prepare writes an empty manifest and exits 0
        why = ("every row has a label_id below 1 (label_id is 1-based)" if any(p["kind"] == "bad_label_id"
               for p in problems) else "it has a header but no label rows")
        raise UserError(f"{csv_path} holds no clips: {why}; pass the official Label/labels_20200831.csv "
                        f"(18,498 rows) or fix the file")
    log.info("oulu layout: %s, %d videos", csv_path, len(scan.videos))
    if len(tree.oulu_labels) > 1:
        scan.problem("duplicate_file", f"several label CSVs; used {csv_path}",
                     ignored=[str(p) for p in tree.oulu_labels if p != csv_path])
    for vid, video in scan.videos.items():
        video.video_path = tree.videos.get(vid)
        if vid in tree.json_dirs:
            video.skeleton = OpenPoseFolder(tree.json_dirs[vid])
        elif vid in tree.openpose_xlsx:
            video.skeleton = OpenPoseXlsx(tree.openpose_xlsx[vid])
        elif vid in tree.light_hand_csvs:
            video.skeleton = LightHandCsv(tree.light_hand_csvs[vid])
    stray = sorted((set(tree.json_dirs) | set(tree.openpose_xlsx) | set(tree.videos)) - set(scan.videos))
    if stray:
        scan.problem("unlabelled_video", "skeletons or videos of videos the label CSV does not list (ignored)",
                     video_ids=stray)
    if tree.raw_label_dirs:
        _compare_raw_labels(scan, tree.raw_label_dirs, csv_path)
    return scan
