"""Pooled views: small token sets derived once from the full cache groups, for training on a laptop.

Full iMiGUE tokens are tens of GB (video alone: 393 x 768 fp16 = 0.6 MB per clip), and a fusion
head's training step costs about tokens x width^2 x depth (measured: fuse/heads/cmtf.py). A view
pools each clip's tokens into a few tokens once, and stores them as group ``views/<name>`` in the
same cache:

    clip | video       (N,)               the source group's ids (clips, or videos), its row dimension
    tokens             (N, [W,] n, D)     fp16 pooled tokens ([W,] = windows of per-video tracks);
                                          dims (clip, [window,] token, channel)
    mask               (N, [W,] n) bool   True for real tokens (False: no face, padded window)

many clips per chunk (one writer), with provenance = source group + its provenance + pooling.
Every fusion input, view or raw group, reaches the heads in this one layout (`as_tokens`).

Poolings (name: source arrays -> tokens per clip):
  video_time   video tokens (393, 768) -> (1 + 8, 768): class token + mean over the 7x7 grid per
               time step (windowed (W, 393, 768): the same, averaged over the valid windows)
  video_cls    video tokens -> (1, 768): class token only
  pose_parts   joint/bone features (256, T', V) -> (time_steps + parts, 256): mean over joints per
               time step (adaptively pooled to time_steps) + mean over time per body-part group
  pose_time    joint/bone features -> (time_steps, 256)
  pose_grid    PoseC3D feature maps (512, T', H'*W') -> (time_steps + cells^2, 512): mean over the map per
               time step + mean over time per cell of the map pooled to cells x cells (default 4 x 4)
  face_keep    face features (K, 512) ++ logits (K, 7), mask (K,) -> (K, 519) (nothing pooled: K is small)
  context_cls_mean  context tokens (K, 393, 768), valid (K,) -> (K, 2, 768): class token + mean of
               the spatio-temporal tokens per window
  raw          no pooling: the layout conversion used when training reads a raw group (the
               default of groups written by `cache import`, which name it in their provenance)

Video tokens without a class token (Video Swin: (T'*7*7, C), said by the source's provenance
`token_layout`, see data_cache/token_layout.py) pool the same way with `class_token=False`: video_time
gives one token per time step, video_cls and context_cls_mean the mean of all tokens. PoseC3D groups
(a heatmap feature map on the pose axis) default to `pose_grid` and refuse `pose_parts`.

This module must not import torch (the laptop derives views with numpy + zarr only).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from migfuse.data_cache.group_check import mark_rows_failed, verify_group
from migfuse.data_cache.store import DONE, ArraySpec, GroupSpec, TokenCache, TokenGroup
from migfuse.data_cache.token_layout import VIDEO_GRID, check_fits, layout_params, layout_pooling, token_layout
from migfuse.data_cache.tracks import TRACKS, VIEW_PREFIX, track_of_group, tracks_with_layout
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar
from migfuse.registry import Registry

log = logging.getLogger(__name__)

POSE_TIME_STEPS = 8
POSE_PARTS = 6
POSE_GRID_CELLS = 4       # pose_grid: a PoseC3D 8x8 map -> 4x4 = 16 spatial tokens (2x2 positions each)
CHUNK_BYTES = 8 << 20     # ~8 MB per chunk: few files, fast sequential reads on a laptop

#: Tracks whose rows are videos (not clips); from the track table (data_cache/tracks.py).
PER_VIDEO_TRACKS = tuple(t.name for t in TRACKS.values() if t.per_video)
#: Default pooling per track, and the track's modality name in training configs.
DEFAULT_POOLING = {t.name: t.pooling for t in TRACKS.values()}

Pooled = dict[str, np.ndarray]  # {"tokens": (B, [W,] n, D) float, "mask": (B, [W,] n) bool}


@dataclass(frozen=True)
class Pooling:
    """A registered pooling: the tracks it applies to, and `fn(arrays, **params) -> Pooled`."""

    tracks: tuple[str, ...]
    fn: Callable[..., Pooled]


#: Pooling name -> Pooling; `migfuse cache view --pooling` chooses among these.
POOLINGS: Registry[Pooling] = Registry("pooling")


def register_pooling(name: str, tracks: tuple[str, ...]) -> Callable[[Callable[..., Pooled]], Callable[..., Pooled]]:
    """Decorator: a pooling `fn(arrays, **params) -> {"tokens", "mask"}` for the given tracks.

    `arrays` are stacked source arrays as `TokenGroup.read_many` returns them (ragged ones padded,
    with ``<name>_len``).

    Raises:
        ValueError: `name` is registered already.
    """

    def wrap(fn: Callable[..., Pooled]) -> Callable[..., Pooled]:
        POOLINGS.register(name, Pooling(tuple(tracks), fn))
        return fn

    return wrap


def list_poolings() -> dict[str, tuple[str, ...]]:
    """Pooling name -> tracks it applies to."""
    return {name: p.tracks for name, p in POOLINGS.load_all().items()}


# ----- poolings ------------------------------------------------------------------------------------
def _video_windows(a: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Video tokens as (B, W, 393, D) plus a (B, W) bool of valid windows (W = 1 when not windowed)."""
    x = a["tokens"]
    if x.ndim == 3:
        return x[:, None], np.ones(x.shape[:1] + (1,), bool)
    lengths = a["tokens_len"]
    return x, np.arange(x.shape[1])[None, :] < lengths[:, None]


