"""The one table of tracks: what each cache track is, used by extraction, views, fusion and the CLI.

A track is one kind of token the cache holds. Everything that differs between tracks and is not the
model itself is a column here, so no other module tests track names:

    name          the first part of the cache group name, `<name>/<backbone>` (e.g. video/mvit_v2_s)
    unit          what a row is: a clip (ids = clip ids) or a video (ids = video ids)
    decodes       what its loader reads: video frames, or the prepared skeleton arrays
    layout        how its stored arrays are laid out, which decides the raw fusion layout
                  (video_tokens, pose_features, face_frames, context_tokens)
    pooling       the default view pooling (`migfuse cache view --defaults`)
    source_arrays arrays a pooling reads (None: all; face skips its optional global tokens)
    command       the CLI command that writes it
    axis_names    names of each stored array's per-row axes after the row axis (they become Zarr
                  dimension names, so xarray sees e.g. (clip, token, channel)); an array with one
                  more axis than listed has a leading "window" axis; arrays not listed get
                  "<array>_axis<k>". A producer may still pass ArraySpec(dims=...).

Rows are identified by id; `row_definition` says what defines a row's content (a clip's video id
and frame range), stored per row so a changed range under the same id is not taken as done.

Views (``views/<name>``) of any track share one layout, `VIEW_AXIS_NAMES`.

No torch, no Zarr: `migfuse cache` and the laptop side import this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from migfuse.errors import UserError


class RowUnit(StrEnum):
    """What one row of a track is."""

    CLIP = "clip"
    VIDEO = "video"


class Decodes(StrEnum):
    """What a track's loader reads."""

    VIDEO = "video frames"
    SKELETON = "skeleton arrays"


@dataclass(frozen=True)
class Track:
    """One row of the track table (see the module docstring)."""

    name: str
    unit: RowUnit
    decodes: Decodes
    layout: str
    pooling: str
    command: str
    source_arrays: tuple[str, ...] | None = None
    axis_names: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def per_video(self) -> bool:
        return self.unit is RowUnit.VIDEO

    def group(self, backbone: str) -> str:
        """The cache group written by `backbone` for this track, e.g. 'context/mvit_v2_s'."""
        return f"{self.name}/{backbone}"


_FACE_ARRAYS = ("features", "logits", "mask")
_TOKEN_AXES = {"tokens": ("token", "channel")}
_POSE_AXES = {"features": ("channel", "time", "joint")}
_CONTEXT_AXES = {"tokens": ("token", "channel"), "valid": ()}  # per window: (K, 393, 768) and (K,)
_FACE_AXES = {"features": ("face", "feature"), "logits": ("face", "expression"), "mask": ("face",),
              "global_tokens": ("face", "token", "channel")}

TRACKS: dict[str, Track] = {t.name: t for t in (
    Track("video", RowUnit.CLIP, Decodes.VIDEO, "video_tokens", "video_time", "extract video",
          axis_names=_TOKEN_AXES),
    Track("joint", RowUnit.CLIP, Decodes.SKELETON, "pose_features", "pose_parts", "extract skeleton --stream joint",
          axis_names=_POSE_AXES),
    Track("bone", RowUnit.CLIP, Decodes.SKELETON, "pose_features", "pose_parts", "extract skeleton --stream bone",
          axis_names=_POSE_AXES),
    Track("face", RowUnit.CLIP, Decodes.VIDEO, "face_frames", "face_keep", "extract face --scope clip", _FACE_ARRAYS,
          axis_names=_FACE_AXES),
    Track("context", RowUnit.VIDEO, Decodes.VIDEO, "context_tokens", "context_cls_mean", "extract context",
          axis_names=_CONTEXT_AXES),
    Track("face_context", RowUnit.VIDEO, Decodes.VIDEO, "face_frames", "face_keep", "extract face --scope context",
          _FACE_ARRAYS, axis_names=_FACE_AXES),
)}

#: Groups ``views/<name>`` hold pooled views (data_cache/views.py), whatever their track.
VIEW_PREFIX = "views/"
#: Per-row axes of a view's arrays: tokens (n, D) and mask (n,), after a "window" axis when windowed.
VIEW_AXIS_NAMES: dict[str, tuple[str, ...]] = {"tokens": ("token", "channel"), "mask": ("token",)}


def get_track(name: str) -> Track:
    """The table row of track `name`.

    Raises:
        UserError: an unknown track name (lists the known ones).
    """
    try:
        return TRACKS[name]
    except KeyError:
        raise UserError(f"unknown track {name!r}; the tracks are {', '.join(TRACKS)}") from None


