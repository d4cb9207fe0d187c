"""GPU decoding (NVDEC) through torchcodec's CUDA decoder, serving what `decode.stream_clips` serves.

`extract video|context|face --decoder gpu` decodes each video on the GPU of the extraction
(torchcodec `VideoDecoder(device="cuda:N")`, which drives NVDEC), resizes and crops there
(`transform`, e.g. `video.resize_crop_tensor`), and copies only the small result back to the
loader worker, so an H100/H200 node is not bound by its CPU cores' h264 decoding. The frame rule is
`decode`'s: annotation index f is the frame shown nearest to f / 25 s (requested as the frame
*played at* f / 25 + half a native frame, which picks the same frame, ties included), and the
display rotation is applied as in `decode._to_rgb` (by torchcodec itself from 0.11 on).

Optional: torchcodec is not a dependency (its wheels are built against one CUDA torch each; see
the `gpu-decode` extra). `gpu_decoding_unavailable` says why it cannot run here; the extractors
then decode on the CPU with PyAV and say so in one log line. A video torchcodec cannot open (a
codec NVDEC lacks) is decoded with PyAV instead.

Tokens from the two decoders differ only by the YUV -> RGB conversion (NVDEC's against FFmpeg's
swscale): the device check (`benchmarks/gpu_scale.py`) compares them and states the tolerance.

No model here: this runs in the runner's loader worker processes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np

from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import ANNOTATION_FPS, DecodeError, PastEnd, past_end_message
from migfuse.datasets.orientation import video_rotation

log = logging.getLogger(__name__)

#: The choices of `--decoder`: PyAV on the CPU, or torchcodec on the extraction's GPU.
DECODERS = ("cpu", "gpu")
#: Requests (clips, windows) decoded per torchcodec call: their frames sit on the GPU at full size
#: until transformed (16 frames x 8 requests x 2.8 MB at 720p = 350 MB).
CHUNK_REQUESTS = 8


def gpu_decoding_unavailable(device: str) -> str | None:
    """None when torchcodec's CUDA decoder can run for an extraction on `device`; else why not."""
    if not str(device).startswith("cuda"):
        return f"the extraction runs on {device}, not on a GPU"
    try:
        import torch

        if not torch.cuda.is_available():
            return f"this torch ({torch.__version__}) has no CUDA device"
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as e:  # noqa: BLE001 - missing, or built for another torch / CUDA: all mean "no"
        return f"torchcodec cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def choose_decoder(requested: str, device: str) -> str:
    """The decoder the loaders use: "gpu" only when asked for and available, else "cpu" (said once).

    Raises:
        ValueError: `requested` is not one of `DECODERS` (the CLI's choices prevent it).
    """
    if requested not in DECODERS:
        raise ValueError(f"decoder {requested!r} is not one of {DECODERS}")
    if requested == "cpu":
        return "cpu"
    why = gpu_decoding_unavailable(device)
    if why is not None:
        log.warning("--decoder gpu: %s; decoding on the CPU with PyAV instead", why)
        return "cpu"
    log.info("decoding on %s with torchcodec (NVDEC)", device)
    return "gpu"


