"""Decoding the frames a video's clips need, in one forward pass per video (PyAV).

Clips are frame ranges of long untrimmed videos, numbered 0-based at 25 fps as in the iMiGUE
annotation. `read_frames` takes every frame index a video's clips need, sorted, and decodes the
video once, in order: it seeks to the keyframe before the first needed frame, decodes forward, and
seeks again only across gaps longer than `seek_gap` frames. It never restarts from frame 0 per clip.
Far from any needed frame (the pre-roll after a seek) it leaves unreferenced frames undecoded.

`stream_clips` is what every RGB track's loader uses (video, context, face, face_context): it takes
a video's requests (one per clip or window: the frame indices it needs), decodes the video once with
`read_frames`, yields each request's frames as soon as its last frame is decoded, and keeps only the
frames that requests still waiting need, so memory follows the clips' overlap, not the video's
length. A decode error fails only the requests not yet served; the ones before the damage keep
their frames.

Annotation index -> video frame: index f means time f / 25 s after the first displayed picture
(`VideoMeasure.origin`, whatever the stream's `start_time` says); the decoded frame whose
presentation time is nearest wins (exact for 25 fps videos; a 30 fps video maps by time); the last
picture covers its own duration. The video's measured facts (`datasets.video_measure`, stored by
`data prepare`) are passed in, or measured here when a prepared folder has none.

No torch here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np

from migfuse.datasets.orientation import rotation_degrees, upright
from migfuse.datasets.video_measure import (ANNOTATION_FPS, VideoMeasure, VideoUnreadable, frames_covered,
                                            header_frames, measure_video)
from migfuse.datasets.video_measure import native_fps as _fps

log = logging.getLogger(__name__)

#: Decode through gaps up to this many annotation frames instead of seeking (a seek re-decodes
#: from the previous keyframe, typically 1-10 s back, so short gaps are cheaper to decode).
DEFAULT_SEEK_GAP = 100
#: Frames that no other frame refers to (most B-frames) are not decoded while the next needed frame
#: is more than this many native frames ahead: the pre-roll from a keyframe to a clip, and the gaps
#: decoded through. The margin covers the decoder's reordering and frame-thread delay, so every
#: frame near a needed one is decoded; `_decode_targets` checks that and decodes again without
#: skipping where it was not (see `skip_nonref`). The reordering (3 B-frames) needs a few frames; each
#: frame thread holds back one more. One thread: 8 frames served the frames of no skipping and decoded
#: 8 % fewer than 32 on a 1280x720 x264 video with 3 B-frames, 2 threads likewise with 8
#: (benchmarks/RESULTS.md, "One decode pass"); FFmpeg's own choice (a thread per core) keeps 32.
SKIP_MARGIN_FRAMES = 32
SKIP_MARGIN_ONE_THREAD = 8
#: FFmpeg decoding threads per open video; 0 = FFmpeg's choice (one per core). The extraction
#: runner sets it in each loader worker (`runner.decode_threads`) so workers share the cores.
_THREADS = 0


def skip_margin_frames() -> int:
    """The non-reference skipping margin for this process's decoding threads (`set_threads`): 8
    frames with one thread, one more per further frame thread, 32 at most and with FFmpeg's choice."""
    if _THREADS == 0:
        return SKIP_MARGIN_FRAMES
    return min(SKIP_MARGIN_FRAMES, SKIP_MARGIN_ONE_THREAD + _THREADS - 1)


def set_threads(n: int) -> None:
    """FFmpeg threads for every video this process opens from now on (0 = FFmpeg's choice)."""
    global _THREADS
    _THREADS = max(0, int(n))


class DecodeError(Exception):
    """The video cannot be opened or decoded. `stage` is "open" or "decode"."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


class PastEnd(DecodeError):
    """A request needs frames the decoder never served: after the video's decoded end (the labels
    run past the file), or before it where the file stops decoding early (damage). The message
    names which (`past_end_message`).

    `missing`: the request's indices that never came, sorted; `n_frames`: the decoded length in
    25 fps frames (`VideoMeasure.frames`).
    """

    def __init__(self, message: str, missing: list[int], n_frames: int):
        super().__init__("decode", message)
        self.missing = missing
        self.n_frames = n_frames


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about a video. `n_frames` is in annotation (25 fps) frames."""

    n_frames: int
    fps: float
    width: int
    height: int


