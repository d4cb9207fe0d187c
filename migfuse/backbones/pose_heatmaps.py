"""PoseC3D's input: pseudo-heatmap volumes built from 2-D keypoints as mmaction2's test pipeline builds them.

The steps and their defaults are those of mmaction2 1.x (and pyskl) `val_pipeline` of the PoseC3D
configs (`configs/skeleton/posec3d/slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint.py`):

    UniformSampleFrames(clip_len=48, num_clips=1, test_mode=True, seed=255) -> PoseDecode ->
    PoseCompact(hw_ratio=1., allow_imgpad=True) -> Resize(scale=(-1, 64)) -> CenterCrop(64) ->
    GeneratePoseTarget(sigma=0.6, use_score=True, with_kp=True | with_limb=True) -> FormatShape('NCTHW_Heatmap')

The keypoint steps (`sample_frames`, `transform_keypoints`) are numpy. The costly step, drawing the
Gaussians, is vectorised over clips, persons, frames and channels in two equal implementations:
`draw_heatmaps` (numpy) and `draw_heatmaps_torch` (any torch device; torch is imported only there).
A Gaussian is cut to the window int(mu -+ 3 sigma) as in the original, and scores below 1e-4 draw nothing.
Where the original mixes float32 and float64 (NumPy 1.x scalar rules), the numpy path does the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from migfuse.errors import UserError

if TYPE_CHECKING:
    import torch

#: COCO-17 limbs of GeneratePoseTarget's default `skeletons` (pairs of keypoint indices).
COCO_LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (5, 7), (7, 9), (0, 6), (6, 8), (8, 10), (5, 11), (11, 13),
    (13, 15), (6, 12), (12, 14), (14, 16), (11, 12))
#: left / right COCO-17 keypoints and limbs swapped by a flip (GeneratePoseTarget defaults)
LEFT_KP, RIGHT_KP = (1, 3, 5, 7, 9, 11, 13, 15), (2, 4, 6, 8, 10, 12, 14, 16)
LEFT_LIMB, RIGHT_LIMB = (0, 2, 4, 5, 6, 10, 11, 12), (1, 3, 7, 8, 9, 13, 14, 15)
#: GeneratePoseTarget's "no keypoint" score
EPS = 1e-4
#: the fields of an mmaction2 / pyskl skeleton annotation read here
ANNOTATION_FIELDS = ("keypoint", "keypoint_score", "img_shape", "total_frames")


@dataclass(frozen=True)
class HeatmapConfig:
    """The pipeline's settings (mmaction2 names); the defaults are the PoseC3D NTU60 configs' val_pipeline."""

    clip_len: int = 48
    num_clips: int = 1
    seed: int = 255
    padding: float = 0.25
    threshold: float = 10.0
    hw_ratio: float | None = 1.0
    allow_imgpad: bool = True
    size: int = 64  # Resize(scale=(-1, size)) then CenterCrop(size)
    sigma: float = 0.6
    use_score: bool = True
    limb: bool = False  # False: with_kp (one channel per keypoint); True: with_limb (one per limb)
    double: bool = False  # test_pipeline's flipped copy (left/right channels swapped, width reversed)
    skeletons: tuple[tuple[int, int], ...] = field(default=COCO_LIMBS)

    def to_dict(self) -> dict[str, Any]:
        """For provenance and `backbone info`: the settings that differ in practice."""
        return {"clip_len": self.clip_len, "num_clips": self.num_clips, "seed": self.seed, "size": self.size,
                "sigma": self.sigma, "use_score": self.use_score, "channels": "limbs" if self.limb else "keypoints",
                "double": self.double, "pose_compact": {"padding": self.padding, "threshold": self.threshold,
                                                        "hw_ratio": self.hw_ratio}}

    def channels(self, num_keypoints: int) -> int:
        return len(self.skeletons) if self.limb else num_keypoints


def sample_frames(total_frames: int, clip_len: int, num_clips: int = 1, seed: int = 255) -> np.ndarray:
    """UniformSampleFrames in test mode: (num_clips * clip_len,) int32 frame indices of a T-frame clip.

    One RandomState(seed) for all clips (the original seeds numpy's global generator the same way,
    which draws the same numbers). Shorter clips loop (indices modulo T)."""
    if total_frames < 1:
        raise UserError("a skeleton clip needs at least one frame (total_frames is 0)")
    rng = np.random.RandomState(seed)
    out = []
    for i in range(num_clips):
        if total_frames < clip_len:
            start = i if total_frames < num_clips else i * total_frames // num_clips
            inds = np.arange(start, start + clip_len)
        elif total_frames < 2 * clip_len:
            picked = rng.choice(clip_len + 1, total_frames - clip_len, replace=False)
            offset = np.zeros(clip_len + 1, dtype=np.int64)
            offset[picked] = 1
            inds = np.arange(clip_len) + np.cumsum(offset)[:-1]
        else:
            bids = np.array([j * total_frames // clip_len for j in range(clip_len + 1)])
            inds = bids[:clip_len] + rng.randint(np.diff(bids))
        out.append(inds)
    return (np.concatenate(out) % total_frames).astype(np.int32)


def _pose_compact(kp: np.ndarray, img_shape: tuple[int, int], cfg: HeatmapConfig) -> tuple[int, int]:
    """PoseCompact, in place on kp (M, T, V, 2) float32: crop to the padded keypoint box; -> new (h, w).

    Zero coordinates mean "missing" and stay zero; a box under `threshold` pixels changes nothing."""
    kp[np.isnan(kp)] = 0.0
    kx, ky = kp[..., 0], kp[..., 1]
    xs, ys = kx[kx != 0], ky[ky != 0]
    if not xs.size or not ys.size:
        return img_shape
    # the original does this arithmetic on NumPy 1.x scalars, i.e. in float64
    min_x, max_x, min_y, max_y = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if max_x - min_x < cfg.threshold or max_y - min_y < cfg.threshold:
        return img_shape
    h, w = img_shape
    cx, cy = (max_x + min_x) / 2, (max_y + min_y) / 2
    half_w = (max_x - min_x) / 2 * (1 + cfg.padding)
    half_h = (max_y - min_y) / 2 * (1 + cfg.padding)
    if cfg.hw_ratio is not None:
        half_h = max(cfg.hw_ratio * half_w, half_h)
        half_w = max(1 / cfg.hw_ratio * half_h, half_w)
    x0, x1, y0, y1 = cx - half_w, cx + half_w, cy - half_h, cy + half_h
    if cfg.allow_imgpad:
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    else:
        x0, y0, x1, y1 = int(max(0, x0)), int(max(0, y0)), int(min(w, x1)), int(min(h, y1))
    kx[kx != 0] -= x0
    ky[ky != 0] -= y0
    return (y1 - y0, x1 - x0)


def transform_keypoints(keypoint: np.ndarray, img_shape: tuple[int, int], cfg: HeatmapConfig
                        ) -> tuple[np.ndarray, tuple[int, int]]:
    """PoseCompact -> Resize(scale=(-1, size)) -> CenterCrop(size) of sampled keypoints.

    keypoint: (M, T, V, 2) x, y in pixels of an image `img_shape` (h, w). Returns the keypoints
    (float32, pixels of the size x size crop) and the crop's (h, w)."""
    kp = np.array(keypoint, dtype=np.float32)  # a copy: PoseCompact works in place
    h, w = _pose_compact(kp, (int(img_shape[0]), int(img_shape[1])), cfg)
    # mmcv rescale_size with scale (inf, size): the short side becomes `size`, the ratio is kept
    factor = min(np.inf / max(h, w), cfg.size / min(h, w))
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    kp *= np.array([new_w / w, new_h / h], dtype=np.float32)
    left, top = (new_w - cfg.size) // 2, (new_h - cfg.size) // 2
    kp -= np.array([left, top], dtype=np.float32)
    return kp, (cfg.size, cfg.size)


