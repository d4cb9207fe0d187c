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
With `--decoder gpu` (torchcodec) the video is decoded once too (`decode_gpu.stream_clips_gpu` with a
transform per request): each chunk's frames are decoded once on the GPU, each view is made there
from them (`FrameLoader.gpu_view`: the crops, as the separate commands make them; the face tracks'
full frames) and only the views come back. A video torchcodec cannot open is decoded by the CPU
pass above instead.

No torch here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterator, Mapping

from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import DecodeError, measure
from migfuse.extract.decode_gpu import gpu_or_fallback, stream_clips_gpu, stream_video
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
        union = {(t, key): idx for t, r in rows.items() for key, idx in r.requests.items()}
        if union:
            for (t, key), frames in self._decode(path, union, rows, facts):
                yield from _tagged(t, rows[t].served(key, frames))
        for t, r in rows.items():
            yield from _tagged(t, r.end())

    def _decode(self, path: Path, union: dict[tuple[str, Hashable], Any], rows: Mapping[str, VideoRows],
                facts: VideoMeasure | None) -> Iterator[tuple[tuple[str, Hashable], Any]]:
        """The one decode of a video: each (track, request) with its frames in the track's view, or why
        they cannot be served."""
        if self.decoder == "gpu":
            views: dict[Hashable, Any] = {}  # view key -> its GPU transform, made once for its tracks
            for t in rows:
                views.setdefault(self.loaders[t].view_key(), self.loaders[t].gpu_view())
            transforms = {(t, key): views[self.loaders[t].view_key()] for t, key in union}
            device = self.loaders[next(iter(rows))].decode_device()
            yield from gpu_or_fallback(stream_clips_gpu(path, union, device=device, transforms=transforms,
                                                        facts=facts),
                                       path, lambda: self._decode_cpu(path, union, rows, facts, own_stream=False))
            return
        yield from self._decode_cpu(path, union, rows, facts)

    def _decode_cpu(self, path: Path, union: dict[tuple[str, Hashable], Any], rows: Mapping[str, VideoRows],
                    facts: VideoMeasure | None, own_stream: bool = True) -> Iterator[tuple[tuple[str, Hashable], Any]]:
        """The PyAV decode: one track's `stream` when every track sees the same view (its frames are
        made as decoded) and `own_stream` (False where the tracks' loaders decode on the GPU), else full
        frames and each track's view taken from them."""
        views = {self.loaders[t].view_key() for t in rows}
        if len(views) == 1 and own_stream:
            yield from self.loaders[next(iter(rows))].stream(path, union, facts)
            return
        for (t, key), frames in stream_video(path, union, decoder="cpu", facts=facts):
            if not isinstance(frames, DecodeError):
                frames = self.loaders[t].view(frames, rows[t].requests[key])
            yield (t, key), frames


def _tagged(track: str, samples: Iterator[Sample]) -> Iterator[Sample]:
    for s in samples:
        yield Sample((track, s.id), inputs=s.inputs, failure=s.failure, size=s.size)


def split_ids(ids: Any) -> dict[str, list[str]]:
    """(track, row) pairs -> track -> rows, in order."""
    out: dict[str, list[str]] = {}
    for track, row in ids:
        out.setdefault(track, []).append(row)
    return out