def stream_clips_gpu(
    path: str | Path,
    requests: Mapping[Hashable, np.ndarray | Iterable[int]],
    *,
    device: str,
    transform: Callable[[Any], Any] | None = None,
    chunk: int = CHUNK_REQUESTS,
    facts: VideoMeasure | None = None,
    transforms: Mapping[Hashable, Callable[[Any], Any] | None] | None = None,
) -> Iterator[tuple[Hashable, np.ndarray | DecodeError]]:
    """`decode.stream_clips` with torchcodec's decoder on `device`; the same requests and yields.

    Each chunk's frames are decoded once, whatever views its requests want (`transforms`): every
    view is made on the device from the decoded frames its own requests need, and only it comes back.

    Args:
        path: the video file.
        requests: request id -> 0-based 25 fps frame indices (any shape, non-empty).
        device: torch device of the decoder ("cuda:N"; "cpu" runs torchcodec's CPU decoder).
        transform: (N, 3, H, W) uint8 tensor on `device` -> (N, ...) tensor, applied on the device
            before the copy back (e.g. resize + crop, permuted to (N, h, w, 3)); None: the full
            frames as (N, H, W, 3).
        chunk: requests decoded per call (bounds the device memory held).
        facts: the video's measured facts (`data prepare`): past-the-end failures then name the true
            cause as `decode.past_end_message` does.
        transforms: request id -> its view's transform (as `transform`; None: full frames), for
            requests that want different views of one decode (`extract all`); requests whose
            transform is the same object share its result. None: `transform` for every request.

    Yields:
        (request id, uint8 array shaped `indices.shape + frame.shape`) or (request id, DecodeError):
        every request on an "open" error, `PastEnd` for requests needing frames after the last
        one, "decode" for the requests of the chunk where decoding failed and all after it.
        Requests are served in the order of their first frame.
    """
    import torch

    plans = {key: np.asarray(idx, dtype=np.int64) for key, idx in requests.items()}
    for key, idx in plans.items():
        if idx.size == 0:
            raise ValueError(f"request {key!r} has no frame indices")
        if idx.min() < 0:
            raise ValueError(f"request {key!r} has a negative frame index {int(idx.min())}")
    name = Path(path).name
    if not Path(path).is_file():
        err = DecodeError("open", f"video file not found: {path}")
        yield from ((key, err) for key in plans)
        return
    try:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(str(path), device=device, seek_mode="exact", dimension_order="NCHW")
        meta = decoder.metadata
        fps = float(meta.average_fps or ANNOTATION_FPS)
        begin = float(meta.begin_stream_seconds or 0.0)
        end = float(meta.end_stream_seconds)
    except Exception as e:  # noqa: BLE001 - any open failure is a bad input, reported with its reason
        err = DecodeError("open", f"cannot open {path} with torchcodec: {type(e).__name__}: {e}")
        yield from ((key, err) for key in plans)
        return
    # torchcodec >= 0.11 applies the display rotation itself (and has `metadata.rotation`); older
    # releases return the coded picture, turned here as `decode._to_rgb` does
    turns = 0 if hasattr(meta, "rotation") else video_rotation(path) // 90
    half = 0.5 / fps
    n_frames = int(round((end - begin) * ANNOTATION_FPS))
    if facts is not None:
        # the measured facts rule, as on the PyAV path: frame 0 is the first displayed picture and the
        # last picture covers its whole duration (a 1 fps video keeps its last second)
        begin, n_frames = facts.origin, facts.frames

    def played_at(i: int) -> float:
        # the frame played at t + half a frame is the frame nearest to t (PyAV path: `decode`); never
        # past torchcodec's own end, which stops at the last picture's start plus its duration
        return min(begin + i / ANNOTATION_FPS + half, end - 1e-6)

    def is_past(i: int) -> bool:
        return i >= n_frames if facts is not None else begin + i / ANNOTATION_FPS + half >= end

    def view_of(key: Hashable) -> Callable[[Any], Any] | None:
        return transforms[key] if transforms is not None else transform

    order = sorted(plans, key=lambda k: int(plans[k].min()))
    servable, past = [], []
    for key in order:
        (past if is_past(int(plans[key].max())) else servable).append(key)
    failed: DecodeError | None = None
    for start in range(0, len(servable), max(1, chunk)):
        keys = servable[start:start + chunk]
        if failed is None:
            wanted = np.unique(np.concatenate([plans[k].reshape(-1) for k in keys]))
            try:
                batch = decoder.get_frames_played_at(seconds=[played_at(int(i)) for i in wanted]).data
                if turns:
                    batch = torch.rot90(batch, k=-turns, dims=(2, 3))  # clockwise, as `upright`
                views = _views_of_chunk(batch, wanted, {k: plans[k] for k in keys}, view_of)
            except Exception as e:  # noqa: BLE001 - decoder errors on corrupt data come in many types
                failed = DecodeError("decode", f"{name}: {type(e).__name__}: {e}")
        if failed is not None:
            yield from ((key, failed) for key in keys)
            continue
        for key in keys:
            frames, pos = views[id(view_of(key))]
            idx = plans[key]
            rows = frames[[pos[int(i)] for i in idx.reshape(-1).tolist()]]
            yield key, rows.reshape(*idx.shape, *rows.shape[1:])
    for key in past:
        missing = sorted(int(i) for i in np.unique(plans[key]) if is_past(int(i)))
        if facts is not None:
            yield key, PastEnd(past_end_message(name, missing, facts), missing, facts.frames)
            continue
        yield key, PastEnd(f"frames {missing[:3]}{'...' if len(missing) > 3 else ''} are past the end of "
                           f"{name} (it decodes {n_frames} frames at 25 fps); check the labels", missing, n_frames)


