"""`migfuse data pose`: a person detector + pose model over the frames of every clip (or whole video).

One work item per video. Loader workers (`extract.loader_pool`, the extraction's) decode the frames
the video needs (`extract.decode.read_frames`: one forward pass, seeking only across long gaps) in
chunks of `batch_size` while the main process runs the estimator on the chunks before. When a
video's last chunk is estimated, its people are tracked and the main subject kept
(`tracking.follow_main_subject`, per run of consecutive frames), and its arrays then its status are
written (`outputs`): a run killed at any point resumes where it stopped (`--shard I/N` splits the
videos; every shard writes the outputs it sees at its end).

Per video, bad input is recorded, never fatal: a missing or undecodable video (stage open/decode,
with FFmpeg's reason) is a failed video; frames past the video's end and frames with nobody in them
are counted (mask False). Errors of the run itself (missing model, wrong OUT) are one-line UserErrors
before any work starts.
"""
from __future__ import annotations

import logging
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from migfuse.datasets.manifest import Manifest
from migfuse.datasets.video_measure import VideoMeasure
from migfuse.errors import UserError
from migfuse.extract.interface import Failure, Sample, WorkItem
from migfuse.pose_estimation import outputs
from migfuse.pose_estimation.tracking import TrackerSettings, follow_main_subject
from migfuse.pose_estimation.types import ESTIMATED_LAYOUTS, FramePoses, PoseEstimator
from migfuse.progress_bar import progress_bar

log = logging.getLogger(__name__)

SCOPES = ("clips", "videos")
#: bump when what a run writes for the same frames changes, so an older OUT is not resumed
FORMAT = 1


def load_estimator(pose_model: str | Path, detector: str | Path | None, **options: Any) -> PoseEstimator:
    """The estimator of two local model folders (`models.load_pose_estimator`; tests replace this)."""
    from migfuse.pose_estimation.models import load_pose_estimator

    return load_pose_estimator(pose_model, detector, **options)


def clip_frames(ranges: list[tuple[int, int]], total: int | None) -> np.ndarray:
    """Sorted frame indices covered by clip ranges (start, end inclusive), kept inside [0, total)."""
    idx = [np.arange(max(0, s), (e if total is None else min(e, total - 1)) + 1) for s, e in ranges]
    return np.unique(np.concatenate(idx)) if idx else np.zeros(0, np.int64)


class FrameLoader:
    """Picklable loader: WorkItem(key=video id) -> Samples of up to `chunk` decoded frames each,
    inputs {"index": (n,) int64, "frames": (n, H, W, 3) uint8 RGB, "total": () decoded length}, or one
    Sample with a Failure (no file, cannot be opened or decoded). No torch here."""

    def __init__(self, paths: dict[str, str | None], facts: dict[str, VideoMeasure | None],
                 ranges: dict[str, list[tuple[int, int]] | None], chunk: int):
        self.paths, self.facts, self.ranges, self.chunk = paths, facts, ranges, chunk

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        from migfuse.extract.decode import DecodeError, measure, read_frames

        vid, path = item.key, self.paths.get(item.key)
        if not path or not Path(path).is_file():
            yield Sample(vid, failure=Failure("open", f"no video file for video {vid}" + (f" ({path})" if path else "")
                                              + "; pass --video-root or re-run `migfuse data prepare`"))
            return
        try:
            facts = measure(path, self.facts.get(vid))
            ranges = self.ranges.get(vid)
            wanted = np.arange(facts.frames) if ranges is None else clip_frames(ranges, facts.frames)
            total = np.asarray(facts.frames)
            index: list[int] = []
            frames: list[np.ndarray] = []
            for i, rgb in read_frames(path, wanted.tolist(), facts=facts):
                index.append(i)
                frames.append(rgb)
                if len(frames) == self.chunk:
                    yield Sample(vid, inputs={"index": np.asarray(index), "frames": np.stack(frames), "total": total},
                                 size=len(frames))
                    index, frames = [], []
            if frames:
                yield Sample(vid, inputs={"index": np.asarray(index), "frames": np.stack(frames), "total": total},
                             size=len(frames))
        except DecodeError as e:
            yield Sample(vid, failure=Failure(e.stage, str(e)))
        except Exception as e:  # noqa: BLE001 - FFmpeg's errors on a damaged file come in many types
            yield Sample(vid, failure=Failure("decode", f"{Path(path).name}: {type(e).__name__}: {e}"))


@dataclass
class _Video:
    """What has been estimated of one video so far."""

    poses: dict[int, FramePoses] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)
    total: int = 0
    failure: Failure | None = None


