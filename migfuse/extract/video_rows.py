"""The rows of one video for the RGB tracks, as frame requests: what lets tracks share one decode.

A loader of an RGB track (video, context, face, face_context) says, for the rows of one work item,
which frames each of its requests needs (`VideoRows.requests`: a clip, a context window) and what
it makes of a request's frames once they are decoded (`VideoRows.served`). The decode itself is
not the track's: `load_rows` decodes the video for one track (`extract video`, ...), and
`one_pass.OnePassLoader` decodes it once for every track that needs it (`extract all`), handing
each request its frames. Both paths run the same `VideoRows`, so the frames, and so the tokens,
are the same.

No torch here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

import numpy as np

from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import DecodeError
from migfuse.extract.interface import Failure, Sample, WorkItem


class VideoRows(ABC):
    """The rows of one work item of one track (one video's clips, or the video itself).

    `requests`: request key -> 0-based 25 fps frame indices (any shape) in the frames of the track's
    view (`FrameLoader.view`); `facts`: the video's measured facts when the rows needed them (context
    windows are placed over the decoded length), else what `data prepare` stored (or None).
    """

    requests: dict[Hashable, np.ndarray]
    facts: VideoMeasure | None = None

    def early(self) -> Iterator[Sample]:
        """Rows that fail before any frame is decoded (e.g. a file that cannot be measured)."""
        return iter(())

    @abstractmethod
    def served(self, key: Hashable, frames: np.ndarray | DecodeError) -> Iterator[Sample]:
        """A request's frames (`requests[key].shape + frame.shape`) or why it cannot be served ->
        the samples now complete (none while a row waits for more requests)."""

    def end(self) -> Iterator[Sample]:
        """The samples still held once every request was served."""
        return iter(())


def no_video_file(video_id: str) -> DecodeError:
    """The "open" error of a video that `data prepare` found no file for."""
    return DecodeError("open", f"no video file for video {video_id} in videos.csv (put the mp4 next to its "
                               "labels and re-run `migfuse data prepare`)")


class FrameLoader:
    """What an RGB track's loader provides (mixed into the picklable loader dataclasses).

    Subclasses set `paths` (video id -> file or None) and `facts` (video id -> measured facts), and
    implement `rows`, `stream` (the track's own decode: PyAV or NVDEC, its own per-frame transform),
    `decode_device` and, where the track's frames are not the full decoded ones, `view` / `view_key` /
    `gpu_view` (the same view made on the CPU from full frames, and on the GPU).
    """

    paths: Any
    facts: Any

    def rows(self, item: WorkItem, path: Path, facts: VideoMeasure | None) -> VideoRows:
        raise NotImplementedError

    def stream(self, path: Path, requests: Any, facts: VideoMeasure | None) -> Iterator[tuple[Hashable, Any]]:
        raise NotImplementedError

    def view_key(self) -> Hashable:
        """Tracks whose `view_key` is equal see the same frames (one `stream` serves them all)."""
        return ("rgb",)

    def view(self, frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Full decoded frames (`indices.shape + (H, W, 3)`) -> the frames this track's `stream`
        would have served for `indices` (e.g. resized and cropped). Default: unchanged."""
        return frames

    def gpu_view(self) -> Callable[[Any], Any] | None:
        """The view as `stream` makes it with `--decoder gpu`: (N, 3, H, W) uint8 tensor on the decode
        device -> (N, h, w, 3) tensor there. None: the full frames (the default)."""
        return None

    def decode_device(self) -> str:
        """The torch device `stream` decodes on with `--decoder gpu` ("cuda:N")."""
        raise NotImplementedError

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        return load_rows(self, item)


def load_rows(loader: FrameLoader, item: WorkItem) -> Iterator[Sample]:
    """One track's samples for one work item: its rows' requests decoded by the track's own `stream`."""
    path = loader.paths.get(item.key)
    if not path:
        e = no_video_file(item.key)
        yield from (Sample(row, failure=Failure(e.stage, str(e))) for row in item.ids)
        return
    rows = loader.rows(item, Path(path), loader.facts.get(item.key))
    yield from rows.early()
    if rows.requests:
        for key, frames in loader.stream(Path(path), rows.requests, rows.facts):
            yield from rows.served(key, frames)
    yield from rows.end()
