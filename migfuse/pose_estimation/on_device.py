"""ViTPose's box warp and reference decoding, batched in torch on the model's device.

transformers' `VitPoseImageProcessor` warps each person box with scipy on the CPU, one channel at a
time (about 17 ms a box for a 720p frame here), and decodes the heatmaps with numpy (about 2.4 ms a
box): on a GPU, where ViTPose-B takes about a millisecond a crop, those two would bound the throughput.
The same arithmetic runs here on whole batches, on the device, and gives what the processor gives
(tests/test_pose_models.py compares both on the same inputs):

* warp (`crop_boxes`): the processor's matrix (`get_warp_matrix` from the box's centre and scale, as
  `box_to_center_and_scale` makes them), inverted in float64 as scipy does; bilinear sampling as
  `scipy.ndimage.affine_transform(order=1, mode="constant")`: a sample outside the frame's pixel
  centres [0, W-1] x [0, H-1] is 0 (no blending with the border), and the uint8 result is rounded
  half up, as scipy writes an integer output. The sample positions are float64 as in scipy, the
  blend float32 (twice as fast on a CPU): a value within float32 rounding of .5 may round the other
  way, one grey level on about 0.05% of the pixels.
* decoding (`decode`): `get_keypoint_predictions` (argmax; -1 where the peak is <= 0), DARK
  (`post_dark_unbiased_data_processing`: a Gaussian blur with sigma 0.8 and the kernel's radius,
  scipy's "reflect" border, log, a Taylor step by the inverse Hessian) and `transform_preds` (cells
  0..w-1 span the padded box edge to edge), including its flat-index arithmetic.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: the Gaussian of the reference DARK step (transformers' post_dark_unbiased_data_processing)
DARK_SIGMA = 0.8


def box_geometry(coco_boxes: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (P, 2) and scales (P, 2) float32 (in units of 200 px, padded by 1.25) of COCO boxes (P, 4)
    x, y, w, h, widened to the model's input aspect: transformers' own `box_to_center_and_scale`."""
    from transformers.models.vitpose.image_processing_vitpose import box_to_center_and_scale

    height, width = input_size
    pairs = [box_to_center_and_scale(box, image_width=width, image_height=height) for box in coco_boxes]
    centers = np.array([c for c, _ in pairs], np.float32).reshape(-1, 2)
    scales = np.array([s for _, s in pairs], np.float32).reshape(-1, 2)
    return centers, scales


