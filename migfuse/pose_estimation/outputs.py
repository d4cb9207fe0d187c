"""What `data pose` writes into its output PREPARED folder, and how a run finds what is done.

OUT/ (a PREPARED folder every skeleton reader takes, beside the input one, which is never touched):

- ``skeletons/<vid>.npy`` (T, K, 3) float32 x, y (frame pixels), confidence of the main subject, K the
  estimator's layout (17 coco-17, 133 coco-wholebody-133); ``<vid>.mask.npy`` (T,) bool, True where
  the subject was found. T is the video's decoded length (25 fps frames); frames not estimated (outside
  the clips with ``--scope clips``) or without anybody: all zeros and mask False.
- ``pose/<vid>.json`` the video's status: done (with its counts) or failed (with the reason). It is
  written last, after the arrays (each written atomically): a video is done only when its status says
  so and the arrays are there, so a run killed at any point resumes without taking a half video as done.
- ``pose_run.json`` the run's identity: the estimator's provenance (models, sha256, thresholds, input
  size, decoding; not the models' paths, so moved folders resume), the scope and the tracker
  settings. A later run into OUT must have the same. pose_report.json keeps the full provenance.
- ``manifest.csv``, ``videos.csv`` (skeleton, skeleton_layout and pose_source per video),
  ``prepare_report.json`` (the input's report with ``pose_sources`` per video and a ``pose`` summary)
  and ``pose_report.json`` (the run report: videos done / failed with reasons / not yet done, frames
  without a person, mean confidence, ambiguous clips), rewritten from the statuses at the end of every
  run (every shard), so the last shard to finish writes the whole picture.

numpy only.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from migfuse.atomic_write import write_text
from migfuse.datasets.manifest import (POSE_PENDING, POSE_RUN_FILE, REPORT_FILE, Manifest, format_video_id,
                                       write_skeleton)
from migfuse.errors import UserError

STATUS_DIR = "pose"
RUN_FILE = POSE_RUN_FILE
RUN_REPORT = "pose_report.json"
#: `data prepare` problems about the OpenPose files, left out of OUT's prepare_report.json
_OPENPOSE_PROBLEMS = {"no_skeleton", "empty_skeleton", "unreadable_skeleton", "clip_outside_skeleton",
                      "nonfinite_points", "unreadable_frames", "unsupported_body_model"}


def status_path(out: Path, vid: str) -> Path:
    return out / STATUS_DIR / f"{format_video_id(vid)}.json"


def read_status(out: Path, vid: str) -> dict[str, Any] | None:
    """The video's status, or None when it has none (never started, or killed before the end). A
    damaged status file counts as none: the video is done again."""
    path = status_path(out, vid)
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("status") not in ("done", "failed"):
        return None
    if status["status"] == "done" and not all((out / status.get(k, "")).is_file() for k in ("skeleton", "mask")):
        return None  # the arrays were removed: do it again
    return status


def write_done(out: Path, vid: str, points: np.ndarray, found: np.ndarray, layout: str,
               counts: dict[str, Any]) -> dict[str, Any]:
    """Write the video's arrays, then its status (the done marker). Returns the status."""
    rel = write_skeleton(out, vid, points, found, layout=layout)
    status = {"status": "done", "skeleton": rel, "mask": rel[: -len(".npy")] + ".mask.npy", "layout": layout,
              **counts}
    write_text(status_path(out, vid), json.dumps(status, indent=1))
    return status


def write_failed(out: Path, vid: str, stage: str, reason: str) -> dict[str, Any]:
    status = {"status": "failed", "stage": stage, "reason": reason}
    write_text(status_path(out, vid), json.dumps(status, indent=1))
    return status


def check_run(out: Path, identity: dict[str, Any]) -> None:
    """Record the run's identity in OUT, or check that an earlier run there had the same one.

    Raises:
        UserError: OUT holds poses of other models or settings (names the first difference), or OUT
            is a PREPARED folder of `data prepare` (its OpenPose skeletons would be replaced).
    """
    path = out / RUN_FILE
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if not isinstance(earlier, dict):
            raise UserError(f"{path} is damaged (not a JSON object): this run's settings are unknown; pass a new --out")
        now = json.loads(json.dumps(identity))
        if earlier != now:
            key, there, here = _first_difference(earlier, now)
            raise UserError(f"{out} holds poses of another run ({key or 'the run'} {_short(there)} there, "
                            f"{_short(here)} now; see {path}): pass a new --out, or the same models and settings "
                            "to resume it")
        return
    write_text(path, json.dumps(identity, indent=1))


