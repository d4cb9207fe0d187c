"""What a group's tokens are laid out as, read from its provenance, and which view poolings fit it.

Backbones whose tokens are not the track's default record `token_layout` in the extraction provenance:

    video / context   {"class_token": False, "grid": [T', H', W']}       Video Swin, VideoMAE, V-JEPA 2
    joint / bone      {"class_token": False, "grid": [T', H', W'],       PoseC3D: features (C, T', H'*W'),
                       "input": "heatmap_volume"}                         the last axis is the H' x W' map

Without one a group keeps its track's default layout: MViTv2-S's class token + 8 x 7 x 7 video
tokens, GCN joints on the pose axis. PoseC3D groups written before they recorded a layout are
recognised by their heatmap recipe (`heatmaps` in the provenance) and a square position axis.

The layout decides (a) the parameters a pooling needs (`layout_params`), (b) the default pooling of
`cache view --defaults` (`layout_pooling`: `pose_grid` for a heatmap feature map), and (c) which
poolings are refused (`check_fits`): `pose_parts` averages runs of the pose axis as body parts, which
mixes distant rows of a feature map, and `pose_grid` needs a map. No torch, no Zarr.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from migfuse.errors import UserError

VIDEO_GRID = 49            # MViTv2-S: 1 class token + 8 time steps x 7 x 7 spatial tokens
HEATMAP_VOLUME = "heatmap_volume"
#: Poolings that read a pose group's last axis as joints / as a spatial feature map.
JOINT_POOLINGS = ("pose_parts",)
MAP_POOLINGS = ("pose_grid",)
_CLASS_TOKEN_POOLINGS = ("video_time", "video_cls", "context_cls_mean")


def token_layout(provenance: Mapping[str, Any], row_shape: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The group's token layout: the recorded `token_layout`, else one inferred for a PoseC3D group.

    Args:
        provenance: the group's provenance (extraction settings).
        row_shape: the per-row shape of its `features` array, (C, T', H'*W') for a pose group; None
            when unknown (nothing is inferred then).
    Returns:
        the layout dict, or None for the track's default layout.
    """
    layout = provenance.get("token_layout")
    if isinstance(layout, Mapping):
        return dict(layout)
    if "heatmaps" in provenance and row_shape is not None and len(row_shape) == 3:
        side = math.isqrt(int(row_shape[2]))
        if side * side == int(row_shape[2]):
            return {"class_token": False, "grid": [int(row_shape[1]), side, side], "input": HEATMAP_VOLUME}
    return None


def is_feature_map(layout: Mapping[str, Any] | None) -> bool:
    """True for a pose group whose position axis is a heatmap feature map (PoseC3D), not joints."""
    return bool(layout) and layout.get("input") == HEATMAP_VOLUME


def layout_pooling(layout: Mapping[str, Any] | None) -> str | None:
    """The default view pooling a layout calls for (None: the track's own default)."""
    return "pose_grid" if is_feature_map(layout) else None


def check_fits(pooling: str, layout: Mapping[str, Any] | None, source: str) -> None:
    """Refuse a pose pooling that reads the position axis as something it is not.

    Raises:
        UserError: `pose_parts` on a feature map (it would average rows of the map as body parts), or
            `pose_grid` on joints; the message names the pooling that fits.
    """
    if pooling in JOINT_POOLINGS and is_feature_map(layout):
        raise UserError(f"pooling {pooling!r} averages joints into body parts, but {source} holds a "
                        f"{layout['grid'][1]}x{layout['grid'][2]} heatmap feature map (PoseC3D); "
                        "use --pool pose_grid (or pose_time)")
    if pooling in MAP_POOLINGS and not is_feature_map(layout):
        raise UserError(f"pooling {pooling!r} pools a heatmap feature map, but {source} holds joints; "
                        "use --pool pose_parts (or pose_time)")


def layout_params(pooling: str, provenance: Mapping[str, Any],
                  row_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The parameters a pooling needs for its source's token layout ({} for the default layout).

    video_time / video_cls / context_cls_mean: `class_token=False` when there is none, and video_time
    the H'*W' tokens of one time step when not MViTv2-S's 49; pose_grid: the map's `grid` [H', W'].
    `provenance` and `row_shape` as `token_layout` takes them.
    """
    layout = token_layout(provenance, row_shape)
    if layout is None:
        return {}
    grid = layout.get("grid")
    grid = [int(g) for g in grid] if isinstance(grid, (list, tuple)) and len(grid) == 3 else None
    if pooling == "pose_grid":
        return {"grid": grid[1:]} if grid else {}
    if pooling not in _CLASS_TOKEN_POOLINGS:
        return {}
    params: dict[str, Any] = {}
    if layout.get("class_token") is False:
        params["class_token"] = False
    if pooling == "video_time" and grid and grid[1] * grid[2] != VIDEO_GRID:
        params["grid"] = grid[1] * grid[2]
    return params