def _mean_windows(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, W, ...) averaged over valid windows -> (B, ...)."""
    w = valid.astype(np.float32).reshape(valid.shape + (1,) * (x.ndim - 2))
    return (x * w).sum(1) / np.maximum(w.sum(1), 1.0)


def _cls_and_time(x: np.ndarray, grid: int, class_token: bool = True) -> np.ndarray:
    """(..., 1 + T*grid, D) -> (..., 1 + T, D): class token, then the mean of each time step's grid;
    without a class token (..., T*grid, D) -> (..., T, D)."""
    body = x[..., 1:, :] if class_token else x
    steps = body.shape[-2] // grid
    if body.shape[-2] != steps * grid:
        raise UserError(f"video tokens of {body.shape[-2]} patches are not whole time steps of {grid} (grid); "
                        "the source's token layout does not fit this pooling: use --pool raw")
    body = body.reshape(*body.shape[:-2], steps, grid, body.shape[-1]).mean(-2)
    return np.concatenate([x[..., :1, :], body], axis=-2) if class_token else body


@register_pooling("video_time", tracks_with_layout("video_tokens"))
def video_time(a: Mapping[str, np.ndarray], grid: int = VIDEO_GRID, class_token: bool = True) -> Pooled:
    x, valid = _video_windows(a)
    tokens = _mean_windows(_cls_and_time(x.astype(np.float32), grid, class_token), valid)
    return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}


@register_pooling("video_cls", tracks_with_layout("video_tokens"))
def video_cls(a: Mapping[str, np.ndarray], class_token: bool = True) -> Pooled:
    """The class token; without one, the mean of all tokens."""
    x, valid = _video_windows(a)
    first = x[:, :, :1] if class_token else x.mean(2, keepdims=True, dtype=np.float32)
    tokens = _mean_windows(first.astype(np.float32), valid)
    return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}


def adaptive_mean(x: np.ndarray, steps: int, axis: int) -> np.ndarray:
    """Average `x` along `axis` into `steps` near-equal bins (like adaptive_avg_pool1d)."""
    n = x.shape[axis]
    edges = [(math.floor(i * n / steps), math.ceil((i + 1) * n / steps)) for i in range(steps)]
    return np.stack([np.take(x, range(s, max(e, s + 1)), axis=axis).mean(axis) for s, e in edges], axis=axis)


def part_groups(n_joints: int, parts: int | Sequence[Sequence[int]]) -> list[list[int]]:
    """Joint index groups: an explicit list of groups, or `parts` contiguous runs of the joint axis.

    Contiguous runs approximate body parts because skeleton layouts list joints part by part
    (body, face, left hand, right hand); pass explicit groups for an exact split.
    """
    if isinstance(parts, int):
        parts = min(parts, n_joints)
        return [list(range(math.floor(i * n_joints / parts), math.floor((i + 1) * n_joints / parts)))
                for i in range(parts)]
    groups = [list(map(int, g)) for g in parts]
    bad = [j for g in groups for j in g if not 0 <= j < n_joints]
    if bad or not all(groups):
        raise UserError(f"pose part groups {parts} do not fit {n_joints} joints; fix --parts")
    return groups


def _pose_time(feats: np.ndarray, time_steps: int) -> np.ndarray:
    """(B, C, T', V) -> (B, time_steps, C): mean over joints, then adaptive mean over time."""
    per_step = feats.mean(-1)  # (B, C, T')
    return adaptive_mean(per_step, min(time_steps, per_step.shape[-1]), axis=-1).transpose(0, 2, 1)


@register_pooling("pose_time", tracks_with_layout("pose_features"))
def pose_time(a: Mapping[str, np.ndarray], time_steps: int = POSE_TIME_STEPS) -> Pooled:
    tokens = _pose_time(a["features"].astype(np.float32), time_steps)
    return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}


