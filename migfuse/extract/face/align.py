"""5-landmark similarity alignment to the ArcFace 112x112 template, as insightface's ``norm_crop``.

SwinFace was trained on MS1MV2 crops, which insightface aligns this way
(``insightface/utils/face_align.py``: ``estimate_norm`` + ``norm_crop``): estimate the similarity
transform (rotation, uniform scale, translation; Umeyama 1991, what scikit-image's
``SimilarityTransform.estimate`` computes) that maps the 5 detected landmarks (left eye, right eye,
nose, left and right mouth corners, image coordinates with pixel centres at integer positions) onto
the template, then ``cv2.warpAffine(img, M, (112, 112), borderValue=0.0)``: bilinear, constant
black border. The warp is OpenCV's own call with those flags, so crops are byte-identical to the
original pipeline's, also where a crop reaches past the frame border.
"""
from __future__ import annotations

import numpy as np

CROP_SIZE = 112
#: insightface's ArcFace template for 112x112 crops: (5, 2) x, y of left eye, right eye, nose tip,
#: left and right mouth corner (the subject's right eye is the image's left eye).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping points `src` onto `dst` (Umeyama 1991).

    src, dst: (P, 2) points. Returns the (2, 3) matrix M with dst ~= M[:, :2] @ p + M[:, 2].
    A reflection is never returned (the determinant of the rotation is +1).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    # flip the last axis when the best orthogonal map would be a reflection
    fix = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[-1] = -1
    rot = u @ np.diag(fix) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * fix).sum() / var_s if var_s > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (P, 2) points with a (2, 3) affine matrix -> (P, 2)."""
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def warp_affine(image: np.ndarray, m: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp an (H, W, 3) uint8 image with the (2, 3) matrix `m` (source -> output) into (size, size, 3).

    ``cv2.warpAffine`` with insightface ``norm_crop``'s arguments: bilinear (OpenCV's default),
    ``BORDER_CONSTANT`` with ``borderValue=0.0`` (black outside the source).
    """
    import cv2

    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(m, dtype=np.float64), (size, size),
                          borderValue=0.0)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Aligned face crop. image (H, W, 3) uint8 RGB, landmarks (5, 2) -> (size, size, 3) uint8."""
    m = umeyama_similarity(landmarks, ARCFACE_TEMPLATE * (size / CROP_SIZE))
    return warp_affine(image, m, size)


def to_model_input(crops: np.ndarray) -> np.ndarray:
    """SwinFace input from aligned crops: (N, 112, 112, 3) uint8 RGB -> (N, 3, 112, 112) float32 in [-1, 1]."""
    x = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    return np.ascontiguousarray((x - 0.5) / 0.5)
