"""Decoding the frames a video's clips need, in one forward pass per video (PyAV).

Clips are frame ranges of long untrimmed videos, numbered 0-based at 25 fps as in the iMiGUE
annotation. `read_frames` takes every frame index a video's clips need, sorted, and decodes the
video once, in order: it seeks to the keyframe before the first needed frame, decodes forward, and
seeks again only across gaps longer than `seek_gap` frames. It never restarts from frame 0 per clip.

Annotation index -> video frame: index f means time f / 25 s; the decoded frame whose presentation
time is nearest wins (exact for 25 fps videos; a 30 fps video maps by time).

No torch here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from migfuse.extract.orientation import rotation_degrees, upright

log = logging.getLogger(__name__)

#: The frame rate of the annotation's frame numbering (labels_20200831.csv: start_frame = round(t * 25)).
ANNOTATION_FPS = 25.0
#: Decode through gaps up to this many annotation frames instead of seeking (a seek re-decodes
#: from the previous keyframe, typically 1-10 s back, so short gaps are cheaper to decode).
DEFAULT_SEEK_GAP = 100


class DecodeError(Exception):
    """The video cannot be opened or decoded. `stage` is "open" or "decode"."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


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
    return container, stream


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else ANNOTATION_FPS


def probe(path: str | Path) -> VideoProbe:
    """Frame count (at 25 fps), native fps and size, from the container header (no decoding).

    Raises:
        DecodeError: missing or unreadable file, or no video stream.
    """
    container, stream = _open(path)
    try:
        fps = _fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:
            seconds = stream.frames / fps
        n = int(round(seconds * ANNOTATION_FPS))
        if stream.frames and abs(fps - ANNOTATION_FPS) < 1e-3:
            n = stream.frames  # exact when the header has it
        return VideoProbe(n_frames=n, fps=fps, width=stream.codec_context.width, height=stream.codec_context.height)
    finally:
        container.close()


def read_frames(
    path: str | Path,
    indices: Iterable[int],
    *,
    seek_gap: int = DEFAULT_SEEK_GAP,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(index, frame)` for each needed annotation frame index, in increasing index order.

    Args:
        path: the video file.
        indices: 0-based frame indices at 25 fps (any order, duplicates allowed).
        seek_gap: decode through gaps up to this many frames; seek across longer ones.
        stats: if given, filled with counts "decoded" (frames) and "seeks" (for tests, benchmarks).

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
    container, stream = _open(path)
    try:
        yield from _decode_targets(container, stream, targets, seek_gap, {} if stats is None else stats)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg errors on corrupt data come in many types
        raise DecodeError("decode", f"{Path(path).name}: {type(e).__name__}: {e}") from None
    finally:
        container.close()


def _decode_targets(container, stream, targets: list[int], seek_gap: int,
                    stats: dict[str, int]) -> Iterator[tuple[int, np.ndarray]]:
    time_base = stream.time_base or Fraction(1, 1000)
    start = stream.start_time or 0
    half = 0.5 / _fps(stream)  # half a native frame: the nearest-frame boundary
    gap_s = seek_gap / ANNOTATION_FPS
    stats.update(decoded=0, seeks=0)

    def frame_time(frame) -> float:
        return float((frame.pts - start) * time_base) if frame.pts is not None else float(frame.time or 0.0)

    i = 0
    position: float | None = None  # time of the last decoded frame
    restart = False  # a seek landed past its target (bad index): decode from the start instead
    seeked_for = -1  # the target the last seek was for: never seek twice for one target (no loops)
    while i < len(targets):
        tau = targets[i] / ANNOTATION_FPS
        restarted = restart
        seeked_for = i
        stats["seeks"] += 1
        if restart:
            container.seek(start, stream=stream, backward=True, any_frame=False)
            restart = False
        elif position is None or tau - position > gap_s:
            offset = start + int(max(0.0, tau - half) / time_base)
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        prev_t, prev = 0.0, None
        for frame in container.decode(stream):
            stats["decoded"] += 1
            t = frame_time(frame)
            if prev is None:
                if t - half > tau and not restarted:
                    log.debug("seek to %.2f s landed at %.2f s; decoding from the start", tau, t)
                    restart = True
                    break
                prev_t, prev = t, frame
                continue
            # `prev` is the nearest frame for every target before the midpoint of prev and this one.
            mid = (prev_t + t) / 2
            while i < len(targets) and targets[i] / ANNOTATION_FPS < mid:
                yield targets[i], upright(prev.to_ndarray(format="rgb24"), rotation_degrees(prev))
                i += 1
            prev_t, prev = t, frame
            position = t
            if i >= len(targets):
                return
            if i != seeked_for and targets[i] / ANNOTATION_FPS - t > gap_s:
                break  # seek across the gap
        else:
            # End of stream: the last frame covers targets up to half a frame after it.
            if prev is not None:
                while i < len(targets) and targets[i] / ANNOTATION_FPS < prev_t + half + 1e-6:
                    yield targets[i], upright(prev.to_ndarray(format="rgb24"), rotation_degrees(prev))
                    i += 1
            return
