"""Display rotation of a video track, applied to decoded frames as players and the ffmpeg CLI do.

Phones store the coded picture in sensor orientation and write a display matrix into the track
header ("rotate 90 degrees to display"; older FFmpeg builds exposed it as the stream tag
``rotate``). The ffmpeg CLI applies it by default (``-autorotate``, ``fftools/ffmpeg_filter.c``:
``get_rotation`` -> ``transpose=clock`` for 90, ``hflip,vflip`` for 180, ``transpose=cclock`` for
270), and so does every player. PyAV 18 exposes the matrix on each decoded frame as
``VideoFrame.rotation`` (counter-clockwise degrees, FFmpeg's ``av_display_rotation_get``) but
``to_ndarray`` returns the coded picture; `upright` turns it as ffmpeg would. Mirrored matrices
(a flip on top of the turn) are not produced by phones and are not handled.

No torch here: this runs in the loader worker processes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _normalise(degrees: float) -> int:
    """Nearest of 0, 90, 180, 270 (ffmpeg rounds the matrix angle the same way)."""
    return int(round(float(degrees) / 90.0)) % 4 * 90


def rotation_degrees(source) -> int:
    """Clockwise turn in degrees (0, 90, 180, 270) that shows a video's coded picture upright.

    ``source`` is a decoded ``av.VideoFrame`` (its display matrix, ``frame.rotation``, counter-
    clockwise) or an ``av`` video stream (the ``rotate`` tag older FFmpeg builds set, clockwise).
    0 when neither says anything.
    """
    rotation = getattr(source, "rotation", None)
    if rotation is not None:
        return _normalise(-float(rotation))
    metadata = getattr(source, "metadata", None) or {}
    tag = metadata.get("rotate")
    if tag:
        try:
            return _normalise(float(tag))
        except ValueError:
            log.debug("ignoring a non-numeric rotate tag %r", tag)
    return 0


def upright(frame_hwc: np.ndarray, degrees: int) -> np.ndarray:
    """Turn an (H, W, C) frame clockwise by ``degrees`` (a multiple of 90); (W, H, C) for 90 / 270.

    Returns the frame itself for 0, else a C-contiguous copy.
    """
    turns = _normalise(degrees) // 90
    if turns == 0:
        return frame_hwc
    return np.ascontiguousarray(np.rot90(frame_hwc, k=-turns))


def video_rotation(path: str | Path) -> int:
    """`rotation_degrees` of a video file: its stream tag, else its first decoded frame.

    Raises:
        OSError / av.error.FFmpegError: the file cannot be opened or decoded.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return 0
        stream = container.streams.video[0]
        tagged = rotation_degrees(stream)
        if tagged:
            return tagged
        for frame in container.decode(stream):
            return rotation_degrees(frame)
    return 0