@register_pooling("pose_parts", tracks_with_layout("pose_features"))
def pose_parts(a: Mapping[str, np.ndarray], time_steps: int = POSE_TIME_STEPS,
               parts: int | Sequence[Sequence[int]] = POSE_PARTS) -> Pooled:
    feats = a["features"].astype(np.float32)  # (B, C, T', V)
    over_time = feats.mean(2)  # (B, C, V)
    part_tokens = np.stack([over_time[..., g].mean(-1) for g in part_groups(feats.shape[-1], parts)], axis=1)
    tokens = np.concatenate([_pose_time(feats, time_steps), part_tokens], axis=1)
    return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}


@register_pooling("pose_grid", tracks_with_layout("pose_features"))
def pose_grid(a: Mapping[str, np.ndarray], time_steps: int = POSE_TIME_STEPS, cells: int = POSE_GRID_CELLS,
              grid: Sequence[int] | None = None) -> Pooled:
    """PoseC3D feature maps (B, C, T', H'*W') -> tokens (B, time_steps + rows * cols, C), all real.

    The pose axis of a PoseC3D group is not joints but the H' x W' positions (row-major) of the last
    stage's map over the heatmap crop, so averaging runs of it as body parts (`pose_parts`) mixes
    distant places and loses where the motion is. Here tokens 0..time_steps-1 are the mean over all
    positions per time step, adaptively pooled over T' (as `pose_time`); the next rows * cols tokens are
    the mean over time of the map adaptively pooled to rows x cols = min(cells, H') x min(cells, W')
    cells, row-major: token time_steps + r * cols + c averages the map rows of bin r and columns of
    bin c (an 8x8 map with cells=4: 2x2 positions each).

    Args:
        grid: the map's [H', W'] (from the group's `token_layout`); None: a square map.
    Raises:
        UserError: the position axis is not H' x W' (or not square when `grid` is None).
    """
    feats = a["features"].astype(np.float32)  # (B, C, T', H'*W')
    b, c, _, positions = feats.shape
    h, w = (int(grid[0]), int(grid[1])) if grid is not None else (math.isqrt(positions),) * 2
    if h * w != positions:
        raise UserError(f"pose_grid: {positions} map positions are not a {h}x{w} grid; the source's token layout "
                        "does not fit this pooling: use --pool pose_time")
    maps = feats.mean(2).reshape(b, c, h, w)
    cells_map = adaptive_mean(adaptive_mean(maps, min(cells, h), axis=2), min(cells, w), axis=3)
    spatial = cells_map.reshape(b, c, -1).transpose(0, 2, 1)  # (B, rows * cols, C), row-major
    tokens = np.concatenate([_pose_time(feats, time_steps), spatial], axis=1)
    return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}


@register_pooling("face_keep", tracks_with_layout("face_frames"))
def face_keep(a: Mapping[str, np.ndarray]) -> Pooled:
    tokens = np.concatenate([a["features"], a["logits"]], axis=-1).astype(np.float32)
    return {"tokens": tokens, "mask": a["mask"].astype(bool)}


@register_pooling("context_cls_mean", tracks_with_layout("context_tokens"))
def context_cls_mean(a: Mapping[str, np.ndarray], class_token: bool = True) -> Pooled:
    """Per window: the class token and the mean of the others; without a class token, the mean only."""
    x = a["tokens"].astype(np.float32)  # (B, K, 393, D), K padded when ragged
    valid = _context_valid(a)
    parts = [x[:, :, 0], x[:, :, 1:].mean(2)] if class_token else [x.mean(2)]
    return {"tokens": np.stack(parts, axis=2), "mask": np.repeat(valid[..., None], len(parts), axis=-1)}


def _context_valid(a: Mapping[str, np.ndarray]) -> np.ndarray:
    valid = a["valid"].astype(bool)
    if "tokens_len" in a:  # ragged windows: padding rows are never valid
        valid &= np.arange(valid.shape[1])[None, :] < a["tokens_len"][:, None]
    return valid


