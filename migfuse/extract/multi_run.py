"""Several RGB tracks in one run with one decode per video (`migfuse extract all`).

Each track keeps everything of its own run (`runner.TrackRun`): its group and provenance, resume,
claims, row definitions, fixed forward batch, failure records and summary, exactly as its own
command (`extract video|context|face`) would have them. What the tracks share is the work: one work
item per video holds every track's pending rows of it as (track, row) pairs, one loader decodes the
video once for all of them (`one_pass.OnePassLoader`), and the main process hands each sample to
its track's writer, which runs that track's forward in that track's batches. So the rows written
equal those of the separate commands, a kill -9 leaves each track resumable on its own, and a video
that cannot be read fails every track's rows of it with the same reason.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from migfuse.errors import UserError
from migfuse.extract.interface import Extractor, Failure, RunOptions, Sample, WorkItem
from migfuse.extract.one_pass import OnePassLoader, split_ids
from migfuse.extract.report import RunSummary
from migfuse.extract.row_writer import RowWriter
from migfuse.extract.runner import TrackRun, load_and_write, parse_shard, shard_items
from migfuse.runtime import Runtime

if TYPE_CHECKING:
    from migfuse.data_cache.store import TokenCache

#: the tracks `extract all` can run together (the RGB tracks: the video decoded once for all)
ONE_PASS_TRACKS = ("video", "context", "face", "face_context")


def run_in_one_pass(extractors: list[Extractor], cache: "TokenCache | str | Path", runtime: Runtime | None = None,
                    options: RunOptions = RunOptions()) -> list[RunSummary]:
    """Run the extractors of several RGB tracks with one decode per video.

    Args:
        extractors: one per track (each track at most once), over the same manifest and videos;
            their loaders must be `video_rows.FrameLoader`s (video, context, face, face_context).
        cache: a TokenCache or CACHE.zarr (created if absent, resumed if present).
        runtime: where the models run; None = the CPU in fp32.
        options: as for one track; --batch-size, when given, is every track's forward batch, else
            each track's default (the one its own command uses); --workers, when not given, the
            largest of the tracks' defaults.
    Returns:
        One RunSummary per extractor, in their order.
    Raises:
        UserError: as `runner.run_extractor` (bad --shard, a group written with another batch or
            precision, no video file at all), for any track, before any row is extracted.
    """
    from migfuse.data_cache.store import TokenCache
    from migfuse.progress_bar import progress_bar

    t0 = time.monotonic()
    runtime = runtime or Runtime()
    shard = parse_shard(options.shard)
    cache = cache if isinstance(cache, TokenCache) else TokenCache(cache)
    names = [ex.track.name for ex in extractors]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise UserError(f"track {twice} is named twice: name each track once")
    opened: dict[str, TrackRun] = {}
    # groups already in the cache first: only they can refuse this run (other settings), and so
    # they refuse it before a new group of another track is created
    for ex in sorted(extractors, key=lambda ex: not cache.has_group(ex.group)):
        batch = options.batch_size if options.batch_size is not None else ex.default_batch(runtime.device)
        opened[ex.track.name] = TrackRun(ex, cache, runtime=runtime, batch_size=batch, shard=shard,
                                         retry_failed=options.retry_failed, only_available=options.only_available,
                                         split=options.split, scheme=options.scheme)
    runs = {name: opened[name] for name in names}
    workers = options.workers if options.workers is not None else max(
        ex.default_workers(runtime.device) for ex in extractors)
    items = merged_items(runs)
    for run in runs.values():
        run.resolve_workers(workers, len(items))
    if items:
        bar = progress_bar(total=sum(r.pending for r in runs.values()), unit="row", dynamic_ncols=True,
                           desc=f"{'+'.join(runs)} [{shard[0]}/{shard[1]}]")
        loaders = {t: r.extractor.loader() for t, r in runs.items()}
        decoder = next(iter(loaders.values())).decoder
        router = _Router({t: r.writer(bar) for t, r in runs.items()})

        def setup() -> None:
            for r in runs.values():
                r.extractor.setup()

        def take(item: WorkItem) -> WorkItem | None:
            kept = []
            for t, rows in split_ids(item.ids).items():
                mine = runs[t].take(WorkItem(item.key, tuple(rows)))
                kept += [(t, row) for row in (mine.ids if mine is not None else ())]
            return WorkItem(item.key, tuple(kept)) if kept else None

        try:
            load_and_write(OnePassLoader(loaders, decoder), items, router, take, min(workers, len(items)),
                           options.prefetch, out_size=max(4, 2 * max(r.batch_size for r in runs.values())),
                           setup=setup)
        finally:
            for r in runs.values():
                r.close()
            bar.close()
    summaries = [run.finish(t0) for run in runs.values()]
    if options.shard is None and runtime.world > 1:
        for s in summaries:
            s.world_failed = int(runtime.all_sum([float(len(s.failed))])[0])
    return summaries


def merged_items(runs: Mapping[str, TrackRun]) -> list[WorkItem]:
    """One work item per video: every track's pending rows of it (each track's run already holds only
    this process's shard) as (track, row), in the order of `runs`; items sorted by video id."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for t, run in runs.items():
        for it in run.items:
            pairs.setdefault(it.key, []).extend((t, row) for row in it.ids)
    return shard_items([WorkItem(key, tuple(p)) for key, p in pairs.items()], 0, 1)


