"""Face detection with facenet-pytorch's MTCNN, and the choice of one main face per frame of a clip.

iMiGUE shows one interviewed athlete, but other people (journalists, a moderator, faces on a
screen) can appear. Per clip, the main face is anchored on the largest confident face over the
clip's frames, then followed frame by frame: a frame keeps the candidate closest to the last kept
face if it is near enough and of a similar size; otherwise the frame has no main face and is
masked (never filled with another person's face).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from migfuse.backbones._torchvision import import_facenet

log = logging.getLogger(__name__)


@dataclass
class FrameFaces:
    """The faces MTCNN found in one frame, in full-frame pixel coordinates.

    boxes (n, 4) float32 x1, y1, x2, y2; probs (n,) float32; landmarks (n, 5, 2) float32 x, y of
    left eye, right eye, nose, left and right mouth corner. n may be 0.
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> "FrameFaces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


def _as_float_array(value, shape_tail: tuple[int, ...]) -> np.ndarray:
    """MTCNN output for one frame -> float32 array (n, *shape_tail).

    With numpy 2, facenet-pytorch returns object arrays (None for frames without a face, and
    probs like [None]) that numpy's math refuses; turn them into plain float arrays here.
    """
    if value is None:
        return np.zeros((0, *shape_tail), np.float32)
    arr = np.asarray(value, dtype=object) if isinstance(value, (list, tuple)) else np.asarray(value)
    if arr.dtype == object:
        if arr.size == 0 or all(v is None for v in arr.ravel()):
            return np.zeros((0, *shape_tail), np.float32)
        arr = np.array(arr.tolist(), dtype=np.float32)
    return arr.astype(np.float32, copy=False).reshape((-1, *shape_tail))


def parse_mtcnn_output(boxes, probs, landmarks, scale: float = 1.0) -> FrameFaces:
    """One frame's `MTCNN.detect(..., landmarks=True)` output -> FrameFaces (coordinates / `scale`)."""
    b = _as_float_array(boxes, (4,))
    if len(b) == 0:
        return FrameFaces.empty()
    p = _as_float_array(probs, ()).reshape(-1)
    lm = _as_float_array(landmarks, (5, 2))
    return FrameFaces(b / scale, p, lm / scale)


class FaceDetector:
    """MTCNN on CPU or GPU; frames larger than `max_side` are downscaled for detection only.

    MTCNN's cost grows with the image pyramid; faces in iMiGUE (720p press conferences) stay far
    above MTCNN's 20 px minimum at 640 px, and the crop is taken from the full-resolution frame.
    """

    def __init__(self, device: str = "cpu", max_side: int = 640, min_face_size: int = 20):
        facenet = import_facenet()
        self.mtcnn = facenet.MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self.max_side = max_side
        self.min_face_size = min_face_size

    def detect(self, frames: np.ndarray) -> list[FrameFaces]:
        """Faces of each frame. frames (T, H, W, 3) uint8 RGB -> T FrameFaces (full-frame coordinates)."""
        frames = np.asarray(frames)
        if len(frames) == 0:
            return []
        h, w = frames.shape[1:3]
        if min(h, w) < self.min_face_size:
            # No face of the minimum size fits the picture: MTCNN builds no image pyramid for it (its
            # first scale is min_face_size) and fails inside; the frames simply have no face.
            return [FrameFaces.empty() for _ in range(len(frames))]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])
            scale = size[0] / w
        boxes, probs, landmarks = self.mtcnn.detect(np.ascontiguousarray(frames), landmarks=True)
        return [parse_mtcnn_output(boxes[i], probs[i], landmarks[i], scale) for i in range(len(frames))]


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _same_face(ref: np.ndarray, box: np.ndarray, max_shift: float, max_scale: float) -> float | None:
    """Distance between box centres in units of the reference face width, or None when `box` is too far
    away or of a too different size to be the same face."""
    width = max(ref[2] - ref[0], 1e-6)
    dist = np.hypot((box[0] + box[2] - ref[0] - ref[2]) / 2, (box[1] + box[3] - ref[1] - ref[3]) / 2) / width
    ratio = np.sqrt(max(_area(box), 1e-6) / max(_area(ref), 1e-6))
    if dist > max_shift or not (1 / max_scale <= ratio <= max_scale):
        return None
    return float(dist)


def select_main_face(
    faces: list[FrameFaces],
    min_prob: float = 0.9,
    max_shift: float = 1.0,
    max_scale: float = 2.0,
) -> list[int | None]:
    """Index of the main face in each frame (None where it is absent), consistent over the clip.

    Candidates are faces with probability >= `min_prob`. The anchor is the candidate with the
    largest area x probability over all frames; from the anchor's frame the face is followed
    forwards and backwards, each frame keeping the candidate nearest to the last kept box if its
    centre moved by at most `max_shift` face widths and its size changed by at most `max_scale`.
    """
    choice: list[int | None] = [None] * len(faces)
    best = None
    for t, ff in enumerate(faces):
        for i in range(len(ff)):
            if ff.probs[i] >= min_prob:
                score = _area(ff.boxes[i]) * float(ff.probs[i])
                if best is None or score > best[0]:
                    best = (score, t, i)
    if best is None:
        return choice
    _, t0, i0 = best
    choice[t0] = i0
    for order in (range(t0 + 1, len(faces)), range(t0 - 1, -1, -1)):
        ref = faces[t0].boxes[i0]
        for t in order:
            ff = faces[t]
            cands = [
                (d, i)
                for i in range(len(ff))
                if ff.probs[i] >= min_prob and (d := _same_face(ref, ff.boxes[i], max_shift, max_scale)) is not None
            ]
            if cands:
                choice[t] = min(cands)[1]
                ref = ff.boxes[choice[t]]
    return choice