def extract_command(track: Track, data: Any, cache: Any, provenance: dict[str, Any]) -> str:
    """The runnable `migfuse extract ...` that writes `track`'s rows again into `cache` from `data`.

    A group made with a checkpoint (a skeleton track always is) needs it again: `--checkpoint
    CHECKPOINT` and the words naming the one recorded in `provenance` (file name, sha256), because
    without it the command would fail or fall back to random weights."""
    command = f"`migfuse {track.command} --data {data} --cache {cache}"
    if track.decodes is not Decodes.SKELETON and "checkpoint_sha256" not in provenance:
        return command + "`"
    recorded = ", ".join(f"{k} {str(provenance[k])[:12]}" if k.endswith("sha256") else str(provenance[k])
                         for k in ("checkpoint", "checkpoint_sha256") if provenance.get(k))
    return command + " --checkpoint CHECKPOINT` with the checkpoint it was extracted with" + (
        f" ({recorded})" if recorded else "")


#: the `migfuse extract` options that set provenance keys, named when a group is resumed with another value
_EXTRACT_OPTIONS = {"sampling.windows": "--context-windows", "sampling.windows.windows": "--context-windows",
                    "sampling.max_windows": "--windows", "sampling.frames": "--frames"}


def resume_option(group: str, key: str, value: Any) -> str | None:
    """The extract option, with `value`, that resumes extracted `group` written with provenance
    `key` = `value`, e.g. "--context-windows 2" (None: no single option sets it)."""
    option = None if group.startswith(VIEW_PREFIX) else _EXTRACT_OPTIONS.get(key)
    if option == "--frames" and group.startswith("face"):
        return f"--frames {value} (`extract all`: --face-frames {value})"
    return f"{option} {value}" if option else None


def track_of_group(group_name: str) -> Track | None:
    """The track of a raw cache group name ('joint/agcn' -> joint), None when it is no track's group."""
    return TRACKS.get(group_name.split("/")[0])


def axis_names_of_group(group_name: str) -> dict[str, tuple[str, ...]]:
    """Per-row axis names of the arrays of a cache group: a view's, its track's, or none ({})."""
    if group_name.startswith(VIEW_PREFIX):
        return VIEW_AXIS_NAMES
    track = track_of_group(group_name)
    return track.axis_names if track is not None else {}


def tracks_with_layout(*layouts: str) -> tuple[str, ...]:
    """Names of the tracks stored in one of `layouts` (e.g. the tracks a pooling applies to)."""
    return tuple(t.name for t in TRACKS.values() if t.layout in layouts)


def row_ids(track: Track, manifest: Any) -> list[str]:
    """Every row id of a track over a manifest: sorted video ids (per-video tracks) or clip ids."""
    if track.per_video:
        return sorted(manifest.videos)
    return [c.clip_id for c in manifest.clips]


def row_definition(track: Track, manifest: Any, row_id: str) -> str:
    """What defines a row's content besides the group's provenance (which holds the sampling).

    A clip: its video and inclusive frame range, e.g. 'video=0001 frames=10-40'. A video row (its
    windows are spread over the whole video): its video id and the frames that decode, as `data
    prepare` measured them, e.g. 'video=0001 frames=0-74', with the header's claim where it differs
    ('video=0001 frames=0-74 header=97500'); just the id when the video was not measured. Stored per
    row by the extraction runner; a stored row that is not `same_row` as this is extracted again.
    """
    if track.per_video:
        info = manifest.videos.get(row_id) if hasattr(manifest, "videos") else None
        measured = getattr(info, "measured", None)
        if measured is None:
            return f"video={row_id}"
        header = f" header={measured.header_frames}" if measured.header_disagrees else ""
        return f"video={row_id} frames=0-{measured.frames - 1}{header}"
    clip = manifest.clip(row_id)
    return f"video={clip.video_id} frames={clip.start_frame}-{clip.end_frame}"


def same_row(stored: str, now: str) -> bool:
    """Does a stored row definition still describe the row `now` defines?

    Video rows stored before videos were measured ('video=0001') had their windows placed with the
    header's length: they are the same rows as long as the header agrees with what decodes (no
    'header=' in `now`), so an upgrade does not extract every video again; where the header was
    wrong, their windows were misplaced and the row is not the same."""
    if stored == now:
        return True
    return (stored.startswith("video=") and " " not in stored and now.startswith(stored + " frames=")
            and " header=" not in now)