def crop_boxes(frame: Any, centers: np.ndarray, scales: np.ndarray, input_size: tuple[int, int]) -> Any:
    """The person crops of one frame, as the processor's affine warp makes them.

    Args:
        frame: (H, W, 3) uint8 torch tensor on the device.
        centers, scales: (P, 2) float32 from `box_geometry`.
        input_size: (height, width) of the crops.
    Returns:
        (P, 3, height, width) uint8 torch tensor on the frame's device.
    """
    import torch
    from transformers.models.vitpose.image_processing_vitpose import get_warp_matrix

    out_h, out_w = input_size
    frame_h, frame_w = frame.shape[:2]
    inverses = []
    for center, scale in zip(centers, scales):
        matrix = get_warp_matrix(0, center * 2.0, np.array((out_w, out_h)) - 1.0, scale * 200.0)
        inverses.append(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2])  # output (x, y) -> frame (x, y)
    inverse = torch.from_numpy(np.stack(inverses)).to(frame.device)           # (P, 2, 3) float64
    rows = torch.arange(out_h, dtype=torch.float64, device=frame.device).view(1, out_h, 1)
    cols = torch.arange(out_w, dtype=torch.float64, device=frame.device).view(1, 1, out_w)
    xs = inverse[:, 0, 0, None, None] * cols + inverse[:, 0, 1, None, None] * rows + inverse[:, 0, 2, None, None]
    ys = inverse[:, 1, 0, None, None] * cols + inverse[:, 1, 1, None, None] * rows + inverse[:, 1, 2, None, None]
    inside = (xs >= 0) & (xs <= frame_w - 1) & (ys >= 0) & (ys <= frame_h - 1)
    x0, y0 = xs.floor(), ys.floor()
    wx, wy = (xs - x0).float().unsqueeze(-1), (ys - y0).float().unsqueeze(-1)
    x0 = x0.long().clamp(0, frame_w - 1)
    y0 = y0.long().clamp(0, frame_h - 1)
    x1, y1 = (x0 + 1).clamp(max=frame_w - 1), (y0 + 1).clamp(max=frame_h - 1)

    def at(y: Any, x: Any) -> Any:
        return frame[y, x].to(torch.float32)                                   # (P, h, w, 3)

    value = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
             + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
    value = torch.where(inside.unsqueeze(-1), value, torch.zeros((), dtype=value.dtype, device=value.device))
    return torch.floor(value + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def _blur_matrix(size: int, radius: int) -> np.ndarray:
    """(size, size) float64 B with B @ v = scipy's 1-D Gaussian filter of v (sigma 0.8, `radius`, "reflect"
    border: d c b a | a b c d): each output row sums the taps, folded back at the edges."""
    taps = np.exp(-0.5 / DARK_SIGMA ** 2 * np.arange(-radius, radius + 1) ** 2)
    taps /= taps.sum()
    source = np.pad(np.arange(size), radius, mode="symmetric")  # index of each extended position
    matrix = np.zeros((size, size))
    for row in range(size):
        np.add.at(matrix[row], source[row:row + 2 * radius + 1], taps)
    return matrix


def _blur(maps: Any, kernel_size: int) -> Any:
    """scipy.ndimage.gaussian_filter(sigma=0.8, radius=(kernel_size - 1) // 2) over the last two axes of
    (N, K, h, w): as two matrix products (rows, then columns), far faster than a one-channel convolution."""
    import torch

    radius = (kernel_size - 1) // 2
    h, w = maps.shape[-2:]
    rows = torch.from_numpy(_blur_matrix(h, radius)).to(maps.device, maps.dtype)
    cols = torch.from_numpy(_blur_matrix(w, radius)).to(maps.device, maps.dtype)
    return rows @ maps @ cols.T


def decode(heatmaps: Any, centers: np.ndarray, scales: np.ndarray, kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) float32 in frame pixels and scores (N, K) float32 (the raw heatmap peaks) from
    heatmaps (N, K, h, w) float torch tensor (any device), with the boxes' centres and scales (N, 2):
    transformers' `keypoints_from_heatmaps` (argmax, DARK, `transform_preds`), batched."""
    import torch

    maps = heatmaps.float()
    n, k, h, w = maps.shape
    scores, index = maps.reshape(n, k, -1).max(dim=2)
    coords = torch.stack([index % w, index // w], dim=-1).float()
    coords = torch.where((scores > 0).unsqueeze(-1), coords, torch.full_like(coords, -1.0))

    logs = torch.log(_blur(maps, kernel_size).clamp(0.001, 50))
    padded = torch.nn.functional.pad(logs, (1, 1, 1, 1), mode="replicate").reshape(-1)
    # the reference's flat index into all padded maps, with numpy's wrap-around of a negative index
    flat = coords[..., 0] + 1 + (coords[..., 1] + 1) * (w + 2)
    flat = flat + (w + 2) * (h + 2) * torch.arange(n * k, device=maps.device).reshape(n, k)
    flat = flat.long().reshape(-1)

    def at(offset: int) -> Any:
        return padded[torch.remainder(flat + offset, padded.numel())]

    centre, right, left = at(0), at(1), at(-1)
    down, up = at(w + 2), at(-(w + 2))
    down_right, up_left = at(w + 3), at(-(w + 3))
    dx, dy = 0.5 * (right - left), 0.5 * (down - up)
    dxx, dyy = right - 2 * centre + left, down - 2 * centre + up
    dxy = 0.5 * (down_right - right - down + centre + centre - left - up + up_left)
    hessian = torch.stack([torch.stack([dxx, dxy], -1), torch.stack([dxy, dyy], -1)], -2).double()
    hessian = torch.linalg.inv(hessian + np.finfo(np.float32).eps * torch.eye(2, dtype=torch.float64,
                                                                                    device=maps.device))
    step = (hessian @ torch.stack([dx, dy], -1).double().unsqueeze(-1)).squeeze(-1)
    refined = (coords.reshape(-1, 2).double() - step).float().reshape(n, k, 2)

    size = torch.from_numpy(scales * np.float32(200.0)).to(maps.device)                     # (N, 2) padded box px
    origin = torch.from_numpy(centers).to(maps.device) - size * 0.5
    per_cell = size / torch.tensor([w - 1.0, h - 1.0], dtype=torch.float32, device=maps.device)
    keypoints = refined * per_cell[:, None, :] + origin[:, None, :]
    return keypoints.cpu().numpy().astype(np.float32), scores.cpu().numpy().astype(np.float32)
