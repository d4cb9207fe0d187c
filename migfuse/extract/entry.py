"""The one extraction door: `extract(track, data, cache, runtime, options, **track_options)`.

    from migfuse.extract.entry import extract
    summary = extract("video", "prepared", "CACHE.zarr", Runtime.resolve(), RunOptions(), checkpoint="mvit.pth")

Every track of the track table (`migfuse.data_cache.tracks`) has a builder registered here by the
module that extracts it (`@register_track("video", "context")`); a builder gets the manifest, the
track name and the track's own options, and returns an `Extractor`. Everything else (resume,
shards, workers, batching, failures, the report) is the runner's, the same for every track. The
command line calls this door for all four extract commands, and `migfuse demo` does too.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from migfuse.extract.interface import RunOptions
from migfuse.registry import Registry

if TYPE_CHECKING:
    from migfuse.extract.interface import Extractor
    from migfuse.extract.report import RunSummary
    from migfuse.runtime import Runtime

#: track name -> builder(manifest, track, **track_options) -> Extractor; modules imported on first use.
TRACK_EXTRACTORS: Registry[Callable[..., "Extractor"]] = Registry("track", modules={
    "video": "migfuse.extract.video",
    "context": "migfuse.extract.video",
    "face": "migfuse.extract.face.extractor",
    "face_context": "migfuse.extract.face.extractor",
    "joint": "migfuse.extract.skeleton.track",
    "bone": "migfuse.extract.skeleton.track",
})


def register_track(*tracks: str) -> Callable:
    """Decorator: the builder of the extractor of these tracks (names of the track table)."""
    def wrap(builder: Callable[..., "Extractor"]) -> Callable[..., "Extractor"]:
        for track in tracks:
            TRACK_EXTRACTORS.register(track, builder)
        return builder

    return wrap


def extract(track: str, data: str | Path, cache: str | Path, runtime: "Runtime | None" = None,
            options: RunOptions = RunOptions(), *, checkpoint: str | Path | None = None,
            preset: str | None = None, **track_options: Any) -> "RunSummary":
    """Extract one track of a prepared dataset into the token cache; resumable, sharded, failures recorded.

    Args:
        track: a track of the table: video, context, face, face_context, joint or bone.
        data: the PREPARED folder (`migfuse data prepare`).
        cache: CACHE.zarr (created if absent, resumed if present).
        runtime: where and how the models run (`Runtime.resolve`); None = the CPU in fp32. Its
            `trust_checkpoint` decides how `checkpoint` is read.
        options: batch size, loader workers, shard, retry of failed rows (`RunOptions`).
        checkpoint: the backbone's checkpoint file (None: random weights where the track allows it).
        preset: a named recipe (`migfuse.extract.presets`, e.g. "paper"): pins track options (a given
            option of another value is a UserError), pools each row and writes group TRACK/BACKBONE-NAME.
        track_options: the track's own options (e.g. frames, context_windows, video_root, decoder
            for the video tracks; see each track's `build_extractor`).
    Returns:
        RunSummary of this process's rows (`ok` is False when any row failed).
    Raises:
        UserError: an unknown track, a bad prepared folder, checkpoint, option or preset (or an
            option that conflicts with the preset), a video track
            where not one video file is found (the extractor checks it before building its model);
            raised before the cache is touched.
        FileExistsError: `cache` is a file (one line in the CLI).
    """
    from migfuse.checkpoint_file import CheckpointFile
    from migfuse.data_cache.tracks import get_track
    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.runner import parse_shard, run_extractor
    from migfuse.runtime import Runtime

    runtime = runtime or Runtime()
    parse_shard(options.shard)  # a bad --shard is one line before anything is read or built
    name = get_track(track).name  # UserError naming the tracks
    if preset is not None:  # before the manifest is read: a conflict is one line, nothing done
        from migfuse.extract.presets import apply_preset

        track_options = apply_preset(preset, name, getattr(checkpoint, "path", checkpoint), track_options)
    build = TRACK_EXTRACTORS.get(name)
    manifest = Manifest.load(data)
    if Path(cache).exists() and not Path(cache).is_dir():  # as zarr would say, but before any check of the data
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(cache))
    file = CheckpointFile(checkpoint, trusted=runtime.trust_checkpoint) if checkpoint is not None else None
    extractor = build(manifest, name, checkpoint=file, **track_options)
    return run_extractor(extractor, cache, runtime, options)