@dataclass
class PoseRun:
    """What one `run_pose` call did, and the run report of OUT (all shards)."""

    report: dict[str, Any]
    done: list[str]
    failed: dict[str, str]
    skipped: int
    frames: int
    seconds: float


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 0, 1
    i, _, n = shard.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise UserError(f"--shard {shard!r} is not I/N with 0 <= I < N (e.g. --shard 0/4)")
    return int(i), int(n)


def check_out(manifest: Manifest, out: Path) -> None:
    """UserError when `out` is the input PREPARED folder, a file, or a folder that is not empty and holds
    no earlier `data pose` run (its pose_run.json): a dataset root or a training run's folder would get a
    PREPARED folder written into it. Checked before the models load."""
    if manifest.root is not None and out.resolve() == Path(manifest.root).resolve():
        raise UserError(f"--out {out} is the input PREPARED folder: its OpenPose skeletons would be replaced; "
                        "pass a new folder (the input stays as it is)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a new folder for the estimated PREPARED folder")
    if out.is_dir() and not (out / outputs.RUN_FILE).is_file() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty and holds no earlier `data pose` run ({outputs.RUN_FILE}): pass "
                        "a new or empty folder (data pose writes a whole PREPARED folder into it)")


def run_pose(prepared: str | Path | Manifest, out: str | Path, estimator: PoseEstimator, *, scope: str = "clips",
             workers: int = 0, batch_size: int = 16, shard: str | None = None, retry_failed: bool = False,
             video_root: str | Path | None = None, tracker: TrackerSettings = TrackerSettings(),
             progress: bool = True) -> PoseRun:
    """Estimate the main subject's pose in the frames of every clip (`scope` "clips") or of whole
    videos ("videos") of `prepared`, into the PREPARED folder `out` (see `outputs`).

    `batch_size`: frames per estimator call (the estimator batches inside too); `workers`: decoding
    processes (0: decode in this process); `shard` "I/N": the I-th of N parts of the videos.

    Raises:
        UserError: an unknown scope, an estimator of another layout, `out` = the input folder or a
            folder of another run or of `data prepare`.
    """
    if scope not in SCOPES:
        raise UserError(f"unknown --scope {scope!r}: choose clips or videos")
    manifest = prepared if isinstance(prepared, Manifest) else Manifest.load(prepared)
    out = Path(out)
    check_out(manifest, out)
    layout = estimator.layout
    if layout not in ESTIMATED_LAYOUTS:
        raise UserError(f"the pose model gives layout {layout!r}; data pose writes {', '.join(ESTIMATED_LAYOUTS)}")
    provenance = estimator.provenance()
    identity = {"format": FORMAT, "estimator": _without_paths(provenance), "layout": layout, "scope": scope,
                "tracker": tracker.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    outputs.check_run(out, identity)
    k, n = parse_shard(shard)
    videos = sorted(manifest.videos)[k::n]
    todo, skipped = [], 0
    for vid in videos:
        status = outputs.read_status(out, vid)
        if status is None or (status["status"] == "failed" and retry_failed):
            todo.append(vid)
        else:
            skipped += 1
    if skipped:
        log.info("%d videos of an earlier run are kept (done or failed; --retry-failed redoes failed ones)", skipped)
    paths = manifest.video_files(video_root) if todo else {}
    facts = manifest.video_measures()
    ranges = {v: ([(c.start_frame, c.end_frame) for c in manifest.clips_of_video(v)] if scope == "clips" else None)
              for v in todo}
    loader = FrameLoader({v: paths.get(v) for v in todo}, {v: facts.get(v) for v in todo}, ranges, batch_size)
    total = _planned_frames(todo, facts, ranges)
    started, done, failed, frames = time.monotonic(), [], {}, 0
    with progress_bar(total=total, desc="pose", unit="frame", disable=not progress) as bar:
        for vid, video in _estimate(loader, todo, estimator, workers, bar):
            frames += len(video.poses)
            if video.failure is not None:
                outputs.write_failed(out, vid, video.failure.stage, video.failure.message)
                failed[vid] = f"{video.failure.stage}: {video.failure.message}"
                log.warning("video %s failed (%s)", vid, failed[vid])
                continue
            points, found, counts = _main_subject(manifest, vid, video, scope, tracker, ESTIMATED_LAYOUTS[layout])
            outputs.write_done(out, vid, points, found, layout, counts)
            done.append(vid)
            log.info("video %s: %d frames estimated, %d without a person, %d ambiguous", vid, counts["estimated"],
                     counts["without_person"], counts["ambiguous_frames"])
    report = outputs.write_outputs(manifest, out, identity, layout, provenance)
    return PoseRun(report, done, failed, skipped, frames, time.monotonic() - started)


def _without_paths(provenance: dict[str, Any]) -> dict[str, Any]:
    """The provenance without the models' paths and the library's version: moved model folders (same
    sha256) and an upgraded transformers resume a run (the report still records both)."""
    provenance = {k: v for k, v in provenance.items() if k != "transformers"}
    models = provenance.get("models")
    if not isinstance(models, list):
        return provenance
    return {**provenance, "models": [{k: v for k, v in m.items() if k != "path"} if isinstance(m, dict) else m
                                     for m in models]}


def _planned_frames(todo: list[str], facts: dict[str, VideoMeasure | None],
                    ranges: dict[str, list[tuple[int, int]] | None]) -> int | None:
    """Frames the run will estimate, when every video was measured by `data prepare` (else None)."""
    total = 0
    for vid in todo:
        f = facts.get(vid)
        if f is None:
            return None
        r = ranges[vid]
        total += f.frames if r is None else len(clip_frames(r, f.frames))
    return total


def _estimate(loader: FrameLoader, todo: list[str], estimator: PoseEstimator, workers: int,
              bar: Any) -> Iterator[tuple[str, _Video]]:
    """Each video of `todo` once it is estimated (or failed), in the order they finish."""
    state: dict[str, _Video] = {}

    def take(sample: Sample) -> None:
        video = state.setdefault(sample.id, _Video())
        if sample.failure is not None:
            video.failure = sample.failure
            return
        frames = sample.inputs["frames"]
        video.total, video.size = int(sample.inputs["total"]), (int(frames.shape[1]), int(frames.shape[2]))
        for i, poses in zip(sample.inputs["index"].tolist(), estimator(list(frames))):
            video.poses[int(i)] = poses
        bar.update(len(frames))

    if workers <= 0:
        for vid in todo:
            for sample in loader(WorkItem(vid, ())):
                take(sample)
            yield vid, state.pop(vid, _Video())
        return
    from migfuse.extract.loader_pool import LoaderPool, decode_threads

    items = [WorkItem(vid, ()) for vid in todo]
    pending = deque(range(len(items)))
    pool = LoaderPool(loader, workers, prefetch=1, out_size=2 * workers, decode_threads=decode_threads(workers))
    left, aborted = len(items), True
    try:
        pool.feed(pending, items)
        while left:
            try:
                kind, wid, n, payload = pool.out.get(timeout=1.0)
            except queue.Empty:
                continue
            if kind == "sample":
                take(payload)
                continue
            if kind == "dead":
                lost = pool.reap(wid, pending)
                if lost is None:
                    pool.feed(pending, items)
                    continue
                n, payload = lost
            vid = items[n].key
            video = state.pop(vid, _Video())
            if payload and video.failure is None:
                video.failure = Failure("load" if kind == "end" else "worker", str(payload))
            pool.finished(wid, n)
            pool.feed(pending, items)
            left -= 1
            yield vid, video
        aborted = False
    finally:
        pool.close(abort=aborted)


def _main_subject(manifest: Manifest, vid: str, video: _Video, scope: str, tracker: TrackerSettings,
                  points_per_person: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(T, K, 3) points of the main subject, (T,) found, and the video's counts for its status."""
    index = np.array(sorted(video.poses), dtype=np.int64)
    total = max(video.total, int(index[-1]) + 1 if len(index) else 0)
    points = np.zeros((total, points_per_person, 3), dtype=np.float32)
    found = np.zeros(total, dtype=bool)
    ambiguous = np.zeros(total, dtype=bool)
    tracks = 0
    # runs of consecutive frames: the tracker follows people only where no frame is skipped
    for run in np.split(index, np.flatnonzero(np.diff(index) != 1) + 1) if len(index) else []:
        frames = [video.poses[int(i)] for i in run]
        subject = follow_main_subject(frames, video.size, tracker)
        tracks = max(tracks, subject.tracks)
        for t, (i, p) in enumerate(zip(run.tolist(), subject.person.tolist())):
            if p >= 0 and (frames[t].scores[p] > 0).any():  # a person with no point found counts as nobody
                points[i, :, :2], points[i, :, 2] = frames[t].keypoints[p], frames[t].scores[p]
                found[i] = True
        ambiguous[run] = subject.ambiguous
    clips = manifest.clips_of_video(vid)
    where = {c.clip_id: np.flatnonzero(ambiguous[max(c.start_frame, 0):c.end_frame + 1]) + max(c.start_frame, 0)
             for c in clips}
    counts = {
        "frames": int(total), "estimated": int(len(index)), "without_person": int(len(index) - found[index].sum()),
        "mean_confidence": float(points[found, :, 2].mean()) if found.any() else 0.0, "tracks": int(tracks),
        "ambiguous_frames": int(ambiguous.sum()),
        "ambiguous_clips": {cid: [int(f[0]), int(f[-1])] for cid, f in where.items() if len(f)},
        "scope": scope,
    }
    return points, found, counts
