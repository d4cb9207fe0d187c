"""`migfuse data prepare`: a dataset download -> PREPARED/ (manifest + skeleton arrays + report).

Reading 21k OpenPose JSON files or a multi-million-cell xlsx per video is slow, so it is done once
here; everything later reads the memory-mapped ``skeletons/<vid4>.npy``. Problems (empty or
unreadable skeletons, clips outside the skeleton, files that do not fit) go to
``prepare_report.json`` and the run goes on; only a root that matches no layout stops it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


from migfuse.atomic_write import write_error, write_text
from migfuse.datasets import classes
from migfuse.datasets.layouts import LayoutScan, read_layout
from migfuse.datasets.layouts.base import SkeletonSource
from migfuse.datasets.manifest import (REPORT_FILE, SKELETON_DIR, Clip, Manifest, VideoInfo, clip_id_of, open_skeleton,
                                       write_skeleton)
from migfuse.datasets.openpose import UnsupportedBodyModel
from migfuse.datasets.video_measure import measure_videos
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What `prepare` wrote: the saved manifest and the report (also in prepare_report.json)."""

    manifest: Manifest
    report: dict


def build_manifest(scan: LayoutScan) -> Manifest:
    """Clips and videos of a layout scan with labels and the three split columns (no skeletons).

    A label row whose start frame is after its end frame is left out (`backward_label_rows` names them)."""
    clips: list[Clip] = []
    videos: dict[str, VideoInfo] = {}
    root = scan.root.resolve()
    for vid in sorted(scan.videos):
        src = scan.videos[vid]
        videos[vid] = VideoInfo(vid, subject=src.subject, win_lose=src.win_lose,
                                video_path=_relative(src.video_path, scan.root) if src.video_path else None,
                                dataset_root=root)
        for c in sorted(src.clips, key=lambda c: c.k):
            if c.start_frame > c.end_frame:
                continue
            split_miga = src.split_miga
            if split_miga is not None and clip_id_of(vid, c.k) in classes.MIGA_EXCLUDED_CLIPS:
                split_miga = ""
            clips.append(Clip.make(vid, c.k, c.start_frame, c.end_frame, raw_class=c.raw_class,
                                   subject=src.subject, win_lose=src.win_lose, split_miga=split_miga))
    return Manifest(clips=clips, videos=videos)


def backward_label_rows(scan: LayoutScan) -> dict[str, str]:
    """Clip id -> "start S > end E" of every label row that starts after it ends (left out of the manifest)."""
    return {clip_id_of(vid, c.k): f"start {c.start_frame} > end {c.end_frame}"
            for vid in sorted(scan.videos) for c in sorted(scan.videos[vid].clips, key=lambda c: c.k)
            if c.start_frame > c.end_frame}


def _relative(path: Path, root: Path) -> Path:
    """``path`` relative to the dataset ``root`` (the walk yields paths under ``root`` as given)."""
    try:
        return path.relative_to(root)
    except ValueError:
        return Path(os.path.relpath(path.resolve(), root.resolve()))


#: `measure_files` when nothing is measured (no PyAV, or not asked)
_NOT_MEASURED: dict = {"video_files": {}, "totals": {}, "problems": [], "rotated": {}}


def measure_files(manifest: Manifest, progress: bool) -> dict:
    """Measure every video file (`video_measure.measure_videos`): the report's ``video_files`` section,
    its totals, the problems and the rotated videos. Without PyAV nothing is measured (said once);
    extraction then measures each video itself."""
    try:
        measured = measure_videos(manifest.videos, progress=progress)
    except ImportError:
        log.info("PyAV is not installed: video files are not measured (install the extract extra)")
        return _NOT_MEASURED
    past, cut_short = [], []
    for c in manifest.clips:
        facts = manifest.videos[c.video_id].measured
        if facts is not None and c.end_frame >= facts.frames:
            first_missing = max(c.start_frame, facts.frames)
            (cut_short if facts.cut_short_before(first_missing) else past).append(c)
    problems = list(measured.problems)
    if cut_short:
        videos = sorted({c.video_id for c in cut_short})
        first = manifest.videos[videos[0]]
        problems.append({"kind": "clip_in_cut_short_video",
                         "detail": f"clips ending after the last frame their video decodes, within the length its "
                                   f"header claims: {len(cut_short)}, in videos {', '.join(videos[:5])}"
                                   f"{' ...' if len(videos) > 5 else ''} (first: {first.video_path.name} decodes "
                                   f"{first.measured.frames} frames at 25 fps, its header claims "
                                   f"{first.measured.header_frames}): the file is cut short or damaged; re-download "
                                   "or re-encode it", "clip_ids": [c.clip_id for c in cut_short], "video_ids": videos})
    if past:
        problems.append({"kind": "clip_past_video_end", "detail": f"{len(past)} clips end after the last frame "
                         "their video decodes (at 25 fps); check the labels", "clip_ids": [c.clip_id for c in past]})
    return {"video_files": measured.per_video, "totals": measured.totals(), "problems": problems,
            "rotated": measured.rotated}


