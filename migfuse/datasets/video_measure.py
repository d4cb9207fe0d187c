"""What a video file really holds, measured by demuxing and decoding, not read from its header.

Container headers lie: a webm written by a browser's MediaRecorder has no duration, a fragmented
MP4 can claim 3,900 s for 3 s of pictures, a cut-short download keeps the header of the whole
file, and an open-GOP stream's `start_time` can be the time of its first *coded* picture, 24
pictures after the first *displayed* one. `measure_video` reads what decodes, once per video at
`data prepare` (stored in videos.csv), or on the spot at extraction for folders prepared before:

* it opens the file and decodes its first pictures (else `VideoUnreadable`, with the reason);
* the time origin is the presentation time of the first displayed picture (the smallest pts among
  the first decoded pictures), so annotation frame 0 is that picture whatever `start_time` says;
* the length is the last picture's time: decoded from the last keyframe the container's index
  knows to the end, or where that is not sure (no index, a seek that lands inside a group of
  pictures, a file cut short after its index, pictures muxed out of display order) from the last
  keyframe found by demuxing every packet (no decoding); the last picture covers its own duration
  (a 1 fps video's last frame keeps its whole second);
* it also records the native frame rate, the size after the display rotation, the header's claim,
  and how far the decoder's output order can run behind display order (`reorder`, see below).

PyAV is imported lazily: `migfuse.datasets` imports without the ``extract`` extra.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from migfuse.datasets.orientation import rotation_degrees

#: The frame rate of the annotation's frame numbering (labels_20200831.csv: start_frame = round(t * 25)).
ANNOTATION_FPS = 25.0
#: Packets compared when measuring `reorder` (the decoder's output delay never exceeds this here).
MAX_REORDER = 64
#: Pictures decoded from the start to find the first displayed one (the smallest pts among them).
FIRST_PICTURES = 4
#: Packets read from the start to measure `reorder` where the decoder emits file order.
HEAD_PACKETS = 4 * MAX_REORDER
#: A time past the end of any video, in microseconds (about 30 years): a backward seek there lands
#: on the last keyframe the container's index knows.
FAR_AHEAD_US = 10**15
#: FFmpeg's AV_CODEC_PROP_REORDER: the codec's decoder emits pictures in display order itself.
_CODEC_REORDERS = 8


class VideoUnreadable(Exception):
    """The file is not a decodable video; the message is the reason (0-byte file, no video stream,
    the decoder's error, no picture decodes)."""


@dataclass(frozen=True)
class VideoMeasure:
    """What decodes from one video (`measure_video`).

    Attributes:
        frames: decoded length in annotation (25 fps) frames: indices 0..frames-1 have a picture.
        origin: stream time in seconds of the first displayed picture (annotation frame 0).
        fps: native frame rate (pictures per second).
        width, height: picture size in pixels after the display rotation.
        header_frames: the container header's length in 25 fps frames; None when it gives none.
        reorder: the most pictures that can come out of the decoder before one displayed earlier:
            0 where the decoder reorders itself (H.264, HEVC, MPEG-2/4...) or the packets are in
            display order; more for an intra-only stream (MJPEG, ProRes...) muxed out of display
            order. Decoding keeps this many pictures back to serve them in display order.
        rotation: clockwise display turn in degrees (0, 90, 180, 270).
    """

    frames: int
    origin: float
    fps: float
    width: int
    height: int
    header_frames: int | None = None
    reorder: int = 0
    rotation: int = 0

    @property
    def header_disagrees(self) -> bool:
        """Does the header claim a length more than one frame off what decodes?"""
        return self.header_frames is not None and abs(self.header_frames - self.frames) > 1

    def cut_short_before(self, frame: int) -> bool:
        """Is annotation frame ``frame`` missing because the file is cut short or damaged (its header
        claims more frames than decode, and ``frame`` is within the claim), not because labels point
        past the end? The one rule `data prepare` and extraction use to name the cause."""
        return (self.header_frames is not None and self.header_frames > self.frames + 1
                and self.frames <= frame < self.header_frames)

    @property
    def not_25_fps(self) -> bool:
        return abs(self.fps - ANNOTATION_FPS) > 0.01


def native_fps(stream) -> float:
    """The stream's frame rate from its header (average, else guessed, else base rate; 25 if none)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else ANNOTATION_FPS


def header_frames(container, stream) -> int | None:
    """The container header's length in annotation (25 fps) frames; None when it states none."""
    fps = native_fps(stream)
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    elif stream.frames:
        seconds = stream.frames / fps
    else:
        return None
    if stream.frames and abs(fps - ANNOTATION_FPS) < 1e-3:
        return int(stream.frames)  # exact when the header has it
    return int(round(seconds * ANNOTATION_FPS))


def frames_covered(last_time: float, last_duration: float) -> int:
    """Annotation frames served by pictures up to one shown at `last_time` s (from the origin) for
    `last_duration` s: the indices f with f / 25 < last_time + last_duration (`decode` serves the same)."""
    return max(0, math.ceil((last_time + last_duration) * ANNOTATION_FPS - 1e-6))


def measure_video(path: str | Path) -> VideoMeasure:
    """Measure a video file (see the module doc). Cost: one pass over the packets (no decoding) plus
    the decoding of the first few pictures and of the last group of pictures.

    Raises:
        VideoUnreadable: 0-byte or missing file, not a media file, no video stream, no picture
            decodes, or the decoder fails on the first pictures (the message quotes its error).
    """
    import av

    p = Path(path)
    if not p.is_file():
        raise VideoUnreadable(f"{p} does not exist")
    if p.stat().st_size == 0:
        raise VideoUnreadable("the file is empty (0 bytes)")
    try:
        return _measure(av, p)
    except (VideoUnreadable, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg fails on hostile files in many ways: a reason, not a crash
        raise VideoUnreadable(f"FFmpeg fails on it ({type(e).__name__}: {_reason(e)})") from None


def _measure(av, p: Path) -> VideoMeasure:
    container = _open(av, p)
    try:
        if not container.streams.video:
            raise VideoUnreadable("the file has no video stream")
        stream = container.streams.video[0]
        # a decoder that reorders (B-frames, open GOPs) emits display order; others emit file order
        reorder = 0 if _decoder_reorders(stream) else _reorder_depth(_packets(container, stream, HEAD_PACKETS)[0])
    finally:
        container.close()
    container = _open(av, p)  # read again from the start: seeking back fails on some damaged files
    try:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1000)
        claimed = header_frames(container, stream)
        first = _first_pictures(container, stream, max(reorder + 1, FIRST_PICTURES))
        if not first:
            raise VideoUnreadable("the file holds no video frame (a video stream is declared, none decodes)")
        origin_pts = min(_pts(f) for f in first)
        shown = min(first, key=_pts)
        degrees = rotation_degrees(shown) or rotation_degrees(stream)
        w, h = shown.width, shown.height
        if degrees in (90, 270):
            w, h = h, w
        fps = native_fps(stream)
        # pictures muxed out of display order: the last packets need not hold the last picture
        last = _last_group_of_pictures(container, stream) if reorder == 0 else None
    finally:
        container.close()
    if last is None:
        last = _last_picture_by_demuxing(av, p, first)
    last_pts, last_dur = last
    if last_dur <= 0:
        last_dur = int(round(1.0 / fps / float(time_base))) or 1
    last_time = float((last_pts - origin_pts) * time_base)
    frames = frames_covered(last_time, float(last_dur * time_base))
    return VideoMeasure(frames=frames, origin=float(origin_pts * time_base), fps=round(fps, 6),
                        width=int(w), height=int(h), header_frames=claimed, reorder=reorder, rotation=degrees)


def _decoder_reorders(stream) -> bool:
    try:
        return bool(stream.codec_context.codec.properties & _CODEC_REORDERS)
    except Exception:  # noqa: BLE001 - no decoder for this codec: the first pictures say why
        return False


def _open(av, path: Path):
    try:
        return av.open(str(path))
    except Exception as e:  # noqa: BLE001 - any open failure is a bad input, reported with its reason
        raise VideoUnreadable(f"cannot open the file, it is not a readable media file ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _pts(frame) -> int:
    return frame.pts if frame.pts is not None else 0


def _packets(container, stream, limit: int | None = None) -> tuple[np.ndarray, dict[int, int], int | None]:
    """Every packet's pts in file order (the first `limit`), packet durations by pts, and the last
    keyframe's pts."""
    pts: list[int] = []
    durations: dict[int, int] = {}
    last_key = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            pts.append(packet.pts)
            if packet.duration:
                durations[packet.pts] = packet.duration
            if packet.is_keyframe:
                last_key = packet.pts
            if limit is not None and len(pts) >= limit:
                break
    except Exception:  # noqa: BLE001 - a damaged tail: the packets before it are what the file holds
        pass
    return np.asarray(pts, dtype=np.int64), durations, last_key


def _reorder_depth(pts: np.ndarray) -> int:
    """The most earlier packets (within `MAX_REORDER`) with a later pts than one packet: a decoder
    that emits pictures in file order needs this many held back to emit them in display order."""
    if len(pts) < 2:
        return 0
    w = min(MAX_REORDER, len(pts) - 1)
    padded = np.concatenate([np.full(w, np.iinfo(np.int64).min), pts])
    windows = np.lib.stride_tricks.sliding_window_view(padded, w + 1)  # (n, w + 1): w before, then self
    return int((windows[:, :w] > windows[:, w:]).sum(axis=1).max())


def _first_pictures(container, stream, n: int) -> list:
    """The first `n` pictures decoded from the start of the file (fewer when the file has fewer)."""
    frames = []
    try:
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) >= n:
                break
    except Exception as e:  # noqa: BLE001 - FFmpeg errors on corrupt data come in many types
        if not frames and type(e).__name__ == "DecoderNotFoundError":
            raise VideoUnreadable(f"this FFmpeg build has no decoder for its codec "
                                  f"({stream.codec_context.name}); re-encode it (e.g. H.264)") from None
        if not frames:
            raise VideoUnreadable(f"the decoder fails on the first picture "
                                  f"({type(e).__name__}: {_reason(e)})") from None
    return frames


def _last_group_of_pictures(container, stream) -> tuple[int, int] | None:
    """(pts, duration) of the last picture, decoded from the last keyframe the container's index
    knows to the end; None where that is not sure (the seek fails, lands on no keyframe, or nothing
    decodes after it: a file cut short after its index was written), so the packets are read."""
    best: tuple[int, int] | None = None
    try:
        container.seek(FAR_AHEAD_US, backward=True)  # the last keyframe before the end
        for frame in container.decode(stream):
            if best is None and not frame.key_frame:
                return None  # landed inside a group of pictures: the ones before it are unknown
            if best is None or _pts(frame) >= best[0]:
                best = (_pts(frame), int(frame.duration or 0))
    except Exception:  # noqa: BLE001 - damage at the end: read the packets instead
        return None
    return best


def _last_picture_by_demuxing(av, p: Path, first: list) -> tuple[int, int]:
    """(pts, duration) of the last picture: every packet is read (no decoding) for the last keyframe,
    then decoded from there to the end."""
    container = _open(av, p)
    try:
        _, durations, last_key = _packets(container, container.streams.video[0])
    finally:
        container.close()
    container = _open(av, p)
    try:
        pts, duration = _last_picture(container, container.streams.video[0], last_key, first)
    finally:
        container.close()
    return pts, duration or durations.get(pts, 0)


def _last_picture(container, stream, last_key: int | None, first: list) -> tuple[int, int]:
    """(pts, duration) of the last picture that decodes: decoded from the last keyframe to the end,
    else (no keyframe to seek to, or nothing decodes after it) from the start."""
    best: tuple[int, int] | None = None
    for start in ([last_key, None] if last_key is not None else [None]):
        try:
            if start is None:
                container.seek(0)
            else:
                container.seek(start, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if best is None or _pts(frame) >= best[0]:
                    best = (_pts(frame), int(frame.duration or 0))
        except Exception:  # noqa: BLE001 - damage at the end: the pictures before it count
            pass
        if best is not None:
            break
    if best is None:
        f = max(first, key=_pts)
        best = (_pts(f), int(f.duration or 0))
    return best


@dataclass
class MeasuredVideos:
    """What `measure_videos` found, for the prepare report and the console (the same counts)."""

    per_video: dict[str, dict]  # video id -> {"decoded_frames", "header_frames" (where it differs), "fps" (where
    # not 25), "width", "height"} or {"unreadable": reason}
    problems: list[dict]
    rotated: dict[str, int]

    def totals(self) -> dict[str, int]:
        """Counts of the report's ``video_files`` section: measured (decodable), unreadable, header
        length differs, not at 25 fps."""
        rows = self.per_video.values()
        return {"measured": sum("decoded_frames" in r for r in rows),
                "unreadable": sum("unreadable" in r for r in rows),
                "header_differs": sum("header_frames" in r for r in rows),
                "not_25_fps": sum("fps" in r for r in rows)}


def measure_videos(videos: dict, *, progress: bool = True) -> MeasuredVideos:
    """Measure every video of a manifest that has a file (`measure_video`), once, with a progress bar;
    fill each `VideoInfo`'s ``measured``, ``unreadable`` and ``rotation``.

    Args:
        videos: video id -> `manifest.VideoInfo` (the file is ``dataset_root / video_path``).
    Returns:
        the per-video report rows, the problems (``unreadable_video``, ``header_length_differs``,
        ``not_25_fps``) and the rotated videos (id -> clockwise degrees).
    Raises:
        ImportError: PyAV (the ``extract`` extra) is not installed.
    """
    import logging

    import av  # noqa: F401 - fails here, before the bar, when PyAV is missing
    from migfuse.progress_bar import progress_bar

    log = logging.getLogger("migfuse.datasets.prepare")
    result = MeasuredVideos({}, [], {})
    todo = {vid: info for vid, info in sorted(videos.items()) if info.video_path is not None}
    for vid, info in progress_bar(todo.items(), total=len(todo), desc="videos", unit="video", disable=not progress):
        path = info.dataset_root / info.video_path if info.dataset_root else info.video_path  # not $MIGFUSE_VIDEO_ROOT
        try:
            facts = measure_video(path)
        except VideoUnreadable as e:
            info.measured, info.unreadable = None, str(e)
            result.per_video[vid] = {"unreadable": str(e)}
            result.problems.append({"kind": "unreadable_video", "video_id": vid, "path": str(path),
                                    "detail": f"{path.name}: {e}; its clips cannot be extracted (re-download or "
                                              "re-encode it)"})
            log.warning("video %s (%s) is unreadable: %s", vid, path.name, e)
            continue
        info.measured, info.unreadable, info.rotation = facts, "", facts.rotation
        row: dict = {"decoded_frames": facts.frames, "width": facts.width, "height": facts.height}
        if facts.header_disagrees:
            row["header_frames"] = facts.header_frames
            result.problems.append({"kind": "header_length_differs", "video_id": vid, "path": str(path),
                                    "detail": f"{path.name} decodes {facts.frames} frames at 25 fps, its header "
                                              f"claims {facts.header_frames}; frames are placed by what decodes"})
        elif facts.header_frames is None:
            row["header_frames"] = None
            result.problems.append({"kind": "header_length_differs", "video_id": vid, "path": str(path),
                                    "detail": f"{path.name} decodes {facts.frames} frames at 25 fps, its header "
                                              "states no length; frames are placed by what decodes"})
        if facts.not_25_fps:
            row["fps"] = facts.fps
            detail = (f"{path.name} runs at {facts.fps:g} fps, not 25: annotation frames and skeleton rows assume "
                      "25 fps (frames are mapped by time: check that its labels and skeleton use 25 fps)")
            result.problems.append({"kind": "not_25_fps", "video_id": vid, "path": str(path), "detail": detail})
            log.warning("video %s: %s", vid, detail)
        if facts.rotation:
            result.rotated[vid] = facts.rotation
            log.info("video %s (%s) is stored rotated: its track asks for a %d degree clockwise turn to "
                     "display; extraction decodes it upright", vid, path.name, facts.rotation)
        result.per_video[vid] = row
    return result