@register_pooling("raw", tuple(TRACKS))
def raw(a: Mapping[str, np.ndarray], track: str = "") -> Pooled:
    """Full-resolution tokens in the fusion layout (what a view would be without pooling)."""
    layout = TRACKS[track].layout if track in TRACKS else None
    if layout == "video_tokens":
        x, valid = _video_windows(a)
        tokens = _mean_windows(x.astype(np.float32), valid)
        return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}
    if layout == "pose_features":
        f = a["features"]  # (B, C, T', V) -> (B, T'*V, C): one token per (time step, joint)
        tokens = f.reshape(f.shape[0], f.shape[1], -1).transpose(0, 2, 1)
        return {"tokens": tokens, "mask": np.ones(tokens.shape[:-1], bool)}
    if layout == "face_frames":
        return face_keep(a)
    if layout == "context_tokens":
        valid = _context_valid(a)
        return {"tokens": a["tokens"], "mask": np.repeat(valid[..., None], a["tokens"].shape[2], axis=-1)}
    raise UserError(f"no raw token layout for track {track!r}; use a view of it")


# ----- groups -> token sets -------------------------------------------------------------------------
def track_of(group: TokenGroup) -> str:
    """The track a group holds ("video", "joint", ...): from a view's provenance, else its name."""
    if group.name.startswith(VIEW_PREFIX):
        return group.provenance["track"]
    return group.name.split("/")[0]


def is_view(group: TokenGroup) -> bool:
    return group.name.startswith(VIEW_PREFIX)


def as_tokens(group: TokenGroup, arrays: Mapping[str, np.ndarray]) -> Pooled:
    """Arrays read from a view or a raw group (`read_many`) -> {"tokens", "mask"} in fusion layout."""
    if is_view(group):
        return {"tokens": arrays["tokens"], "mask": arrays["mask"].astype(bool)}
    return raw(arrays, track=track_of(group))


def source_arrays(track: str) -> list[str] | None:
    """Source arrays a pooling of this track reads (None = all); skips e.g. face global tokens."""
    arrays = TRACKS[track].source_arrays if track in TRACKS else None
    return list(arrays) if arrays else None