def prepare(root: str | Path, out: str | Path, *, layout: str = "auto", frame_base: int = 0,
            workers: int = 1, reuse: bool = True, progress: bool = True, probe_videos: bool = True) -> PrepareResult:
    """Read a dataset download in any supported layout and write PREPARED/ into ``out``.

    Writes manifest.csv, videos.csv, skeletons/<vid4>.npy (T, 137, 3) float32 + .mask.npy (T,) bool
    and prepare_report.json. Runtime is dominated by skeleton reading: ~4 s per video of OpenPose
    JSON (21k frames), a few seconds per 411-column xlsx. ``workers`` > 1 converts videos in
    parallel processes. With ``reuse``, skeletons whose source is unchanged since the last run into
    the same ``out`` (`_signature`: size and modification time of a file, of every frame file of a
    JSON folder, and the reader version) are not read again, so an interrupted run resumes quickly.

    videos.csv stores each video file relative to the dataset root and records the root, so a
    PREPARED folder works where the videos live elsewhere (`Manifest.video_path`). With
    ``probe_videos`` (and PyAV installed) each video file is measured once (`video_measure`: whether
    it decodes, its decoded length, time origin, fps, size, display rotation, the header's claim),
    recorded in videos.csv and, per video, in the report's ``video_files``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():  # before any work: reading a big dataset takes minutes
        raise UserError(f"--out {out} is a file, not a folder: name a folder for the PREPARED files (it is created), "
                        f"or move that file")
    scan = read_layout(root, layout, frame_base=frame_base)
    try:
        manifest = build_manifest(scan)
    except ValueError as e:  # duplicate clip ids, unknown raw class
        raise UserError(f"labels under {scan.root} are inconsistent ({e}); fix the label file") from None
    if not manifest.clips:  # an empty manifest and exit 0 would look like success
        files = sorted({str(v.label_file) for v in scan.videos.values() if v.label_file})
        shown = f" ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})" if files else ""
        raise UserError(f"the label files under {scan.root}{shown} hold no clips; fix them or pass the folder of "
                        f"the full download")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, e.filename or out, folder=True) from None
    problems = list(scan.problems)
    backward = backward_label_rows(scan)
    if backward:
        shown = "; ".join(f"{cid} ({why})" for cid, why in list(backward.items())[:3])
        problems.append({"kind": "start_after_end", "detail": f"{len(backward)} label rows start after they end "
                         f"and were left out: {shown}{' ...' if len(backward) > 3 else ''}; fix the label file",
                         "clip_ids": list(backward)})
        log.warning("%s", problems[-1]["detail"])
    previous = _previous_skeletons(out) if reuse else {}
    skeleton_info: dict[str, dict] = {}
    jobs: list[tuple[str, SkeletonSource]] = []
    damaged: list[str] = []
    for vid in sorted(scan.videos):
        source = scan.videos[vid].skeleton
        if source is None:
            continue
        old = previous.get(vid)
        if old is not None and _same_source(old, source):
            why = _damaged_array(out, old)
            if why is None:
                skeleton_info[vid] = old  # unchanged source, array already written by an earlier run
                continue
            damaged.append(why)
        jobs.append((vid, source))
    if skeleton_info:
        log.info("reusing %d skeleton arrays of an earlier run (unchanged sources)", len(skeleton_info))
    if damaged:
        log.warning("%d skeleton arrays of an earlier run are damaged and are converted again (first: %s)",
                    len(damaged), damaged[0])
    for vid, outcome in _convert_all(jobs, out, workers=workers, progress=progress):
        if "problem" in outcome:
            problems.append(outcome["problem"])
            log.warning("video %s: %s", vid, outcome["problem"]["detail"])
        else:
            skeleton_info[vid] = outcome
    for vid, info in sorted(skeleton_info.items()):
        problems.extend(_frame_problems(vid, info))
    for vid, info in skeleton_info.items():
        manifest.videos[vid].skeleton = info["array"]
        manifest.videos[vid].n_frames = info["frames"]
        manifest.videos[vid].pose_source = "openpose"
    no_skeleton = [v for v in sorted(scan.videos) if scan.videos[v].skeleton is None]
    if no_skeleton:
        problems.append({"kind": "no_skeleton", "detail": f"{len(no_skeleton)} videos have no skeleton file",
                         "video_ids": no_skeleton})
    outside = [c.clip_id for c in manifest.clips
               if manifest.videos[c.video_id].n_frames is not None
               and (c.start_frame < 0 or c.end_frame >= manifest.videos[c.video_id].n_frames)]
    if outside:
        problems.append({"kind": "clip_outside_skeleton", "detail": f"{len(outside)} clips reach past their "
                         f"skeleton's frames (kept as they are; readers must pad)", "clip_ids": outside})
    no_video = [v for v, info in manifest.videos.items() if info.video_path is None]
    if no_video:
        problems.append({"kind": "no_video_file", "detail": f"{len(no_video)} videos have no video file "
                         f"(<vid4>.mp4/.avi/.mkv/.mov/.webm) under the root (RGB tracks will skip them)",
                         "video_ids": no_video})
    files = measure_files(manifest, progress) if probe_videos else _NOT_MEASURED
    problems.extend(files["problems"])
    manifest.save(out)
    report = {
        "layout": scan.layout, "root": str(Path(root).resolve()), "frame_base": frame_base,
        "clips": len(manifest.clips), "videos": len(manifest.videos),
        "videos_with_skeleton": len(skeleton_info), "videos_with_file": len(manifest.videos) - len(no_video),
        "rotated_videos": files["rotated"], "video_file_totals": files["totals"], "video_files": files["video_files"],
        "unreadable_frames": sum(info.get("n_unreadable_files", 0) for info in skeleton_info.values())
        + sum(p.get("n_unreadable_files", 0) for p in problems if p["kind"] == "empty_skeleton"),
        "splits": {scheme: _counts(manifest, scheme) for scheme in ("split_cs", "split_miga", "split_emotion")},
        "problems": problems, "skeletons": dict(sorted(skeleton_info.items())),
        "pose_sources": {v: info.pose_source for v, info in sorted(manifest.videos.items()) if info.pose_source},
    }
    write_text(out / REPORT_FILE, json.dumps(report, indent=1))
    log.info("prepared %d clips of %d videos (%d skeletons, %d problems) in %s", len(manifest.clips),
             len(manifest.videos), len(skeleton_info), len(problems), out)
    return PrepareResult(manifest, report)


#: bump when the readers change what they return for the same file, so `reuse` re-reads old arrays
READER_VERSION = 2


def _signature(source: SkeletonSource) -> list:
    """What identifies a skeleton source's content without reading it: reader version, then size and
    modification time of a file, or for a folder the count and a digest of every file's name, size
    and modification time (a frame fixed in place changes it; a folder's own mtime does not)."""
    path = source.path
    if path.is_file():
        st = path.stat()
        return [READER_VERSION, st.st_size, st.st_mtime_ns]
    digest = hashlib.sha1()
    count = 0
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                count += 1
    return [READER_VERSION, count, digest.hexdigest()]


def _same_source(record: dict, source: SkeletonSource) -> bool:
    """Whether an earlier run's record describes this source unchanged. Paths are compared resolved,
    so ``--root real`` and ``--root /abs/real`` (or ``./real``) reuse each other's arrays."""
    try:
        same_path = Path(record.get("source", "")).resolve() == source.path.resolve()
    except (OSError, RuntimeError, TypeError):
        return False
    return same_path and (record.get("kind"), record.get("signature")) == (source.kind, _signature(source))


def _damaged_array(out: Path, record: dict) -> str | None:
    """Why an earlier run's skeleton arrays cannot be reused (wrong dtype or shape, cut short, Python
    objects, another frame count than recorded), or None when they are sound. Reads only the headers."""
    path = out / record["array"]
    try:
        array, _ = open_skeleton(path)
    except UserError as e:
        return str(e).split("; re-run", 1)[0]
    if array.shape[0] != record.get("frames"):
        return f"skeleton {path} has {array.shape[0]} frames, its record says {record.get('frames')}"
    return None


def _frame_problems(vid: str, info: dict) -> list[dict]:
    """Per-frame problems of one converted skeleton (unreadable files, non-finite values)."""
    problems = []
    if info.get("n_unreadable_files"):
        reasons = info.get("unreadable_files") or {}
        first = next(iter(reasons.items()), None)
        example = f"; first: {first[0]}: {first[1]}" if first else ""
        problems.append({"kind": "unreadable_frames", "video_id": vid, "path": info.get("source", ""),
                         "detail": f"{info['n_unreadable_files']} of {info.get('files')} frame files could not be "
                                   f"read (stored as frames without a person){example}",
                         "files": reasons})
    if info.get("nonfinite_points"):
        problems.append({"kind": "nonfinite_points", "video_id": vid, "path": info.get("source", ""),
                         "detail": f"{info['nonfinite_points']} points in {info.get('nonfinite_frames')} frames had "
                                   f"NaN or infinite values (stored as undetected)"})
    return problems


def _previous_skeletons(out: Path) -> dict[str, dict]:
    """Records (``skeletons/<vid4>.json``, written after each array) of earlier runs into ``out``."""
    records: dict[str, dict] = {}
    for path in sorted((out / SKELETON_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(record, dict) and "array" in record and (out / record["array"]).is_file():
            records[path.stem] = record
    return records


def _convert(vid: str, source: SkeletonSource, out: Path, progress: bool) -> dict:
    """Read one skeleton source and write its arrays; a dict for the report (or a "problem")."""
    try:
        read = source.read(progress=progress)
    except UnsupportedBodyModel as e:
        return {"problem": {"kind": "unsupported_body_model", "video_id": vid, "path": str(source.path),
                            "detail": str(e)}}
    except (UserError, ValueError, OSError) as e:
        return {"problem": {"kind": "unreadable_skeleton", "video_id": vid, "path": str(source.path),
                            "detail": str(e)}}
    if len(read.points) == 0 or not read.mask.any():
        why = "none with a person"
        if read.info.get("n_unreadable_files"):  # keep the reader's own reason, not a vaguer one
            name, reason = next(iter(read.info["unreadable_files"].items()))
            why = (f"{read.info['n_unreadable_files']} of {read.info['files']} frame files unreadable "
                   f"(first: {name}: {reason}), none of the others with a person")
        return {"problem": {"kind": "empty_skeleton", "video_id": vid, "path": str(source.path),
                            "detail": f"{source.path}: {len(read.points)} frames, {why}",
                            "n_unreadable_files": int(read.info.get("n_unreadable_files", 0))}}
    array = write_skeleton(out, vid, read.points, read.mask)
    record = {"source": str(source.path.resolve()), "kind": source.kind, "signature": _signature(source),
              "array": array, "frames": int(len(read.points)), "frames_with_person": int(read.mask.sum()), **read.info}
    # written after the arrays, so a record always describes complete arrays (resume after a crash)
    write_text(out / SKELETON_DIR / f"{vid}.json", json.dumps(record))
    return record


def _convert_all(jobs: list[tuple[str, SkeletonSource]], out: Path, *, workers: int,
                 progress: bool) -> Iterator[tuple[str, dict]]:
    bar = progress_bar(total=len(jobs), desc="skeletons", unit="video", disable=not progress)
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            for vid, source in jobs:
                yield vid, _convert(vid, source, out, progress)
                bar.update(1)
            return
        # one process per video; per-frame bars would interleave, so only the video bar is shown
        from migfuse.worker_pool import run_tasks

        for vid, record in run_tasks(_convert_job, [(vid, source, out) for vid, source in jobs], workers,
                                     ordered=False):
            yield vid, record
            bar.update(1)


def _convert_job(vid: str, source: SkeletonSource, out: Path) -> tuple[str, dict]:
    return vid, _convert(vid, source, out, False)


def _counts(manifest: Manifest, scheme: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    if scheme == "split_emotion":
        for info in manifest.videos.values():
            counts[info.split_emotion] = counts.get(info.split_emotion, 0) + 1
    else:
        for c in manifest.clips:
            counts[getattr(c, scheme)] = counts.get(getattr(c, scheme), 0) + 1
    return dict(sorted(counts.items()))
