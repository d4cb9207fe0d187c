"""Draw the seated figure from its skeleton, so that video and skeleton always agree.

Limbs are thick segments between skeleton points, hands are finger strokes, and the head is a real
face photo (a crop of scikit-image's public-domain `astronaut`, shipped as assets/face.png) pasted at
the head centre, so that MTCNN finds a face as it would in the real videos.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from migfuse.synth.pose import FACE0, HEIGHT, LHAND0, RHAND0, WIDTH

_ASSET = Path(__file__).with_name("assets") / "face.png"
_ARMS = [(1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (9, 12)]
_FINGERS = [(0, 4 * f + 1) for f in range(5)] + [(4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(1, 4)]


@lru_cache(maxsize=1)
def face_image() -> np.ndarray:
    """The face photo (62, 52, 3) uint8 and its elliptical alpha, as (62, 52, 4) float32."""
    from PIL import Image

    rgb = np.asarray(Image.open(_ASSET).convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = (((xx - w / 2 + 0.5) / (w / 2)) ** 2 + ((yy - h / 2 + 0.5) / (h / 2)) ** 2 <= 1.0).astype(np.float32)
    return np.dstack([rgb, alpha])


def _segment(img: np.ndarray, p: np.ndarray, q: np.ndarray, radius: float, colour: np.ndarray) -> None:
    """Fill the pixels within `radius` of segment pq (in place)."""
    x0 = int(max(0, min(p[0], q[0]) - radius - 1))
    x1 = int(min(img.shape[1], max(p[0], q[0]) + radius + 2))
    y0 = int(max(0, min(p[1], q[1]) - radius - 1))
    y1 = int(min(img.shape[0], max(p[1], q[1]) + radius + 2))
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = q - p
    length2 = float(d @ d) or 1.0
    t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / length2, 0.0, 1.0)
    dist2 = (xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2
    img[y0:y1, x0:x1][dist2 <= radius * radius] = colour


def render_frame(points: np.ndarray, background: np.ndarray, shirt: np.ndarray, skin: np.ndarray,
                 face_gain: float) -> np.ndarray:
    """One RGB frame (240, 320, 3) uint8 of the figure whose skeleton is `points` (137, 3).

    An all-zero skeleton (nobody detected) draws only the background.
    """
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = background
    img[200:, :] = (background * 0.6).astype(np.uint8)  # the table edge
    if not points[:, 2].any():
        return img
    xy = points[:, :2]
    chest = np.array([0.0, 28.0])
    _segment(img, xy[1] + chest, xy[8] - chest / 2, 30.0, shirt)  # torso from below the neck to the hips
    for a, b in _ARMS:
        _segment(img, xy[a], xy[b], 7.0, shirt)
    _segment(img, xy[1], xy[0], 6.0, skin)  # neck
    for base in (RHAND0, LHAND0):
        for a, b in _FINGERS:
            _segment(img, xy[base + a], xy[base + b], 1.6, skin)
        _segment(img, xy[base], xy[base], 4.0, skin)  # palm
    _paste_face(img, xy[FACE0 : FACE0 + 70].mean(axis=0), face_gain)
    # hands in front of the face are drawn again on top (touching chin, ear, head)
    for base in (RHAND0, LHAND0):
        if xy[base, 1] < xy[1, 1]:
            for a, b in _FINGERS:
                _segment(img, xy[base + a], xy[base + b], 1.6, skin)
            _segment(img, xy[base], xy[base], 4.0, skin)
    return img


def _paste_face(img: np.ndarray, centre: np.ndarray, gain: float) -> None:
    face = face_image()
    h, w = face.shape[:2]
    top, left = int(round(centre[1] - h / 2)), int(round(centre[0] - w / 2))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(img.shape[0], top + h), min(img.shape[1], left + w)
    if y0 >= y1 or x0 >= x1:
        return
    patch = face[y0 - top : y1 - top, x0 - left : x1 - left]
    alpha = patch[..., 3:]
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + patch[..., :3] * gain * alpha, 0, 255).astype(np.uint8)
