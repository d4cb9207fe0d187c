"""From iMiGUE OpenPose keypoints to the model input: select, normalise, fill, resample, bones.

A clip of a prepared skeleton (T, 137, 3) (x, y in pixels, OpenPose confidence) becomes
(C=3, L, V, M=1) float32 for the AGCN family, in these explicit steps:

1. select   the layout's points (graphs.Layout.source) -> (T, V, 3)
2. missing  a point with confidence < `min_confidence` is missing: x = y = c = 0 after step 3
3. normalise  centre = the clip's median neck (BODY_25 1), scale = its median shoulder width
            (BODY_25 2-5); one centre and scale per clip keep the clip's own motion. Fallbacks when
            the neck / shoulders are never seen: centre = mean of the detected points, scale = their
            spread (RMS distance to that centre). Confidence stays the third channel, unchanged.
4. fill     frames without a person (mask False or no point detected) copy the nearest frame with a
            person (x, y) with confidence 0, so the model sees a held pose flagged as unseen; a
            clip without any person is all zeros (and `ClipInput.person_frames` is 0).
5. resample to `length` frames: segment i of T/L frames contributes its middle frame (or, for
            training, a random one), so shorter clips repeat frames and longer ones skip.
6. bones    optional: child - parent along the layout's bone pairs (x, y), zero where either end is
            missing; the bone confidence is min(child, parent).

Nothing here produces NaN: every division is guarded and the output is checked.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from migfuse.errors import UserError
from migfuse.backbones.graphs import Layout, get_layout

NECK, R_SHOULDER, L_SHOULDER = 1, 2, 5  # BODY_25 point numbers (= indices into the 137)
STREAMS = ("joint", "bone")


@dataclass(frozen=True)
class PreprocessConfig:
    """How clips are turned into model inputs; stored in checkpoints and cache provenance."""

    layout: str = "imigue"
    length: int = 64
    min_confidence: float = 0.05
    normalisation: str = "clip-median neck centre, shoulder-width scale"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**{k: d[k] for k in ("layout", "length", "min_confidence", "normalisation") if k in d})


@dataclass
class ClipInput:
    """One clip ready for the model: `x` (3, L, V, 1) float32, plus how much of it was seen."""

    x: np.ndarray
    frames: int  # frames of the clip found in the skeleton file
    person_frames: int  # of those, frames with a person


def check_layout(layout: Layout) -> Layout:
    """UserError unless the layout can be read from iMiGUE's 137 OpenPose points."""
    if layout.source is None:
        raise UserError(f"layout '{layout.name}' cannot be read from iMiGUE's 137 OpenPose points; "
                        f"use --layout imigue, openpose22, openpose-18 or coco-17")
    return layout


def _centre_scale(skel: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip centre (2,) and scale from the body: median neck, median shoulder width, with fallbacks."""
    neck = valid[:, NECK]
    centre = np.median(skel[neck, NECK, :2], axis=0) if neck.any() else None
    both = valid[:, R_SHOULDER] & valid[:, L_SHOULDER]
    width = np.linalg.norm(skel[both, R_SHOULDER, :2] - skel[both, L_SHOULDER, :2], axis=-1)
    scale = float(np.median(width)) if both.any() else 0.0
    pts = skel[..., :2][valid]
    if centre is None:
        centre = pts.mean(0) if len(pts) else np.zeros(2)
    if scale <= 1e-6 and len(pts):
        scale = float(np.sqrt(((pts - centre) ** 2).sum(-1).mean()))
    return centre.astype(np.float64), scale if scale > 1e-6 else 1.0


def sample_indices(n: int, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`length` frame indices in [0, n): the middle (or with `rng` a random) frame of each of `length`
    equal segments. n >= 1."""
    edges = np.arange(length + 1) * (n / length)
    if rng is None:
        pos = (edges[:-1] + edges[1:]) / 2
    else:
        pos = edges[:-1] + rng.random(length) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(pos).astype(np.int64), 0, n - 1)


