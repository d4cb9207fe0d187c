"""`migfuse cache import`: features computed elsewhere, written as a cache group that acts as a track.

    plan = plan_import(read_feature_file("i3d.h5"), manifest, track="video", name="i3d")   # checks all
    group = write_import(cache, plan)                                                      # writes

The group is ``<track>/<name>`` (e.g. video/i3d), so views, CMTF, the single heads and late fusion
take it as that track's tokens. Per row the features become tokens (n, D): a vector (D,) one
token, a (T, D) sequence T tokens. They are stored in the track's layout:

    video, joint, bone   clip rows     video: tokens (n, D); joint/bone: features (D, n, 1) (channel,
                                       time, joint: one "joint", the time axis kept)
    context              video rows    tokens (K, n, D) with valid (K,): one window (K = 1) of a
                                       (T, D) sequence, or K windows of a (K, n, D) array

Rows of different lengths are brought to `time_steps` tokens (default 8) by an adaptive mean over
time, so every row has one shape. Features given per video for a clip track are cut into clips by
the manifest's frame ranges when their time axis is known (`stride` frames between features, `fps`
features per second, or video_features' timestamps), else refused with the reason. Ids must match
the manifest (missing, extra and duplicated ids are refused with a short list; `allow_missing`
leaves missing rows unwritten), values must be finite and fit float16 (views and training use it).

Everything is checked before the group is created: a refused import writes nothing. The provenance
holds the source's sha256, the format, the user's description and how rows were made; its
`default_pooling` ("raw") tells `cache view` to keep the tokens as imported. No torch.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from migfuse.data_cache.feature_files import FeatureFile
from migfuse.data_cache.store import ArraySpec, GroupSpec, TokenCache, TokenGroup
from migfuse.data_cache.tracks import TRACKS, Track, get_track, row_definition, row_ids
from migfuse.data_cache.views import CHUNK_BYTES, adaptive_mean
from migfuse.datasets.video_measure import ANNOTATION_FPS
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar

log = logging.getLogger(__name__)

#: Track layouts an import can fill, and the array the tokens go to.
IMPORT_LAYOUTS = {"video_tokens": "tokens", "pose_features": "features", "context_tokens": "tokens"}
IMPORT_TRACKS = tuple(t.name for t in TRACKS.values() if t.layout in IMPORT_LAYOUTS)
DEFAULT_TIME_STEPS = 8
FLOAT16_MAX = float(np.finfo(np.float16).max)
SHOWN = 5  # ids listed in a refusal


@dataclass
class ImportPlan:
    """A checked import: the group spec and its rows, ready to write (`write_import`)."""

    spec: GroupSpec
    rows: dict[str, dict[str, np.ndarray]]
    rowdefs: dict[str, str]
    missing: list[str]
    source: FeatureFile

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-row shape of the main array (tokens or features)."""
        return self.spec.arrays[IMPORT_LAYOUTS[TRACKS[self.track].layout]].shape

    @property
    def track(self) -> str:
        return self.spec.provenance["track"]


def shortlist(ids: Sequence[str]) -> str:
    """'a, b, c, d, e and 12 more' (the ids a refusal names)."""
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(ids[:SHOWN]) + more


