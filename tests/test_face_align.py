"""Face crops are insightface's `norm_crop` byte for byte (SwinFace's training crops), also where the
crop reaches past the frame border."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from migfuse.extract.face.align import ARCFACE_TEMPLATE, align_face, umeyama_similarity


def _norm_crop(img: np.ndarray, landmark: np.ndarray, image_size: int = 112) -> np.ndarray:
    """insightface/utils/face_align.py (`estimate_norm` + `norm_crop`, arcface mode), as written there."""
    from skimage import transform as trans

    dst = ARCFACE_TEMPLATE * (float(image_size) / 112.0)
    M = _estimate(trans, landmark, dst)[0:2, :]
    return cv2.warpAffine(img, M, (image_size, image_size), borderValue=0.0)


def _estimate(trans, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`SimilarityTransform().estimate(src, dst)` (scikit-image >= 0.26 spells it `from_estimate`)."""
    if hasattr(trans.SimilarityTransform, "from_estimate"):
        return trans.SimilarityTransform.from_estimate(src, dst).params
    tform = trans.SimilarityTransform()
    tform.estimate(src, dst)
    return tform.params


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:300, :260])  # a real photo, (300, 260, 3) uint8


@pytest.mark.parametrize("where", ["inside", "top-left corner", "right edge, tilted"])
def test_crop_is_byte_identical_to_insightface_norm_crop(photo, where):
    # landmarks of a ~60 px face placed so that the 112x112 crop lies inside or straddles the border
    face = ARCFACE_TEMPLATE * 0.55
    if where == "inside":
        landmarks = face + [100.0, 80.0]
    elif where == "top-left corner":
        landmarks = face + [-12.5, -20.25]
    else:
        angle = np.deg2rad(17)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        landmarks = face @ rot.T + [225.3, 140.7]
    ours = align_face(photo, landmarks)
    reference = _norm_crop(photo, landmarks)
    assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, reference)
    outside = (ours == 0).all(axis=2).mean()
    if where == "inside":
        assert outside == 0
    else:
        assert 0.05 < outside < 0.9  # the crop really straddles the frame border


def test_similarity_matches_scikit_image_estimate():
    from skimage import transform as trans

    rng = np.random.default_rng(0)
    landmarks = ARCFACE_TEMPLATE * 1.7 + rng.normal(0, 2, (5, 2)) + [300, 120]
    reference = _estimate(trans, landmarks, ARCFACE_TEMPLATE)[:2]
    np.testing.assert_allclose(umeyama_similarity(landmarks, ARCFACE_TEMPLATE), reference, atol=1e-9)