def joints(skel: np.ndarray, mask: np.ndarray | None, layout: Layout, config: PreprocessConfig,
           rng: np.random.Generator | None = None) -> ClipInput:
    """(T, 137, 3) skeleton frames of one clip (+ (T,) person mask) -> ClipInput with x (3, L, V, 1)."""
    layout = check_layout(layout)
    skel = np.asarray(skel, dtype=np.float64)
    t = skel.shape[0]
    v = layout.num_node
    out = np.zeros((3, config.length, v, 1), dtype=np.float32)
    if t == 0:
        return ClipInput(out, 0, 0)
    skel = np.nan_to_num(skel, nan=0.0, posinf=0.0, neginf=0.0)
    valid = skel[..., 2] >= max(config.min_confidence, 1e-12)
    person = valid.any(axis=1)
    if mask is not None:
        person &= np.asarray(mask, dtype=bool)
    valid &= person[:, None]
    if not person.any():
        return ClipInput(out, t, 0)
    centre, scale = _centre_scale(skel, valid)
    sel = list(layout.source)
    pts = skel[:, sel].copy()  # (T, V, 3)
    ok = valid[:, sel]
    pts[..., :2] = (pts[..., :2] - centre) / scale
    pts[~ok] = 0.0
    # Frames without a person take the nearest frame with one (ties: the earlier), confidence 0.
    seen = np.flatnonzero(person)
    nearest = seen[np.clip(np.searchsorted(seen, np.arange(t)), 0, len(seen) - 1)]
    before = seen[np.clip(np.searchsorted(seen, np.arange(t)) - 1, 0, len(seen) - 1)]
    nearest = np.where(np.abs(before - np.arange(t)) <= np.abs(nearest - np.arange(t)), before, nearest)
    filled = pts[nearest]
    filled[~person, :, 2] = 0.0
    idx = sample_indices(t, config.length, rng)
    x = filled[idx].transpose(2, 0, 1)[..., None].astype(np.float32)  # (3, L, V, 1)
    if not np.isfinite(x).all():  # cannot happen by construction; a NaN must never reach the cache
        raise RuntimeError("skeleton preprocessing produced a non-finite value")
    return ClipInput(x, t, int(person.sum()))


def bones(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Bone stream of joints (..., 3, T, V, M) (x, y, conf): x, y = child - parent where both ends are
    seen (conf > 0), else 0; conf = min(child, parent). The root bone (centre, centre) has x = y = 0
    and the centre's confidence, so the model still sees whether the body was found."""
    child = np.array([c for c, _ in layout.bone_pairs])
    parent = np.array([p for _, p in layout.bone_pairs])
    out = np.zeros_like(x)
    c = x[..., 2, :, :, :]  # (..., T, V, M)
    conf = np.minimum(c[..., child, :], c[..., parent, :])
    seen = conf > 0
    for ch in range(2):
        xc = x[..., ch, :, :, :]
        out[..., ch, :, :, :][..., child, :] = np.where(seen, xc[..., child, :] - xc[..., parent, :], 0.0)
    out[..., 2, :, :, :][..., child, :] = conf
    return out


def bones_2s_agcn(x: np.ndarray, layout: Layout) -> np.ndarray:
    """The original data_gen/gen_bone_data.py rule on (N, C, T, V, M): bone[v1] = joint[v1] - joint[v2]
    for every pair, ALL channels (the confidence is differenced too)."""
    out = np.zeros_like(x)
    for v1, v2 in layout.bone_pairs:
        out[:, :, :, v1, :] = x[:, :, :, v1, :] - x[:, :, :, v2, :]
    return out


def clip_input(skel: np.ndarray, mask: np.ndarray | None, stream: str, config: PreprocessConfig,
               rng: np.random.Generator | None = None) -> ClipInput:
    """Joint or bone input (3, L, V, 1) of one clip's skeleton frames (T, 137, 3)."""
    if stream not in STREAMS:
        raise UserError(f"unknown stream '{stream}': choose joint or bone")
    layout = get_layout(config.layout)
    ci = joints(skel, mask, layout, config, rng)
    if stream == "bone":
        ci.x = bones(ci.x, layout)
    return ci


def clip_frames(skeleton: np.ndarray, mask: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames start..end (inclusive, 0-based) of a video's skeleton, clamped to what the file holds."""
    lo, hi = max(int(start), 0), min(int(end) + 1, skeleton.shape[0])
    if hi <= lo:
        return np.zeros((0,) + skeleton.shape[1:], np.float32), np.zeros((0,), bool)
    return np.asarray(skeleton[lo:hi]), np.asarray(mask[lo:hi], dtype=bool)