def plan_import(source: FeatureFile, manifest: Any, track: str, name: str, description: str = "",
                stride: float | None = None, fps: float | None = None, time_steps: int | None = None,
                allow_missing: bool = False) -> ImportPlan:
    """Check `source` against `manifest` and make its rows for group ``<track>/<name>``.

    `stride` (frames between features) or `fps` (features per second) cut per-video features into
    the manifest's clips; they override what the file states. `time_steps`: tokens per row when
    rows differ in length (default 8), or always when given.

    Raises:
        UserError (one line naming the file and the fix): a track an import cannot fill, duplicated /
            extra / missing ids, per-video features for a clip track without a known time axis, rows
            of another rank or width, NaN / inf or values beyond float16.
    """
    t = get_track(track)
    if t.layout not in IMPORT_LAYOUTS:
        raise UserError(f"--as {track}: an import cannot fill the {track} track ({t.layout}: per-face features "
                        f"with expression logits); import the features --as {' / --as '.join(IMPORT_TRACKS)}")
    path = source.path
    ids = [i for i, _ in source.rows]
    per_video = _rows_are_videos(source, ids, manifest)
    rate = _time_axis(source, stride, fps)
    if t.per_video and not per_video:
        raise UserError(f"{path} holds one row per clip, but track {track} has one row per video; import per-clip "
                        f"features --as video (or joint / bone)")
    cutting = per_video and not t.per_video
    if (stride is not None or fps is not None) and not cutting:
        raise UserError(f"--stride / --fps cut per-video features into clips; {path} holds per-"
                        f"{'clip' if not per_video else 'video'} features for track {track}: drop them")
    features = dict(source.rows)
    if cutting:
        if rate is None:
            raise UserError(f"{path} holds one row per video (e.g. {ids[0]}) but track {track} has one per clip, "
                            f"and the file does not say how its time axis maps to frames: give --stride FRAMES "
                            f"(frames between features) or --fps RATE (features per second), or import it "
                            f"--as context")
        features = _cut_clips(features, manifest, rate, source)
    want = row_ids(t, manifest)
    missing = [i for i in want if i not in features]
    if missing and not allow_missing:
        raise UserError(f"{path} lacks {len(missing)} of the {len(want)} {t.unit} ids of {_where(manifest)} "
                        f"({shortlist(missing)}); import a complete set, or pass --allow-missing to leave them "
                        f"unwritten (training then needs --allow-missing too)")
    tokens = {i: _as_tokens(x, i, t, path) for i, x in features.items()}
    tokens = _one_shape(tokens, t, path, time_steps)
    rows = {i: _layout(x, t) for i, x in tokens.items()}
    first = next(iter(rows.values()))
    arrays = {k: ArraySpec(v.shape, "float32" if v.dtype.kind == "f" else v.dtype.name) for k, v in first.items()}
    row_bytes = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values())
    steps = next(iter(tokens.values())).shape[-2]
    provenance = {
        "kind": "imported", "track": track, "name": name, "description": description,
        "source": {"file": path.name, "format": source.format, "sha256": source.sha256, "files": source.files,
                   **({"feature_type": source.feature_type} if source.feature_type else {})},
        "rows": "per video, cut into clips" if cutting else f"per {t.unit}",
        "cut": rate if cutting else None, "time_steps": time_steps, "tokens": steps,
        "default_pooling": "raw",
    }
    spec = GroupSpec(name=t.group(name), ids=want, arrays=arrays, provenance=provenance,
                     clips_per_chunk=max(1, min(4096, CHUNK_BYTES // max(row_bytes, 1))))
    rowdefs = {i: row_definition(t, manifest, i) for i in rows}
    return ImportPlan(spec, rows, rowdefs, missing, source)


def write_import(cache: TokenCache | str, plan: ImportPlan, overwrite: bool = False, batch_rows: int = 1024
                 ) -> TokenGroup:
    """Create (or reopen: same provenance) the planned group and write its rows; returns the group.

    Raises UserError when the group holds extracted tokens (never replaced), exists from another
    import (another file or settings) and not `overwrite`, or on a full disk / read-only cache."""
    cache = TokenCache(cache) if not isinstance(cache, TokenCache) else cache
    name = plan.spec.name
    held = cache.group(name).provenance if cache.has_group(name) else None
    if held is not None and held.get("kind") != "imported":  # never replace extracted tokens by an import
        raise UserError(f"cache {cache.path} holds '{name}' extracted by migfuse, not imported; give the import "
                        f"another --name (or remove that group first: `migfuse cache drop {cache.path} {name}`)")
    if overwrite:
        cache.delete_group(name)
    elif held is not None and held != plan.spec.provenance:
        raise UserError(f"cache {cache.path} holds '{name}' from another import; give another --name, or "
                        f"--overwrite to replace it")
    group = cache.require_group(plan.spec)
    ids = [i for i in plan.spec.ids if i in plan.rows]
    for start in progress_bar(range(0, len(ids), batch_rows), desc=f"import {plan.spec.name}", unit="batch"):
        batch = ids[start : start + batch_rows]
        stacked = {k: np.stack([plan.rows[i][k] for i in batch]) for k in plan.spec.arrays}
        group.write_many(batch, stacked, rowdefs=[plan.rowdefs[i] for i in batch])
    return group


# ----- rows ------------------------------------------------------------------------------------------
def _rows_are_videos(source: FeatureFile, ids: list[str], manifest: Any) -> bool:
    """True when the file's ids are video ids, False when clip ids; UserError on none, duplicated
    ids, ids the manifest lacks, or a mix of both."""
    path = source.path
    if not ids:
        raise UserError(f"{path} holds no features")
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        raise UserError(f"{path} holds {len(dups)} ids more than once ({shortlist(dups)}); keep one row per id")
    clips = {c.clip_id for c in manifest.clips}
    videos = set(manifest.videos)
    extra = [i for i in ids if i not in clips and i not in videos]
    if extra:
        stacked = " (one stacked array without ids? give them with --ids)" if len(ids) == 1 else ""
        raise UserError(f"{path} holds {len(extra)} ids that {_where(manifest)} does not have ({shortlist(extra)})"
                        f"{stacked}; import features of this prepared dataset (ids are clip ids like "
                        f"{manifest.clips[0].clip_id if manifest.clips else '-'} or video ids), or fix --data")
    per_video = all(i in videos for i in ids)
    if not per_video and any(i in videos for i in ids):
        raise UserError(f"{path} mixes video ids and clip ids; give one row per clip or one per video")
    return per_video


def _where(manifest: Any) -> str:
    return str(manifest.root) if getattr(manifest, "root", None) else "the prepared data"


def _time_axis(source: FeatureFile, stride: float | None, fps: float | None) -> dict[str, float] | None:
    """How feature rows map to frames: the user's --stride / --fps, else what the file states."""
    if stride is not None and fps is not None:
        raise UserError("give --stride or --fps, not both (they say the same thing two ways)")
    if stride is not None:
        return {"stride": float(stride)}
    if fps is not None:
        return {"fps": float(fps)}
    if source.stride is not None:
        return {"stride": float(source.stride), "stated_by": "file"}
    if source.fps is not None:
        return {"fps": float(source.fps), "stated_by": "file"}
    if source.timestamps_ms:
        return {"timestamps_ms": True, "stated_by": "file"}
    return None


def _starts(n: int, video: str, manifest: Any, rate: dict[str, Any], source: FeatureFile) -> np.ndarray:
    """First frame of each of a video's `n` feature rows (float frames at the video's rate)."""
    info = manifest.videos.get(video)
    measured = getattr(info, "measured", None)
    video_fps = measured.fps if measured is not None and measured.fps else ANNOTATION_FPS
    if "stride" in rate:
        return np.arange(n) * rate["stride"]
    if "fps" in rate:
        return np.arange(n) * (video_fps / rate["fps"])
    ts = source.timestamps_ms.get(video)
    if ts is None or len(ts) != n:
        raise UserError(f"{source.path}: {video} has {n} feature rows but "
                        f"{'no' if ts is None else len(ts)} timestamps ({video}_timestamps_ms.npy); "
                        f"give --stride or --fps")
    return ts / 1000.0 * video_fps


def _cut_clips(features: dict[str, np.ndarray], manifest: Any, rate: dict[str, Any], source: FeatureFile
               ) -> dict[str, np.ndarray]:
    """Per-video (T, D) features -> per-clip rows: the feature rows whose span [start_t, start_t+1)
    overlaps the clip's inclusive frame range. A clip past the features' end is refused."""
    out, beyond = {}, []
    for video, x in features.items():
        if x.ndim != 2:
            raise UserError(f"{source.path}: {video} has shape {x.shape}; per-video features cut into clips must "
                            f"be (T, D), one row per time step")
        starts = _starts(x.shape[0], video, manifest, rate, source)
        step = float(np.median(np.diff(starts))) if len(starts) > 1 else float(rate.get("stride", 1.0))
        ends = np.append(starts[1:], starts[-1] + step)
        for clip in manifest.clips_of_video(video):
            take = (starts <= clip.end_frame) & (ends > clip.start_frame)
            if not take.any():
                beyond.append(f"{clip.clip_id} (frames {clip.start_frame}-{clip.end_frame}; features end at "
                              f"frame {ends[-1]:.0f})")
                continue
            out[clip.clip_id] = x[take]
    if beyond:
        raise UserError(f"{source.path}: {len(beyond)} clips lie past the end of their video's features, e.g. "
                        f"{beyond[0]}; check --stride / --fps (rate given: {rate})")
    return out


def _as_tokens(x: np.ndarray, row: str, track: Track, path: Any) -> np.ndarray:
    """One row's features as float32 tokens: (D,) -> (1, D); (T, D) stays; (K, n, D) for context only."""
    if x.ndim == 1:
        x = x[None]
    if (x.ndim == 3 and track.layout != "context_tokens") or x.ndim not in (2, 3) or 0 in x.shape:
        raise UserError(f"{path}: row {row} has shape {x.shape}; import one vector (D,) or a sequence (T, D) per "
                        f"row" + (", or windows (K, n, D) per video" if track.layout == "context_tokens" else ""))
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{path}: row {row} holds NaN or inf; fix the features (the cache refuses them)")
    if np.abs(x).max() > FLOAT16_MAX:
        raise UserError(f"{path}: row {row} holds values beyond float16 ({np.abs(x).max():.3g} > 65504), which "
                        f"views and training use; scale the features down before importing")
    return x


def _one_shape(tokens: dict[str, np.ndarray], track: Track, path: Any, time_steps: int | None
               ) -> dict[str, np.ndarray]:
    """Rows of one shape: same width D (and window count) or refused; lengths brought to `time_steps`
    by an adaptive mean when they differ (or when `time_steps` is given)."""
    first_id, first = next(iter(tokens.items()))
    for i, x in tokens.items():
        if x.ndim != first.ndim or x.shape[-1] != first.shape[-1] or x.shape[:-2] != first.shape[:-2]:
            raise UserError(f"{path}: rows differ in shape ({first_id}: {first.shape}, {i}: {x.shape}); every row "
                            f"must have the same width{' and windows' if x.ndim == 3 else ''} (only the time axis "
                            f"may differ)")
    lengths = {x.shape[-2] for x in tokens.values()}
    if time_steps is None and len(lengths) == 1:
        return tokens
    steps = time_steps or DEFAULT_TIME_STEPS
    if time_steps is None:
        log.info("%s: rows hold %d to %d time steps; each is averaged to %d tokens (--time-steps)", path,
                 min(lengths), max(lengths), steps)
    return {i: adaptive_mean(x, steps, axis=-2) for i, x in tokens.items()}


def _layout(x: np.ndarray, track: Track) -> dict[str, np.ndarray]:
    """Tokens (n, D) or (K, n, D) in the track's stored arrays."""
    if track.layout == "pose_features":
        return {"features": np.ascontiguousarray(x.T[:, :, None])}  # (D, n, 1): channel, time, joint
    if track.layout == "context_tokens":
        x = x if x.ndim == 3 else x[None]
        return {"tokens": x, "valid": np.ones(x.shape[0], bool)}
    return {"tokens": x}