class _Router:
    """What the runner's loop writes to (`runner.load_and_write`), for several tracks: each sample
    goes to its track's `RowWriter`; flushes, claims and the loaders' waiting time go to all."""

    def __init__(self, writers: Mapping[str, RowWriter]):
        self.writers = dict(writers)
        self.claims = self  # `release_when_written` below

    @property
    def batch(self) -> list[Sample]:
        return [s for w in self.writers.values() for s in w.batch]

    @property
    def batch_since(self) -> float:
        return min((w.batch_since for w in self.writers.values() if w.batch), default=time.monotonic())

    def started(self) -> None:
        for w in self.writers.values():
            w.started()

    def timed(self, key: str, since: float) -> None:
        for w in self.writers.values():  # the tracks wait for the same loaders
            w.timed(key, since)

    def add(self, sample: Sample) -> None:
        track, row = sample.id
        self.writers[track].add(Sample(row, inputs=sample.inputs, failure=sample.failure, size=sample.size))

    def fail(self, pair: tuple[str, str], failure: Failure) -> None:
        track, row = pair
        self.writers[track].fail(row, failure)

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def release_when_written(self, key: str) -> None:
        for w in self.writers.values():
            if w.claims is not None:
                w.claims.release_when_written(key)


def extract_in_one_pass(tracks: list[str], data: str | Path, cache: str | Path, runtime: Runtime | None = None,
                        options: RunOptions = RunOptions(), *, checkpoints: Mapping[str, Any] | None = None,
                        track_options: Mapping[str, Mapping[str, Any]] | None = None,
                        checkpoint_options: Mapping[str, str] | None = None) -> list[RunSummary]:
    """`entry.extract` for several RGB tracks at once, one decode per video.

    Args:
        tracks: some of `ONE_PASS_TRACKS`, each once.
        checkpoints: track -> its backbone's checkpoint file (absent: random weights, said loudly).
        track_options: track -> its own options, as `entry.extract` takes them (frames, backbone,
            context_windows, video_root, decoder, ...).
        checkpoint_options: track -> the option that gives its checkpoint (default --checkpoint),
            named by the random-weights warning; tracks sharing an option are warned about once.
    Returns:
        One RunSummary per track, in the order of `tracks`.
    Raises:
        UserError: a track that is not an RGB track, or named twice; anything `entry.extract`
            refuses, for any track, before any row is extracted.
    """
    import errno
    import os

    from migfuse.checkpoint_file import CheckpointFile
    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.entry import TRACK_EXTRACTORS

    runtime = runtime or Runtime()
    parse_shard(options.shard)
    if not tracks:
        raise UserError(f"--tracks names no track: choose from {','.join(ONE_PASS_TRACKS)}")
    bad = [t for t in tracks if t not in ONE_PASS_TRACKS]
    if bad:
        raise UserError(f"--tracks {','.join(tracks)}: {bad[0]!r} is not a video track decoded in one pass; "
                        f"choose from {','.join(ONE_PASS_TRACKS)}")
    if len(set(tracks)) != len(tracks):
        raise UserError(f"--tracks {','.join(tracks)}: name each track once")
    manifest = Manifest.load(data)
    if Path(cache).exists() and not Path(cache).is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(cache))
    extractors, warned = [], set()
    files: dict[Path, CheckpointFile] = {}  # one per file: video and context (or both face tracks) share it
    for t in tracks:
        ckpt = (checkpoints or {}).get(t)
        option = (checkpoint_options or {}).get(t, "--checkpoint")
        if ckpt is not None and not Path(ckpt).exists():  # several options give checkpoints here: name it
            raise UserError(f"checkpoint not found: {option} {ckpt} (pass the path of a local checkpoint file)")
        file = None
        if ckpt is not None:  # read and hashed once, however many tracks use it
            file = files.setdefault(Path(ckpt).resolve(), CheckpointFile(ckpt, trusted=runtime.trust_checkpoint))
        extractors.append(TRACK_EXTRACTORS.get(t)(manifest, t, checkpoint=file,
                                                  checkpoint_option=None if option in warned else option,
                                                  **(track_options or {}).get(t, {})))
        warned.add(option)
    return run_in_one_pass(extractors, cache, runtime, options)