def clip_keypoints(annotation: Mapping[str, Any], cfg: HeatmapConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keypoint half of the pipeline for one annotation (mmaction2 field names).

    Returns (frame_inds (num_clips*clip_len,) int32, keypoints (M, num_clips*clip_len, V, 2) float32 in
    pixels of the crop, scores (M, num_clips*clip_len, V) float32: ones when the annotation has none).
    Raises UserError for a missing field or a shape that does not fit."""
    kp, score, img_shape, total = check_annotation(annotation)
    inds = sample_frames(total, cfg.clip_len, cfg.num_clips, cfg.seed)
    kp_s, score_s = kp[:, inds].astype(np.float32), score[:, inds].astype(np.float32)
    kp_s, _ = transform_keypoints(kp_s, img_shape, cfg)
    return inds, kp_s, score_s


def check_annotation(annotation: Mapping[str, Any], where: str = "the annotation"
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """(keypoint (M, T, V, 2), keypoint_score (M, T, V), img_shape (h, w), total_frames) of an annotation,
    checked; UserError naming `where`, the field and what it must be."""
    missing = [k for k in ("keypoint", "img_shape") if k not in annotation]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: give mmaction2's annotation fields keypoint "
                        "(M, T, V, 2), keypoint_score (M, T, V), img_shape (h, w), total_frames")
    kp = np.asarray(annotation["keypoint"])
    if kp.ndim != 4 or kp.shape[-1] < 2 or not np.issubdtype(kp.dtype, np.number):
        raise UserError(f"{where}: keypoint must be a numeric (M, T, V, 2) array, got {kp.dtype} {kp.shape}")
    kp = kp[..., :2]
    if "keypoint_score" in annotation:
        score = np.asarray(annotation["keypoint_score"])
        if score.shape != kp.shape[:3]:
            raise UserError(f"{where}: keypoint_score must be (M, T, V) = {kp.shape[:3]}, got {score.shape}")
    else:
        score = np.ones(kp.shape[:3], dtype=np.float32)
    shape = np.asarray(annotation["img_shape"]).reshape(-1)
    if shape.size != 2 or not np.issubdtype(shape.dtype, np.number) or np.any(shape < 1):
        raise UserError(f"{where}: img_shape must be (height, width) in pixels, got {shape.tolist()}")
    total = np.asarray(annotation.get("total_frames", kp.shape[1]))
    if total.size != 1 or not np.issubdtype(total.dtype, np.integer):
        raise UserError(f"{where}: total_frames must be one integer, got {total.tolist()}")
    total = int(total)
    if total != kp.shape[1] or total < 1:
        raise UserError(f"{where}: total_frames is {total} but keypoint holds {kp.shape[1]} frames")
    return kp, score, (int(shape[0]), int(shape[1])), total


def _windows(lo: np.ndarray, hi: np.ndarray, sigma: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels [st, ed) the original draws in along one axis: max(int(lo - 3s), 0) .. min(int(hi + 3s) + 1, n)."""
    st = np.maximum(np.trunc(lo.astype(np.float64) - 3 * sigma), 0)
    ed = np.minimum(np.trunc(hi.astype(np.float64) + 3 * sigma) + 1, n)
    return st, ed


def _in_window(grid: np.ndarray, st: np.ndarray, ed: np.ndarray) -> np.ndarray:
    return (grid >= st[..., None]) & (grid < ed[..., None])


def draw_heatmaps(kp: np.ndarray, score: np.ndarray, shape: tuple[int, int], sigma: float = 0.6,
                  use_score: bool = True, limb: bool = False,
                  skeletons: tuple[tuple[int, int], ...] = COCO_LIMBS) -> np.ndarray:
    """GeneratePoseTarget (numpy): keypoints (..., M, T, V, 2) float32 pixels and scores (..., M, T, V)
    -> heatmaps (..., T, C, H, W) float32, C = V keypoints or len(skeletons) limbs; the max over persons."""
    kp = np.asarray(kp, dtype=np.float32)
    score = np.asarray(score, dtype=np.float32) if use_score else np.ones(kp.shape[:-1], np.float32)
    h, w = shape
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    if limb:
        a, b = (np.array([s[i] for s in skeletons]) for i in (0, 1))
        maps = _limb_maps(kp[..., a, :], kp[..., b, :], score[..., a], score[..., b], xs, ys, sigma)
    else:
        maps = _point_maps(kp, score, xs, ys, sigma)
    out = maps.max(axis=-5)  # over persons: (..., T, C, H, W)
    return np.maximum(out, 0).astype(np.float32)


def _point_maps(kp: np.ndarray, value: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float) -> np.ndarray:
    """One Gaussian per point, cut to its window: (..., 2), (...) -> (..., H, W) float32."""
    mx, my = kp[..., 0], kp[..., 1]
    sx, ex = _windows(mx, mx, sigma, xs.size)
    sy, ey = _windows(my, my, sigma, ys.size)
    dx = (xs - mx[..., None]) ** 2  # (..., W) float32
    dy = (ys - my[..., None]) ** 2  # (..., H)
    patch = np.exp(-(dx[..., None, :] + dy[..., :, None]) / 2 / sigma ** 2) * value[..., None, None]
    mask = _in_window(ys, sy, ey)[..., :, None] & _in_window(xs, sx, ex)[..., None, :]
    keep = (value >= EPS)[..., None, None]
    return np.where(mask & keep, patch, 0).astype(np.float32)


def _limb_maps(pa: np.ndarray, pb: np.ndarray, va: np.ndarray, vb: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               sigma: float) -> np.ndarray:
    """One Gaussian tube per limb a-b (distance to the segment), cut to the limbs' box +- 3 sigma; a limb
    shorter than one pixel draws the point a with a's score, as the original does."""
    coeff_v = np.minimum(va, vb)
    sx, ex = _windows(np.minimum(pa[..., 0], pb[..., 0]), np.maximum(pa[..., 0], pb[..., 0]), sigma, xs.size)
    sy, ey = _windows(np.minimum(pa[..., 1], pb[..., 1]), np.maximum(pa[..., 1], pb[..., 1]), sigma, ys.size)
    x, y = xs[None, :], ys[:, None]
    ax, ay = pa[..., 0, None, None], pa[..., 1, None, None]
    bx, by = pb[..., 0, None, None], pb[..., 1, None, None]
    d2_a = (x - ax) ** 2 + (y - ay) ** 2  # float32 (..., H, W)
    d2_b = (x - bx) ** 2 + (y - by) ** 2
    d2_ab = (pa[..., 0] - pb[..., 0]) ** 2 + (pa[..., 1] - pb[..., 1]) ** 2
    safe_ab = np.where(d2_ab < 1, 1, d2_ab)[..., None, None]
    coeff = (d2_a - d2_b + safe_ab) / 2. / safe_ab
    px = x - (ax + coeff * (bx - ax))
    py = y - (ay + coeff * (by - ay))
    d2_line = px ** 2 + py ** 2
    d2 = np.where(coeff <= 0, d2_a, np.where(coeff >= 1, d2_b, d2_line)).astype(np.float64)
    tube = np.exp(-d2 / 2. / sigma ** 2) * coeff_v[..., None, None].astype(np.float64)
    mask = _in_window(ys, sy, ey)[..., :, None] & _in_window(xs, sx, ex)[..., None, :]
    tube = np.where(mask & (coeff_v >= EPS)[..., None, None], tube, 0).astype(np.float32)
    short = _point_maps(pa, va, xs, ys, sigma)
    short = np.where((coeff_v >= EPS)[..., None, None], short, 0)
    return np.where((d2_ab < 1)[..., None, None], short, tube)


def draw_heatmaps_torch(kp: "torch.Tensor", score: "torch.Tensor", shape: tuple[int, int], sigma: float = 0.6,
                        use_score: bool = True, limb: bool = False,
                        skeletons: tuple[tuple[int, int], ...] = COCO_LIMBS) -> "torch.Tensor":
    """`draw_heatmaps` on torch tensors, on their device (the GPU where extraction runs): the same maths in
    float32 throughout; equal to the numpy path within 1e-6."""
    import torch

    kp = kp.float()
    score = score.float() if use_score else torch.ones(kp.shape[:-1], device=kp.device)
    h, w = shape
    xs = torch.arange(w, dtype=torch.float32, device=kp.device)
    ys = torch.arange(h, dtype=torch.float32, device=kp.device)

    def windows(lo, hi, n):
        st = torch.clamp(torch.trunc(lo.double() - 3 * sigma), min=0)
        ed = torch.clamp(torch.trunc(hi.double() + 3 * sigma) + 1, max=n)
        return st, ed

    def in_window(grid, st, ed):
        return (grid >= st[..., None]) & (grid < ed[..., None])

    def points(p, value):
        mx, my = p[..., 0], p[..., 1]
        sx, ex = windows(mx, mx, w)
        sy, ey = windows(my, my, h)
        dx, dy = (xs - mx[..., None]) ** 2, (ys - my[..., None]) ** 2
        patch = torch.exp(-(dx[..., None, :] + dy[..., :, None]) / 2 / sigma ** 2) * value[..., None, None]
        mask = in_window(ys, sy, ey)[..., :, None] & in_window(xs, sx, ex)[..., None, :]
        return torch.where(mask & (value >= EPS)[..., None, None], patch, torch.zeros((), device=p.device))

    if not limb:
        maps = points(kp, score)
    else:
        a = torch.tensor([s[0] for s in skeletons], device=kp.device)
        b = torch.tensor([s[1] for s in skeletons], device=kp.device)
        pa, pb, va, vb = kp[..., a, :], kp[..., b, :], score[..., a], score[..., b]
        cv = torch.minimum(va, vb)
        sx, ex = windows(torch.minimum(pa[..., 0], pb[..., 0]), torch.maximum(pa[..., 0], pb[..., 0]), w)
        sy, ey = windows(torch.minimum(pa[..., 1], pb[..., 1]), torch.maximum(pa[..., 1], pb[..., 1]), h)
        x, y = xs[None, :], ys[:, None]
        ax, ay = pa[..., 0, None, None], pa[..., 1, None, None]
        bx, by = pb[..., 0, None, None], pb[..., 1, None, None]
        d2_a = (x - ax) ** 2 + (y - ay) ** 2
        d2_b = (x - bx) ** 2 + (y - by) ** 2
        d2_ab = (pa[..., 0] - pb[..., 0]) ** 2 + (pa[..., 1] - pb[..., 1]) ** 2
        safe = torch.where(d2_ab < 1, torch.ones_like(d2_ab), d2_ab)[..., None, None]
        coeff = (d2_a - d2_b + safe) / 2. / safe
        d2_line = (x - (ax + coeff * (bx - ax))) ** 2 + (y - (ay + coeff * (by - ay))) ** 2
        d2 = torch.where(coeff <= 0, d2_a, torch.where(coeff >= 1, d2_b, d2_line))
        tube = torch.exp(-d2 / 2. / sigma ** 2) * cv[..., None, None]
        mask = in_window(ys, sy, ey)[..., :, None] & in_window(xs, sx, ex)[..., None, :]
        keep = (cv >= EPS)[..., None, None]
        zero = torch.zeros((), device=kp.device)
        tube = torch.where(mask & keep, tube, zero)
        short = torch.where(keep, points(pa, va), zero)
        maps = torch.where((d2_ab < 1)[..., None, None], short, tube)
    return maps.amax(dim=-5).clamp(min=0)


def flip_heatmaps(heatmaps: np.ndarray, limb: bool) -> np.ndarray:
    """GeneratePoseTarget(double=True)'s flipped copy of (T, C, H, W): width reversed, left/right swapped."""
    left, right = (LEFT_LIMB, RIGHT_LIMB) if limb else (LEFT_KP, RIGHT_KP)
    idx = np.arange(heatmaps.shape[-3])
    for a, b in zip(left, right):
        idx[a], idx[b] = b, a
    return heatmaps[..., ::-1][..., idx, :, :]


def format_volume(heatmaps: np.ndarray, cfg: HeatmapConfig) -> np.ndarray:
    """FormatShape('NCTHW_Heatmap'): (copies*num_clips*clip_len, C, H, W) -> (copies*num_clips, C, clip_len, H, W)."""
    x = heatmaps.reshape((-1, cfg.clip_len) + heatmaps.shape[1:])
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3, 4))


def build_volume(annotation: Mapping[str, Any], cfg: HeatmapConfig = HeatmapConfig(),
                 device: "str | torch.device | None" = None) -> np.ndarray:
    """The whole pipeline for one annotation: -> (num_clips * (2 if double), C, clip_len, size, size) float32.

    device None: numpy; else the heatmaps are drawn by torch on that device."""
    _, kp, score, = clip_keypoints(annotation, cfg)
    if device is None:
        maps = draw_heatmaps(kp, score, (cfg.size, cfg.size), cfg.sigma, cfg.use_score, cfg.limb, cfg.skeletons)
    else:
        import torch

        maps = draw_heatmaps_torch(torch.from_numpy(kp).to(device), torch.from_numpy(score).to(device),
                                   (cfg.size, cfg.size), cfg.sigma, cfg.use_score, cfg.limb,
                                   cfg.skeletons).cpu().numpy()
    if cfg.double:
        maps = np.concatenate([maps, flip_heatmaps(maps, cfg.limb)])
    return format_volume(maps, cfg)