def _views_of_chunk(batch: Any, wanted: np.ndarray, plans: Mapping[Hashable, np.ndarray],
                    view_of: Callable[[Hashable], Callable[[Any], Any] | None]) -> dict[int, tuple[np.ndarray, dict]]:
    """One chunk's decoded frames -> each view its requests want, made on the device and copied back.

    `batch`: (N, 3, H, W) uint8 tensor of the frames `wanted` (sorted 25 fps indices). Returns
    id(transform) -> (that view's frames (M, ...) as numpy, frame index -> row in them); each view
    transforms only the frames its own requests need (a face track's full frames are not cropped,
    a video track's crops do not bring full frames back).
    """
    needs: dict[int, list[np.ndarray]] = {}
    transforms: dict[int, Callable[[Any], Any] | None] = {}
    for key, idx in plans.items():
        t = view_of(key)
        transforms[id(t)] = t
        needs.setdefault(id(t), []).append(idx.reshape(-1))
    out = {}
    for tid, parts in needs.items():
        frames = np.unique(np.concatenate(parts))
        if len(frames) == len(wanted):
            chosen = batch
        else:  # the rows of `wanted` this view needs (both sorted)
            import torch

            rows = np.searchsorted(wanted, frames)
            chosen = batch[torch.as_tensor(rows, device=batch.device)]
        t = transforms[tid]
        result = t(chosen) if t is not None else chosen.permute(0, 2, 3, 1)
        out[tid] = (result.contiguous().cpu().numpy(), {int(i): j for j, i in enumerate(frames.tolist())})
    return out


def gpu_or_fallback(results: Iterator[tuple[Hashable, Any]], path: str | Path,
                    fallback: Callable[[], Iterator[tuple[Hashable, Any]]]) -> Iterator[tuple[Hashable, Any]]:
    """`stream_clips_gpu`'s results, or `fallback()`'s (PyAV) when torchcodec cannot open a video that
    exists (said at debug level: NVDEC lacks some codecs and profiles)."""
    first = next(results, None)
    if first is None:
        return
    if isinstance(first[1], DecodeError) and first[1].stage == "open" and Path(path).is_file():
        log.debug("%s; decoding it with PyAV", first[1])
        yield from fallback()
        return
    yield first
    yield from results


def stream_video(
    path: str | Path,
    requests: Mapping[Hashable, np.ndarray | Iterable[int]],
    *,
    decoder: str = "cpu",
    device: str = "cpu",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    gpu_transform: Callable[[Any], Any] | None = None,
    facts: VideoMeasure | None = None,
) -> Iterator[tuple[Hashable, np.ndarray | DecodeError]]:
    """What every RGB loader calls: `decode.stream_clips` (decoder "cpu", `transform` per frame) or
    `stream_clips_gpu` (decoder "gpu" on `device`, `gpu_transform` per batch). A video that exists
    but torchcodec cannot open is decoded with PyAV instead (said at debug level: NVDEC lacks some
    codecs and profiles). `facts`: the video's measured facts for PyAV (`decode.stream_clips`)."""
    from migfuse.extract.decode import stream_clips

    if decoder != "gpu":
        yield from stream_clips(path, requests, transform=transform, facts=facts)
        return
    yield from gpu_or_fallback(stream_clips_gpu(path, requests, device=device, transform=gpu_transform, facts=facts),
                               path, lambda: stream_clips(path, requests, transform=transform, facts=facts))