def _open(path: str | Path):
    import av

    p = Path(path)
    if not p.is_file():
        raise DecodeError("open", f"video file not found: {p}")
    try:
        container = av.open(str(p))
    except Exception as e:  # noqa: BLE001 - any open failure is a bad input, reported with its reason
        why = getattr(e, "strerror", None) or str(e)
        raise DecodeError("open", f"cannot open {p}: {type(e).__name__}: {why}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("open", f"{p} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = _THREADS
    return container, stream


def probe(path: str | Path) -> VideoProbe:
    """Frame count (at 25 fps; 0 when the header states none), native fps and size, from the
    container header only (no decoding). Headers can be wrong: place frames with `measure` instead.

    Raises:
        DecodeError: missing or unreadable file, or no video stream.
    """
    container, stream = _open(path)
    try:
        return VideoProbe(n_frames=header_frames(container, stream) or 0, fps=_fps(stream),
                          width=stream.codec_context.width, height=stream.codec_context.height)
    finally:
        container.close()


def measure(path: str | Path, known: VideoMeasure | None = None) -> VideoMeasure:
    """The video's measured facts: `known` (stored by `data prepare`) when given, else measured now.

    Raises:
        DecodeError: stage "open": missing file, not a video, no picture decodes (the reason).
    """
    if known is not None:
        return known
    p = Path(path)
    if not p.is_file():
        raise DecodeError("open", f"video file not found: {p}")
    try:
        return measure_video(p)
    except VideoUnreadable as e:
        raise DecodeError("open", f"{p.name}: {e}") from None


def past_end_message(name: str, missing: list[int], facts: VideoMeasure) -> str:
    """Why frames `missing` were not served, naming the true cause and the fix."""
    shown = f"frames {missing[:3]}{'...' if len(missing) > 3 else ''}"
    if missing[0] < facts.frames:
        return (f"{name} stops decoding before frame {missing[0]} although it was measured to reach frame "
                f"{facts.frames - 1}: the file is damaged or was changed since `data prepare`; re-download or "
                "re-encode it and run `migfuse data prepare` again")
    if facts.cut_short_before(missing[0]):
        return (f"{name} decodes {facts.frames} frames at 25 fps, its header claims {facts.header_frames}: "
                f"the file is cut short or damaged; re-download or re-encode it")
    return f"{shown} are past the end of {name} (it decodes {facts.frames} frames at 25 fps); check the labels"


def _to_rgb(frame, stream) -> np.ndarray:
    """The one place a decoded PyAV frame becomes an array: (H, W, 3) uint8 RGB, turned upright by the
    display rotation the frame (or else the stream's `rotate` tag) carries, as ffmpeg and players show it."""
    degrees = rotation_degrees(frame) or rotation_degrees(stream)
    return upright(frame.to_ndarray(format="rgb24"), degrees)


def read_frames(
    path: str | Path,
    indices: Iterable[int],
    *,
    seek_gap: int = DEFAULT_SEEK_GAP,
    stats: dict[str, int] | None = None,
    facts: VideoMeasure | None = None,
    skip_nonref: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(index, frame)` for each needed annotation frame index, in increasing index order.

    Args:
        path: the video file.
        indices: 0-based frame indices at 25 fps (any order, duplicates allowed).
        seek_gap: decode through gaps up to this many frames; seek across longer ones.
        stats: if given, filled with counts "decoded" (frames), "seeks" and "redone" (seeks again
            without skipping, see below) for tests and benchmarks.
        skip_nonref: leave frames no other frame refers to undecoded while the next needed frame is
            more than `skip_margin_frames()` ahead (FFmpeg's `skip_frame=NONREF`; about 40 % of the
            decoding of an x264 stream with B-frames). Where a needed frame's neighbours then turn
            out not to be adjacent frames, that stretch is decoded again without skipping, so the
            frames served are the same as with False.
        facts: the video's measured facts (time origin, decoder reorder depth); None: measured now.

    Yields:
        (index, RGB uint8 array (H, W, 3)). Indices past the end of the video are not yielded:
        the iterator just stops, and the caller names what is missing.

    Raises:
        DecodeError: stage "open" for a missing/unreadable file, "decode" for corrupt data met
            while decoding (frames yielded before it stay valid).
    """
    targets = sorted(set(int(i) for i in indices))
    if not targets:
        return
    if targets[0] < 0:
        raise ValueError(f"negative frame index {targets[0]}")
    facts = measure(path, facts)
    container, stream = _open(path)
    served = False
    try:
        for item in _decode_targets(container, stream, targets, seek_gap, {} if stats is None else stats,
                                    skip_nonref, facts):
            served = True
            yield item
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg errors on corrupt data come in many types
        if not served and not _has_a_frame(path):
            # e.g. an AVI whose header declares a stream but holds no frame: FFmpeg's seek then fails
            # with EPERM, which would read as a file-permission problem
            raise DecodeError("decode", f"{Path(path).name} holds no video frame (a video stream is declared, "
                                        "none decodes): record the video again or leave it out") from None
        if isinstance(e, PermissionError):  # FFmpeg's EPERM: a seek it refuses, not a file permission
            raise DecodeError("decode", f"{Path(path).name}: FFmpeg cannot seek in it (\"{e.strerror}\" from "
                                        "FFmpeg, not a file permission): the file is damaged; re-download or "
                                        "re-encode it") from None
        raise DecodeError("decode", f"{Path(path).name}: {type(e).__name__}: {e}") from None
    finally:
        container.close()


def _has_a_frame(path: str | Path) -> bool:
    """Does the file decode at least one video frame, read from its start without seeking? Cheap: it
    stops at the first frame."""
    try:
        container, stream = _open(path)
    except DecodeError:
        return False
    try:
        for _ in container.decode(stream):
            return True
        return False
    except Exception:  # noqa: BLE001 - damage before the first frame: none decodes either
        return False
    finally:
        container.close()


def _in_display_order(frames: Iterator, depth: int, time_of: Callable) -> Iterator:
    """`frames` in presentation order, holding back `depth` of them: exact when no frame comes after
    more than `depth` frames displayed later (`VideoMeasure.reorder`)."""
    if depth <= 0:
        yield from frames
        return
    held: list = []
    count = itertools.count()  # ties keep the decoder's order
    for frame in frames:
        heapq.heappush(held, (time_of(frame), next(count), frame))
        if len(held) > depth:
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def _decode_targets(container, stream, targets: list[int], seek_gap: int,
                    stats: dict[str, int], skip_nonref: bool, facts: VideoMeasure) -> Iterator[tuple[int, np.ndarray]]:
    time_base = stream.time_base or Fraction(1, 1000)
    start = int(round(facts.origin / time_base))  # the first displayed picture, not stream.start_time
    step = 1.0 / _fps(stream)  # one native frame
    half = 0.5 * step  # half a native frame: the nearest-frame boundary
    gap_s = seek_gap / ANNOTATION_FPS
    margin_s = skip_margin_frames() * step
    stats.update(decoded=0, seeks=0, redone=0)
    codec = stream.codec_context
    skipping = False  # codec.skip_frame is NONREF now
    skipped_since_seek = False  # frames may be missing from what was decoded since the last seek

    def skip(on: bool) -> None:
        nonlocal skipping, skipped_since_seek
        if on != skipping:
            codec.skip_frame = "NONREF" if on else "DEFAULT"
            skipping = on
            skipped_since_seek = skipped_since_seek or on

    def frame_time(frame) -> float:
        return float((frame.pts - start) * time_base) if frame.pts is not None else float(frame.time or 0.0)

    converted: tuple[object, np.ndarray] | None = None  # (frame, its array): several targets may share one frame

    def rgb(frame) -> np.ndarray:
        nonlocal converted
        if converted is None or converted[0] is not frame:
            converted = (frame, _to_rgb(frame, stream))
        return converted[1]

    i = 0
    position: float | None = None  # time of the last decoded frame
    restart = False  # a seek landed past its target (bad index): decode from the start instead
    redo = False  # frames near a target were skipped: seek again and decode it all
    seeked_for = -1  # the target the last seek was for: never seek twice for one target (no loops)
    # pictures muxed out of display order (`VideoMeasure.reorder`) can lie before a seek's landing
    # point in the file although they are shown after it: decode from the start once where a gap shows it
    rewind_for_gaps = facts.reorder > 0
    while i < len(targets):
        tau = targets[i] / ANNOTATION_FPS
        restarted = restart
        seeked_for = i
        stats["seeks"] += 1
        if restart:
            _rewind(container, stream, start)
            restart = False
            skipped_since_seek = False
        elif position is None or tau - position > gap_s or redo:
            offset = start + int(max(0.0, tau - half) / time_base)
            container.seek(offset, stream=stream, backward=True, any_frame=False)
            skipped_since_seek = False
        redo = False
        skip(False)  # until the first frame says how far the seek landed from the target
        prev_t, prev = 0.0, None
        damage: list[Exception] = []
        for frame in _in_display_order(_until_error(container.decode(stream), damage), facts.reorder, frame_time):
            stats["decoded"] += 1
            t = frame_time(frame)
            if prev is None:
                if t - half > tau and not restarted:
                    log.debug("seek to %.2f s landed at %.2f s; decoding from the start", tau, t)
                    restart = True
                    break
                prev_t, prev = t, frame
                skip(skip_nonref and tau - t > margin_s)
                continue
            # `prev` is the nearest frame for every target before the midpoint of prev and this one.
            mid = (prev_t + t) / 2
            if (rewind_for_gaps and not restarted and t - prev_t > 1.5 * step
                    and targets[i] / ANNOTATION_FPS < t + half):
                log.debug("pictures %.3f-%.3f s are not adjacent near target %.3f s in a stream muxed out of display "
                          "order; decoding from the start", prev_t, t, targets[i] / ANNOTATION_FPS)
                rewind_for_gaps, restart = False, True
                break
            if skipped_since_seek and t - prev_t > 1.5 * step and targets[i] / ANNOTATION_FPS < t + half:
                # a skipped frame may lie between prev and this one, nearer to the next target than
                # either: decode this stretch again without skipping (a video with real gaps ends
                # here too, and is then decoded as without skip_nonref)
                log.debug("frames %.3f-%.3f s are not adjacent near target %.3f s; decoding again without skipping",
                          prev_t, t, targets[i] / ANNOTATION_FPS)
                skip_nonref, redo = False, True
                skip(False)
                stats["redone"] += 1
                break
            while i < len(targets) and targets[i] / ANNOTATION_FPS < mid:
                yield targets[i], rgb(prev)
                i += 1
            prev_t, prev = t, frame
            position = t
            if i >= len(targets):
                return
            if i != seeked_for and targets[i] / ANNOTATION_FPS - t > gap_s:
                break  # seek across the gap
            skip(skip_nonref and targets[i] / ANNOTATION_FPS - t > margin_s)
        else:
            if damage:
                # No later frame can be nearer to a target at or before the last sound frame's time.
                while prev is not None and i < len(targets) and targets[i] / ANNOTATION_FPS <= prev_t + 1e-6:
                    yield targets[i], rgb(prev)
                    i += 1
                raise damage[0]
            if prev is None and not restarted:
                log.debug("seek to %.2f s gave no picture; decoding from the start", tau)
                restart = True  # some demuxers (MPEG-TS) seek past the last whole picture near the end
                continue
            # End of stream: the last picture covers its own duration (`video_measure.frames_covered`).
            if prev is not None:
                shown = float(prev.duration * time_base) if prev.duration else step
                while i < len(targets) and targets[i] < frames_covered(prev_t, shown):
                    yield targets[i], rgb(prev)
                    i += 1
            return


def _rewind(container, stream, start: int) -> None:
    """Back to the file's first packet. Seeking to the first picture's time is not enough: the
    first packets can carry later times (open GOPs, a demuxer's imprecise index)."""
    try:
        container.seek(0, backward=True)  # time 0 in microseconds: before any stream's first packet
    except Exception:  # noqa: BLE001 - a demuxer that cannot seek there: the stream's own start
        container.seek(min(start, stream.start_time if stream.start_time is not None else start), stream=stream,
                       backward=True, any_frame=False)


def _until_error(frames: Iterator, error: list[Exception]) -> Iterator:
    """`frames` until it raises; the exception is appended to `error` (so the caller can still serve
    what the frames before the damage cover) and the iteration just stops."""
    try:
        yield from frames
    except Exception as e:  # noqa: BLE001 - FFmpeg errors on corrupt data come in many types
        error.append(e)


def stream_clips(
    path: str | Path,
    requests: Mapping[Hashable, np.ndarray | Iterable[int]],
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    seek_gap: int = DEFAULT_SEEK_GAP,
    stats: dict[str, int] | None = None,
    facts: VideoMeasure | None = None,
) -> Iterator[tuple[Hashable, np.ndarray | DecodeError]]:
    """Decode a video once for all its requests; yield each request's frames as soon as they are complete.

    Each request (a clip, a window) is an integer array of 0-based 25 fps frame indices, any shape
    (e.g. (K,) or (W, F)), duplicates allowed. The video is decoded once with `read_frames` over the
    union of all indices; a frame is kept only while a request not yet yielded needs it.

    Args:
        path: the video file.
        requests: request id -> frame indices (non-empty).
        transform: applied once per decoded frame, (H, W, 3) uint8 -> any array (e.g. resize + crop),
            before it is kept; None keeps the full frame.
        seek_gap, stats: see `read_frames`.
        facts: the video's measured facts (`data prepare` stores them); None: measured here.

    Yields:
        (request id, frames) with frames shaped `indices.shape + frame.shape`, in the order the
        requests' last frames come (ties: the order of `requests`); or (request id, DecodeError) for
        each request that cannot be served: every request on an "open" error, the requests not yet
        served on a "decode" error met mid-video (the ones yielded before it stay valid), and
        `PastEnd` for those needing frames after the video's end. Every request is yielded once.

    Raises:
        ValueError: an empty request or a negative index (a caller bug, not bad input).
    """
    plans = {key: np.asarray(idx, dtype=np.int64) for key, idx in requests.items()}
    waiting: dict[int, int] = {}  # frame index -> requests not yet yielded that need it
    for key, idx in plans.items():
        if idx.size == 0:
            raise ValueError(f"request {key!r} has no frame indices")
        if idx.min() < 0:
            raise ValueError(f"request {key!r} has a negative frame index {int(idx.min())}")
        for i in np.unique(idx).tolist():
            waiting[i] = waiting.get(i, 0) + 1
    by_last = sorted(plans, key=lambda k: int(plans[k].max()))  # stable: ties keep the given order
    kept: dict[int, np.ndarray] = {}
    served = 0

    def take(key: Hashable) -> np.ndarray | DecodeError:
        idx = plans[key]
        pictures = [kept[i] for i in idx.reshape(-1).tolist()]
        for i in np.unique(idx).tolist():
            waiting[i] -= 1
            if waiting[i] == 0:
                del kept[i]  # no request left needs it: release the memory now
        shapes = list(dict.fromkeys(p.shape for p in pictures))  # in the order they are shown
        if len(shapes) > 1:  # a damaged or spliced stream: no array holds both
            return DecodeError("decode", f"{Path(path).name}: the picture size changes within the video "
                                         f"({' -> '.join(f'{s[1]}x{s[0]}' for s in shapes)} pixels); "
                                         "re-encode it")
        frames = np.stack(pictures)
        return frames.reshape(*idx.shape, *frames.shape[1:])

    try:
        facts = measure(path, facts)
        for index, rgb in read_frames(path, waiting.keys(), seek_gap=seek_gap, stats=stats, facts=facts):
            kept[index] = rgb if transform is None else transform(rgb)
            # read_frames yields every index in increasing order until the end or an error, so a
            # request whose last index has come has all its frames.
            while served < len(by_last) and int(plans[by_last[served]].max()) <= index:
                key = by_last[served]
                served += 1
                yield key, take(key)
    except DecodeError as e:
        if served < len(by_last):
            log.debug("%s: %s; %d request(s) not served", Path(path).name, e, len(by_last) - served)
        for key in by_last[served:]:
            yield key, e
        return
    # The video ended before the remaining requests' last frames.
    for key in by_last[served:]:
        missing = sorted(i for i in np.unique(plans[key]).tolist() if i not in kept)
        yield key, PastEnd(past_end_message(Path(path).name, missing, facts), missing, facts.frames)