def make_view(cache: TokenCache | str, name: str, source: str, pooling: str | None = None,
              overwrite: bool = False, batch_size: int | None = None, **params: Any) -> TokenGroup:
    """Derive view ``views/<name>`` from group `source` with `pooling` (default: by track).

    Resumable: clips already in the view are skipped, new done clips of the source are added.
    Raises UserError when the source is absent/empty or the view exists with another provenance
    (unless `overwrite`).
    """
    cache = TokenCache(cache) if not isinstance(cache, TokenCache) else cache
    src = cache.group(source)
    if is_view(src):
        raise UserError(f"'{source}' is already a view; derive views from a track group (see `migfuse cache info`)")
    track = track_of(src)
    row_shape = src.arrays["features"].shape if "features" in src.arrays else None
    layout = token_layout(src.provenance, row_shape)
    # an imported group names its own default (its tokens are not the track's backbone's layout), and a
    # layout that is not the track's (PoseC3D's feature map) picks its pooling
    pooling = (pooling or src.provenance.get("default_pooling") or layout_pooling(layout)
               or DEFAULT_POOLING.get(track))
    chosen = POOLINGS.get(pooling)  # UserError naming the known poolings
    fn = chosen.fn
    if track not in chosen.tracks:
        raise UserError(f"pooling {pooling!r} does not apply to track {track!r} ({source}); "
                        f"it is for {', '.join(chosen.tracks)}")
    check_fits(pooling, layout, source)
    _check_params(pooling, fn, params)
    if pooling == "raw":
        params = {**params, "track": track}
    params = {**layout_params(pooling, src.provenance, row_shape), **params}  # the user's own parameters win
    done = src.done_ids()
    if not done:
        raise UserError(f"cache group '{source}' in {cache.path} has no finished clips; "
                        "run its `migfuse extract` first")
    names = source_arrays(track)
    given = params
    params = effective_params(fn, params, row_shape)
    for key, unit in (("time_steps", "time steps"), ("cells", "map rows/columns")):
        if key in given and given[key] > params[key]:  # the pooling keeps at most what the source has
            log.warning("%s: %s %d is more than the %d %s of %s; the view keeps %d", VIEW_PREFIX + name,
                        key, given[key], params[key], unit, source, params[key])
    record = {"name": pooling, **params}
    if not overwrite and VIEW_PREFIX + name in cache.group_names():
        # the same effective pooling recorded otherwise (a default left out, by an earlier release, or a
        # size the source did not have) is the same view: keep its record so it resumes
        was = cache.group(VIEW_PREFIX + name).provenance.get("pooling")
        if isinstance(was, dict) and was.get("name") == pooling and effective_params(
                fn, {k: v for k, v in was.items() if k != "name"}, row_shape) == params:
            record = was
    probe = fn(src.read_many(done[:1], names), **params)
    tokens_shape, mask_shape = probe["tokens"].shape[1:], probe["mask"].shape[1:]
    bytes_per_clip = int(np.prod(tokens_shape)) * 2 + int(np.prod(mask_shape))
    spec = GroupSpec(
        name=VIEW_PREFIX + name,
        ids=src.ids,
        arrays={"tokens": ArraySpec(tokens_shape, "float16"), "mask": ArraySpec(mask_shape, "bool")},
        provenance={"kind": "view", "track": track, "source": source,
                    "source_provenance": src.provenance, "pooling": record},
        clips_per_chunk=max(1, min(4096, CHUNK_BYTES // max(bytes_per_clip, 1))),
        row_dim=src.row_dim,
    )
    if overwrite:
        cache.delete_group(spec.name)
    view = cache.require_group(spec)
    have = set(view.done_ids())
    stale = stale_rows(view, src)
    if stale:
        log.warning("%s: %d rows were pooled from other rows than %s holds now (extracted again since, or pooled "
                    "by an earlier release; e.g. %s); pooling them again", spec.name, len(stale), source, stale[0])
        view.forget(stale)
        have -= set(stale)
    damaged = verify_group(view)  # a lost or corrupt chunk file of done rows (views are small: cheap)
    if damaged:
        n = mark_rows_failed(view, damaged)
        log.warning("%s: %d rows sat in a damaged or missing chunk file (e.g. %s); pooling them again",
                    spec.name, n, damaged[0].chunk)
        have = set(view.done_ids())
    todo = [i for i in done if i not in have]
    batch_size = batch_size or max(1, min(len(todo), (256 << 20) // max(_source_bytes(src), 1)))
    for start in progress_bar(range(0, len(todo), batch_size), desc=f"view {name}", unit="batch"):
        ids = todo[start : start + batch_size]
        pooled = fn(src.read_many(ids, names), **params)
        view.write_many(ids, {"tokens": pooled["tokens"].astype(np.float16), "mask": pooled["mask"]},
                        rowdefs=src.rowdefs(ids))
    log.info("view %s: %d new, %d total of %d ids, %s tokens per row", spec.name, len(todo),
             len(have) + len(todo), len(src.ids), tuple(tokens_shape))
    return view


def effective_params(fn: Callable[..., Pooled], params: Mapping[str, Any],
                     row_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The parameters `fn` pools with: `params` over every default of `fn`, with time_steps and cells
    cut to what a source row of `row_shape` ((C, T', V) features) holds; JSON values (as recorded)."""
    out = {p.name: p.default for p in inspect.signature(fn).parameters.values()
           if p.name != "a" and p.default is not inspect.Parameter.empty}
    out.update(params)
    if row_shape is not None and len(row_shape) == 3:
        if isinstance(out.get("time_steps"), int):
            out["time_steps"] = min(out["time_steps"], int(row_shape[1]))
        if isinstance(out.get("cells"), int):
            grid = out.get("grid") or (math.isqrt(int(row_shape[2])),) * 2
            out["cells"] = min(out["cells"], max(int(g) for g in grid))
    return json.loads(json.dumps(out))


#: the pooling parameters a user sets (`cache view --time-steps/--parts/--cells`); the others (grid,
#: class_token, track) follow from the source's token layout
USER_PARAMS = ("time_steps", "parts", "cells")


def _check_params(pooling: str, fn: Callable[..., Pooled], params: Mapping[str, Any]) -> None:
    """Refuse a parameter the pooling does not take (e.g. --parts with pose_time) in one line."""
    takes = [p for p in inspect.signature(fn).parameters if p != "a"]
    extra = [p for p in params if p not in takes]
    if extra:
        options = ", ".join("--" + p.replace("_", "-") for p in extra)
        settable = ", ".join("--" + p.replace("_", "-") for p in takes if p in USER_PARAMS)
        raise UserError(f"pooling {pooling!r} takes no {options}; drop it (its options: {settable or 'none'})")


def stale_rows(view: TokenGroup, source: TokenGroup, ids: Sequence[str] | None = None) -> list[str]:
    """Done rows of `view` (of `ids`, default all) pooled from another row definition than the one
    `source` holds now: rows extracted again since (a changed frame range), or rows pooled by a
    release that did not record row definitions while the source records them."""
    have = view.done_ids() if ids is None else [i for i, s in zip(ids, view.status(ids)) if s == DONE]
    now = dict(zip(have, source.rowdefs(have)))
    return [i for i, pooled in zip(have, view.rowdefs(have)) if pooled != now[i]]


def _source_bytes(group: TokenGroup) -> int:
    """Bytes of one source row (to size read batches to ~256 MB)."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in group.arrays.values())


def track_groups(cache: TokenCache) -> dict[str, list[str]]:
    """Track -> its (non-view) groups in the cache, sorted."""
    sources: dict[str, list[str]] = {}
    for g in cache.group_names():
        track = None if g.startswith(VIEW_PREFIX) else track_of_group(g)
        if track is not None:
            sources.setdefault(track.name, []).append(g)
    return {t: sorted(gs) for t, gs in sorted(sources.items())}


def default_views(cache: TokenCache | str, overwrite: bool = False) -> dict[str, str]:
    """Make the default view of every track present in the cache; return modality -> view group.

    One view per track, named ``views/<track>`` (e.g. views/video with `video_time` pooling). When a
    track has several backbones (joint/agcn and joint/aagcn) the first in sorted order is used and
    the choice is logged, an extracted group before an imported one (`cache import`), so importing
    features never changes an existing default view; call `make_view` for the others. Returns {}
    for a cache without track groups (e.g. a views-only copy made by `export_views`).
    """
    cache = TokenCache(cache) if not isinstance(cache, TokenCache) else cache
    out: dict[str, str] = {}
    for track, groups in track_groups(cache).items():
        if len(groups) > 1:
            groups = sorted(groups, key=lambda g: cache.group(g).provenance.get("kind") == "imported")
            log.info("track %s has groups %s; the default view uses %s", track, groups, groups[0])
        source = groups[0]
        if not cache.group(source).done_ids():
            log.warning("skipping %s: no finished rows (`migfuse cache info %s` says why); rerun its extract, "
                        "or remove it: `migfuse cache drop %s %s`", source, cache.path, cache.path, source)
            continue
        out[track] = make_view(cache, track, source, overwrite=overwrite).name
    return out


def export_views(cache: TokenCache | str, out: TokenCache | str, batch_rows: int = 4096) -> dict[str, int]:
    """Copy every view of `cache` (only its done rows) into the cache `out`: what a laptop needs to
    `fuse train` / `fuse eval`, without the full tokens. Returns view -> rows copied.

    Views keep their ids, arrays and provenance (including the source group's provenance), so a
    view that `out` already has is resumed, and one made with other settings is refused (UserError).
    The copy is written in the current format, so it also opens in xarray when `cache` is older.
    Raises UserError when `cache` is absent or has no views, or `out` is `cache` or another folder.
    """
    cache = TokenCache(cache) if not isinstance(cache, TokenCache) else cache
    out = TokenCache(out) if not isinstance(out, TokenCache) else out
    if out.path.resolve() == cache.path.resolve():
        raise UserError(f"export-views would write {out.path} onto itself; give another destination, e.g. laptop.zarr")
    if not (cache.path / "zarr.json").is_file():
        raise UserError(f"no token cache at {cache.path} (create it with `migfuse extract ...`, or check the path)")
    if out.path.exists() and not (out.path / "zarr.json").is_file() and any(out.path.iterdir()):
        raise UserError(f"{out.path} exists and is not a token cache; give a new path for the views-only copy")
    views = [g for g in cache.group_names() if g.startswith(VIEW_PREFIX)]
    if not views:
        raise UserError(f"cache {cache.path} has no views to export; "
                        f"make them first: `migfuse cache view {cache.path} --defaults`")
    copied: dict[str, int] = {}
    for name in views:
        src = cache.group(name)
        dst = out.require_group(src.spec)
        have = set(dst.done_ids())
        stale = stale_rows(dst, src)  # rows pooled again in `cache` since the last export
        dst.forget(stale)
        have -= set(stale)
        todo = [i for i in src.done_ids() if i not in have]
        for start in progress_bar(range(0, len(todo), batch_rows), desc=f"export {name}", unit="batch"):
            ids = todo[start : start + batch_rows]
            dst.write_many(ids, src.read_many(ids), rowdefs=src.rowdefs(ids))
        copied[name] = len(todo)
        log.debug("%s: %d rows copied, %d already there", name, len(todo), len(have))
    return copied