def _first_difference(there: Any, here: Any, key: str = "") -> tuple[str, Any, Any]:
    """The first (sorted) key path where two run identities differ, e.g. ("estimator.box_threshold", 0.3,
    0.5); a key missing on one side is None there."""
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here)):
            if there.get(k) != here.get(k):
                return _first_difference(there.get(k), here.get(k), f"{key}.{k}" if key else str(k))
    if isinstance(there, list) and isinstance(here, list) and len(there) == len(here):
        for i, (a, b) in enumerate(zip(there, here)):
            if a != b:
                return _first_difference(a, b, f"{key}[{i}]")
    return key, there, here


def _short(value: Any) -> str:
    """A value of the run identity as JSON, cut to 60 characters (a model's whole record is long)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def pose_source(identity: dict[str, Any]) -> str:
    """The videos.csv `pose_source` of estimated poses: "estimated: <pose model> + <detector>"."""
    models = identity.get("estimator", {}).get("models", [])
    # the pose model first, then the detector, as docs/pose_stage.md writes it
    models = sorted((m for m in models if isinstance(m, dict)), key=lambda m: m.get("role") == "detector")
    names = [str(m.get("name") or m.get("architecture") or "?") for m in models]
    return "estimated: " + (" + ".join(names) if names else "pose model")


def write_outputs(manifest: Manifest, out: Path, identity: dict[str, Any], layout: str,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite manifest.csv, videos.csv, prepare_report.json and pose_report.json of OUT from the
    statuses of every video; `provenance`: the estimator's own (model paths included) of this run.
    Returns the run report."""
    source = pose_source(identity)
    videos: dict[str, Any] = {"done": {}, "failed": {}, "not_done": []}
    rows = {}
    for vid, info in sorted(manifest.videos.items()):
        status = read_status(out, vid)
        row = replace(info, skeleton="", skeleton_layout="", pose_source="", n_frames=None)
        if row.video_path is not None and row.dataset_root is None and not row.video_path.is_absolute():
            row.video_path = row.video_path.resolve()  # relative to the input folder: keep it findable
        if status is None:
            videos["not_done"].append(vid)
            row.pose_source = POSE_PENDING  # another shard's, or a killed run's: readers say so, not "failed"
        elif status["status"] == "failed":
            videos["failed"][vid] = f"{status['stage']}: {status['reason']}"
        else:
            row.skeleton, row.skeleton_layout, row.pose_source = status["skeleton"], layout, source
            row.n_frames = status["frames"]
            videos["done"][vid] = {k: status[k] for k in ("frames", "estimated", "without_person", "mean_confidence",
                                                          "tracks", "ambiguous_clips") if k in status}
        rows[vid] = row
    result = Manifest(clips=list(manifest.clips), videos=rows)
    result.save(out)
    done = videos["done"].values()
    estimated = sum(v["estimated"] for v in done)
    report = {
        "pose_source": source, "layout": layout, "videos": len(manifest.videos),
        "videos_done": len(videos["done"]), "videos_failed": len(videos["failed"]),
        "videos_not_done": len(videos["not_done"]), "frames_estimated": estimated,
        "frames_without_person": sum(v["without_person"] for v in done),
        "mean_confidence": (sum(v["mean_confidence"] * (v["estimated"] - v["without_person"]) for v in done)
                            / max(1, sum(v["estimated"] - v["without_person"] for v in done))),
        "ambiguous_clips": {vid: v["ambiguous_clips"] for vid, v in videos["done"].items() if v["ambiguous_clips"]},
        "failed": videos["failed"], "not_done": videos["not_done"], "per_video": videos["done"],
        "run": identity, "estimator_provenance": provenance if provenance is not None else identity["estimator"],
    }
    write_text(out / RUN_REPORT, json.dumps(report, indent=1))
    _write_prepare_report(manifest, out, result, report)
    return report


def _write_prepare_report(manifest: Manifest, out: Path, result: Manifest, report: dict[str, Any]) -> None:
    """The input's prepare_report.json with the pose sources of OUT and a summary of the run."""
    earlier: dict[str, Any] = {}
    if manifest.root is not None and (manifest.root / REPORT_FILE).is_file():
        try:
            earlier = json.loads((manifest.root / REPORT_FILE).read_text())
        except ValueError:
            earlier = {}
    # the OpenPose conversion's records and problems are not about the skeletons of this folder
    earlier.pop("skeletons", None)
    earlier["problems"] = [p for p in earlier.get("problems", []) if p.get("kind") not in _OPENPOSE_PROBLEMS]
    earlier.update({
        "videos_with_skeleton": sum(1 for v in result.videos.values() if v.skeleton),
        "pose_sources": {v: info.pose_source for v, info in sorted(result.videos.items()) if info.pose_source},
        "pose": {k: report[k] for k in ("pose_source", "layout", "videos_done", "videos_failed", "videos_not_done",
                                        "frames_estimated", "frames_without_person", "mean_confidence", "failed")},
        "pose_estimated_from": str(manifest.root) if manifest.root is not None else "",
    })
    write_text(out / REPORT_FILE, json.dumps(earlier, indent=1))
