"""One decode pass per video for several RGB tracks (`extract all`): the loader side.

`OnePassLoader` takes a work item of one video whose ids are (track, row) pairs, asks each track's
loader for its rows' frame requests (`video_rows.VideoRows`), decodes the video once for the union
of them and hands each request its frames. So the frames no track needs are skipped once for all
tracks (`decode.read_frames`' non-reference skipping over the union), and every frame is decoded
once however many tracks use it. Each track then makes its samples exactly as its own command does
(the same `VideoRows`), so the tokens equal those of the separate commands.

On the CPU (PyAV) the decode keeps full frames and each track takes its own view of them
(`FrameLoader.view`: resize + crop for the video tracks, the full frame for the face tracks).
Tracks that share a view (video and context with one backbone) get it once per frame, as decoded.
The cost of the mixed case is memory: a video track's request holds its frames at full size until
its last frame is decoded (16 frames of 2.8 MB at 720p per clip; 16 x W with `--windows W`), where
its own command holds 224x224 crops.
With `--decoder gpu` (torchcodec) the video is decoded once per view instead: the crops are made on
the GPU and only they come back, as with the separate commands, so the GPU's crops equal theirs.

No torch here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterator, Mapping

from migfuse.extract.decode import DecodeError, measure
from migfuse.extract.decode_gpu import stream_video
from migfuse.extract.interface import Failure, Sample, WorkItem
from migfuse.extract.video_rows import FrameLoader, VideoRows, no_video_file


@dataclass
class OnePassLoader:
    """The loader of a one-pass run: WorkItem(video id, ((track, row), ...)) -> one Sample per
    (track, row), its id that pair. Picklable: the tracks' loaders, no model.

    `loaders`: track name -> that track's loader (all over the same manifest and video files);
    `decoder`: "cpu" or "gpu" (`decode_gpu.choose_decoder`, the same for every track).
    """

    loaders: Mapping[str, FrameLoader]
    decoder: str = "cpu"

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        wanted = split_ids(item.ids)
        first = self.loaders[next(iter(wanted))]
        path = first.paths.get(item.key)
        if not path:
            e = no_video_file(item.key)
            yield from (Sample(pair, failure=Failure(e.stage, str(e))) for pair in item.ids)
            return
        path = Path(path)
        facts = first.facts.get(item.key)
        try:
            facts = measure(path, facts)  # once for every track
        except DecodeError:
            pass  # each track says why in its own words (its rows measure again and fail alike)
        rows = {t: self.loaders[t].rows(WorkItem(item.key, tuple(ids)), path, facts) for t, ids in wanted.items()}
        for t, r in rows.items():
            yield from _tagged(t, r.early())
        for tracks, streamer in self._passes(rows):
            union = {(t, key): idx for t in tracks for key, idx in rows[t].requests.items()}
            if not union:
                continue
            if streamer is not None:  # every track here sees the frames as `streamer` makes them
                results = streamer.stream(path, union, facts)
            else:  # full frames; each track's view taken from them
                results = stream_video(path, union, decoder="cpu", facts=facts)
            for (t, key), frames in results:
                if streamer is None and not isinstance(frames, DecodeError):
                    frames = self.loaders[t].view(frames, rows[t].requests[key])
                yield from _tagged(t, rows[t].served(key, frames))
        for t, r in rows.items():
            yield from _tagged(t, r.end())

    def _passes(self, rows: Mapping[str, VideoRows]) -> list[tuple[list[str], FrameLoader | None]]:
        """The decodes of one video: (tracks, the loader whose `stream` serves them, or None for full
        frames). One on the CPU; on the GPU one per view, so crops are made where the frames are."""
        views: dict[Hashable, list[str]] = {}
        for t in rows:
            views.setdefault(self.loaders[t].view_key(), []).append(t)
        if len(views) > 1 and self.decoder != "gpu":
            return [(list(rows), None)]
        return [(tracks, self.loaders[tracks[0]]) for tracks in views.values()]


def _tagged(track: str, samples: Iterator[Sample]) -> Iterator[Sample]:
    for s in samples:
        yield Sample((track, s.id), inputs=s.inputs, failure=s.failure, size=s.size)


def split_ids(ids: Any) -> dict[str, list[str]]:
    """(track, row) pairs -> track -> rows, in order."""
    out: dict[str, list[str]] = {}
    for track, row in ids:
        out.setdefault(track, []).append(row)
    return out
