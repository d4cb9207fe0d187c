"""The interface between the extraction runner and the tracks: what a track implements, what flows.

A track implements an `Extractor`: which rows its cache group has (`ids`), how they group into
work items a loader opens once (`work_items`, e.g. one per video), how to load one item on the CPU
(`loader`: picklable, no model, run in worker processes) and how to run a batch (`forward`, main
process). Loaders yield one `Sample` per row: model inputs or a `Failure`. `TrackExtractor` fills
rows and work items from the track table for the tracks over a manifest.

Interface details and rules: docs/contracts.md, "Extraction runner".
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from migfuse.errors import UserError
from migfuse.runtime import Runtime
from migfuse.worker_pool import usable_cpus

if TYPE_CHECKING:
    from migfuse.data_cache.store import ArraySpec
    from migfuse.data_cache.tracks import Track


@dataclass(frozen=True)
class RunOptions:
    """How the rows of one extraction are scheduled (the extract commands' shared options; where the
    model runs is the `Runtime`).

    batch_size / workers: None = the track's default for the device (`Extractor.default_batch` /
    `default_workers`: small on a CPU, GPU-sized on CUDA).
    shard: "I/N" (SLURM arrays); None = torchrun's RANK/WORLD_SIZE, else the whole dataset.
    retry_failed: also redo rows recorded as failed by an earlier run.
    prefetch: work items queued per loader worker ahead of the one it is loading.
    only_available / split / scheme: which rows this run takes (`Extractor.rows_with_input`,
    `Extractor.rows_in_split`); the group is still made for every row, so runs add up.
    """

    batch_size: int | None = None
    workers: int | None = None
    shard: str | None = None
    retry_failed: bool = False
    prefetch: int = 2
    #: leave out rows whose input file (video, skeleton) is missing: not extracted, not failed
    only_available: bool = False
    #: extract only the rows of this split (`scheme`: the manifest column; None = the track's:
    #: split_miga for clips, split_emotion for videos)
    split: str | None = None
    scheme: str | None = None



@dataclass(frozen=True)
class WorkItem:
    """One unit a loader opens once (e.g. a video) and the cache rows it yields."""

    key: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    """Why one row could not be extracted. `stage`: open | decode | load | worker | forward | ..."""

    stage: str
    message: str


@dataclass
class Sample:
    """What a loader yields per row: model inputs (compact CPU arrays) or a failure.

    `size` is how many model inputs the sample holds (K windows -> K); batches fill up to
    `batch_size` in these units.
    """

    id: str
    inputs: dict[str, np.ndarray] | None = None
    failure: Failure | None = None
    size: int = 1


Loader = Callable[[WorkItem], Iterator[Sample]]


class LoaderContractError(Exception):
    """A loader broke the interface (yielded an id it was not asked for): a bug, so the run stops."""


class Extractor(ABC):
    """What a track implements. Construct cheaply; heavy work happens in `setup` and the loader."""

    #: "<track>/<backbone>", the cache group written
    group: str = ""
    #: what a row is, for the progress bar ("clip", "video"); tracks take it from the track table
    unit: str = "row"
    #: set by the runner before `setup`: where and how the model runs (device, precision, compile)
    runtime: Runtime = Runtime()
    #: set by the runner before `setup`: the fixed forward batch (`in_fixed_batches`; 0 = as given)
    batch: int = 0
    #: model inputs per forward when --batch-size is not given, on a CPU / on a GPU
    cpu_batch: int = 8
    gpu_batch: int = 32
    #: loader processes when --workers is not given on a CPU (on a GPU: one per core but one)
    cpu_workers: int = 2

    def default_batch(self, device: str) -> int:
        """--batch-size when not given: `gpu_batch` on CUDA (the GPU needs large batches to be
        busy), `cpu_batch` elsewhere."""
        return self.gpu_batch if str(device).startswith("cuda") else self.cpu_batch

    def default_workers(self, device: str) -> int:
        """--workers when not given: `cpu_workers` on a CPU (the cores run the model); on CUDA one
        loader per usable core but one (the main process feeds the GPU), since decoding sets the pace."""
        if str(device).startswith("cuda"):
            # torchrun ranks on one node share its cores
            ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            return max(1, usable_cpus() // max(1, ranks) - 1)
        return self.cpu_workers

    def in_fixed_batches(self, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
        """`fn` over `x` (N, ...) in calls of exactly `batch` rows (the last zero-padded); the outputs
        (an array or a dict of arrays, N first) concatenated and trimmed to N.

        Why: kernels pick their reduction order by batch shape, so the same row in a batch of 3 and
        of 4 differs by an fp16 step. With one shape, a row's tokens depend on the row alone, not on
        which rows share its batch (workers, shards, resume points).
        """
        n, b = len(x), self.batch
        if b <= 0 or n == 0:
            return fn(x)
        parts = []
        for start in range(0, n, b):
            part = x[start:start + b]
            if len(part) < b:
                part = np.concatenate([part, np.zeros((b - len(part),) + part.shape[1:], part.dtype)])
            parts.append((fn(part), min(b, n - start)))
        if isinstance(parts[0][0], Mapping):
            return {k: np.concatenate([np.asarray(p[k])[:m] for p, m in parts]) for k in parts[0][0]}
        return np.concatenate([np.asarray(p)[:m] for p, m in parts])

    def row_definitions(self, ids: list[str]) -> dict[str, str] | None:
        """What defines each row (`tracks.row_definition`), stored per row; None: not tracked."""
        return None

    def check_inputs(self) -> None:
        """Raise UserError when not one row can have its input (no video file at all, no skeleton
        at all): one line before the cache is touched, instead of a failure record per row."""

    def rows_with_input(self, ids: list[str]) -> set[str]:
        """The rows of `ids` whose input file is here (--only-available); default: all."""
        return set(ids)

    def rows_in_split(self, split: str, scheme: str | None = None) -> set[str]:
        """The rows of one split (--split); UserError for a track without splits."""
        raise UserError(f"{self.group}: this extractor has no splits; drop --split")

    @abstractmethod
    def ids(self) -> list[str]:
        """Every row id of the group, in the group's fixed order."""

    @abstractmethod
    def work_items(self, ids: list[str]) -> list[WorkItem]:
        """Group row ids into load units (e.g. one per video, clips in frame order)."""

    @abstractmethod
    def arrays(self) -> dict[str, "ArraySpec"]:
        """The named arrays each row stores."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """JSON-able, deterministic description of how rows were made (compared on reopen)."""

    def environment(self) -> dict[str, Any]:
        """JSON-able facts about where the rows are made that do not change them (recorded in the
        group's info when it is created, never compared); e.g. a library shim in use."""
        return {}

    @abstractmethod
    def loader(self) -> Loader:
        """A picklable callable run in worker processes: WorkItem -> one Sample per id. No model."""

    @abstractmethod
    def setup(self) -> None:
        """Build the model on `self.runtime.device` in the main process (once, before any forward)."""

    @abstractmethod
    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:
        """Run one batch; return each sample's arrays (every name of `arrays()`) or a Failure."""


class TrackExtractor(Extractor):
    """An extractor of one track of the table over a manifest: rows, work items and row definitions
    follow from the track's unit (clips are grouped per video; a video row is its own item)."""

    track: "Track"
    manifest: Any
    _row_ids: list[str] | None = None

    def ids(self) -> list[str]:
        from migfuse.data_cache.tracks import row_ids

        return list(self._row_ids) if self._row_ids is not None else row_ids(self.track, self.manifest)

    def work_items(self, ids: list[str]) -> list[WorkItem]:
        if self.track.per_video:
            return [WorkItem(v, (v,)) for v in ids]
        return [WorkItem(v, clips) for v, clips in self.manifest.clips_by_video(ids).items()]

    def row_definitions(self, ids: list[str]) -> dict[str, str]:
        from migfuse.data_cache.tracks import row_definition

        return {i: row_definition(self.track, self.manifest, i) for i in ids}

    def videos_with_input(self) -> set[str] | None:
        """Videos whose input file is here (None: not known, every row counts as present)."""
        return None

    def rows_with_input(self, ids: list[str]) -> set[str]:
        have = self.videos_with_input()
        if have is None:
            return set(ids)
        if self.track.per_video:
            return {i for i in ids if i in have}
        return {i for i in ids if self.manifest.clip(i).video_id in have}

    def rows_in_split(self, split: str, scheme: str | None = None) -> set[str]:
        from migfuse.datasets.manifest import SCHEMES

        scheme = scheme or ("split_emotion" if self.track.per_video else "split_miga")
        if scheme not in SCHEMES:
            raise UserError(f"--scheme {scheme!r} is not a split column; use one of {', '.join(SCHEMES)}")
        rows = self.manifest.video_ids(split, scheme) if self.track.per_video else self.manifest.ids(split, scheme)
        if not rows:
            values = sorted({getattr(c, scheme) for c in self.manifest.clips} - {""})
            raise UserError(f"no {self.unit} of {self.manifest.root or 'the manifest'} is in split {split!r} of "
                            f"{scheme}; its splits are: {', '.join(values) or 'none'}")
        return set(rows)


def videos_with_files(manifest: Any, video_root: str | Path | None, ids: list[str] | None = None) -> set[str]:
    """The videos whose file is found on this machine (`Manifest.video_files`).

    Raises:
        UserError: not one video has a file (`data prepare` found none, or they live elsewhere):
            one line naming the fix, instead of one failure record per clip.
    """
    paths = manifest.video_files(video_root)  # names --video-root when recorded files are all elsewhere
    have = {v for v, p in paths.items() if p is not None and Path(p).is_file()}
    if not have:
        raise UserError(f"not one of the {len(paths)} videos of {manifest.root or 'the manifest'} has a video file: "
                        f"put the videos under the dataset root and rerun `migfuse data prepare`, or pass "
                        f"--video-root DIR (or set MIGFUSE_VIDEO_ROOT) to the folder that holds them")
    return have
