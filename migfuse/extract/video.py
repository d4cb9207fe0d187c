"""The video tracks: clip tokens per clip (`video/<backbone>`) and per video (`context/<backbone>`).

Any registered backbone whose `tracks` name the track extracts it (MViTv2-S by default; see
`migfuse.backbones.registry`). Split along the runner's line (docs/contracts.md, "Extraction runner"):
  * loaders (worker processes): decode each video once (`decode.stream_clips`), sample frames
    (`sampling`), resize + centre-crop each frame to uint8 exactly as the backbone's recipe
    (`Backbone.preprocessing`) does before its float conversion, and stream one sample per row;
  * forward (main process): uint8 -> float, normalise, backbone tokens (bf16 autocast on GPU).

`build_extractor` makes the extractor of both tracks for `migfuse.extract.entry.extract`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from migfuse.backbones.checkpoints import weights_provenance
from migfuse.backbones.registry import RANDOM_WEIGHTS_SEED, create_for_track, track_backbone_class
from migfuse.checkpoint_file import CheckpointFile
from migfuse.data_cache.tracks import get_track, tracks_with_layout
from migfuse.errors import UserError
from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import DecodeError, measure
from migfuse.extract.decode_gpu import choose_decoder, stream_video
from migfuse.extract.entry import register_track
from migfuse.extract.interface import Failure, Sample, TrackExtractor, WorkItem, videos_with_files
from migfuse.extract.presets import preset_group
from migfuse.extract.sampling import ClipSampling, ContextSampling
from migfuse.extract.video_rows import FrameLoader, VideoRows

log = logging.getLogger(__name__)

#: The tracks of the track table this module extracts (MViTv2-S tokens of clips / of whole videos).
TRACKS = tracks_with_layout("video_tokens", "context_tokens")


# ------------------------------------------------------------------------------------------------
# CPU side: frame preprocessing and the loaders (run in worker processes; torch imported lazily)
# ------------------------------------------------------------------------------------------------
def resize_crop(frame: np.ndarray, short_side: int = 256, crop: int = 224) -> np.ndarray:
    """Resize so the short side is `short_side` (bilinear, no antialias), then centre-crop.

    Matches torchvision's `VideoClassification` transform up to (excluding) its float conversion:
    the same output size rule, interpolation, rounding back to uint8 and crop offsets.

    Args:
        frame: (H, W, 3) uint8 RGB.
    Returns:
        (crop, crop, 3) uint8.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return resize_crop_tensor(x, short_side, crop)[0].permute(1, 2, 0).contiguous().numpy()


def resize_crop_tensor(x: Any, short_side: int = 256, crop: int = 224) -> Any:
    """`resize_crop` on a batch of frames already in torch, on any device (the GPU decoder's frames).

    Args:
        x: (N, 3, H, W) uint8 tensor.
    Returns:
        (N, 3, crop, crop) uint8 tensor on the same device.
    Raises:
        ValueError: the resized frame is smaller than the crop.
    """
    import torch

    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_side * long / short)
    new_h, new_w = (new_long, short_side) if w <= h else (short_side, new_long)
    if (new_h, new_w) != (h, w):
        x = torch.nn.functional.interpolate(x.float(), size=(new_h, new_w), mode="bilinear",
                                            align_corners=False, antialias=False).round_().to(torch.uint8)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"frame {new_h}x{new_w} after resizing is smaller than the {crop}x{crop} crop")
    return x[:, :, top:top + crop, left:left + crop]


@dataclass
class _VideoLoader(FrameLoader):
    """Shared decode-once-per-video logic. Picklable: paths and rules only, no model."""

    paths: Mapping[str, str | None]  # video id -> file (None: not found by `data prepare`)
    #: video id -> what `data prepare` measured (None / absent: measured when the video is decoded)
    facts: Mapping[str, VideoMeasure | None] = field(default_factory=dict)
    short_side: int = 256
    crop: int = 224
    decoder: str = "cpu"  # "gpu": torchcodec on `device` (`decode_gpu.choose_decoder` decided it)
    device: str = "cpu"

    def stream(self, path: Path, requests: Mapping[Any, np.ndarray],
               facts: VideoMeasure | None) -> Iterator[tuple[Any, np.ndarray | DecodeError]]:
        """The video decoded once for all `requests`, each frame resized + centre-cropped once, as it is
        decoded (on the GPU with --decoder gpu: only the crops come back)."""
        return stream_video(path, requests, decoder=self.decoder, device=self.decode_device(), facts=facts,
                            transform=lambda rgb: resize_crop(rgb, self.short_side, self.crop),
                            gpu_transform=self.gpu_view())

    def view_key(self) -> tuple:
        return ("crop", self.short_side, self.crop)

    def gpu_view(self) -> Callable[[Any], Any]:
        return lambda x: resize_crop_tensor(x, self.short_side, self.crop).permute(0, 2, 3, 1)

    def decode_device(self) -> str:
        return self.device

    def view(self, frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Full frames -> resized + centre-cropped, each distinct frame once (as `stream` does)."""
        flat = frames.reshape(-1, *frames.shape[-3:])
        unique, first, inverse = np.unique(indices.reshape(-1), return_index=True, return_inverse=True)
        crops = np.stack([resize_crop(flat[i], self.short_side, self.crop) for i in first])
        return crops[inverse.reshape(-1)].reshape(*indices.shape, *crops.shape[1:])


@dataclass
class ClipLoader(_VideoLoader):
    """Video track: per clip, (W, F, 224, 224, 3) uint8 frames."""

    clips: Mapping[str, tuple[int, int]] | None = None  # clip id -> (start_frame, end_frame)
    sampling: ClipSampling = ClipSampling()

    def rows(self, item: WorkItem, path: Path, facts: VideoMeasure | None) -> VideoRows:
        return _ClipRows(self, item.ids, facts)


class _ClipRows(VideoRows):
    def __init__(self, loader: ClipLoader, rows: tuple[str, ...], facts: VideoMeasure | None):
        self.clips, self.facts = loader.clips, facts
        self.requests = {row: loader.sampling.windows(*loader.clips[row]) for row in rows}

    def served(self, row: str, frames: np.ndarray | DecodeError) -> Iterator[Sample]:
        if not isinstance(frames, DecodeError):
            yield Sample(row, inputs={"frames": frames}, size=len(self.requests[row]))
        elif frames.stage == "open":
            yield Sample(row, failure=Failure("open", str(frames)))
        else:
            start, end = self.clips[row]
            yield Sample(row, failure=Failure("decode", f"clip {row} (frames {start}..{end}): {frames}"))


@dataclass
class ContextLoader(_VideoLoader):
    """Context track: per video, the frames of its valid windows (V, F, 224, 224, 3) + valid (K,).

    Windows are placed over the decoded length (`VideoMeasure.frames`, never the header's claim).
    Windows the decoder could not serve (damage after them) are invalid; the row fails only when no
    window is valid.
    """

    sampling: ContextSampling = ContextSampling()

    def rows(self, item: WorkItem, path: Path, facts: VideoMeasure | None) -> VideoRows:
        return _ContextRows(self, item.key, path, facts)


class _ContextRows(VideoRows):
    """The one row of a video (a context row is the video itself): K windows as K requests."""

    def __init__(self, loader: ContextLoader, row: str, path: Path, facts: VideoMeasure | None):
        self.row, self.requests, self.failure = row, {}, None
        try:
            self.facts = measure(path, facts)
        except DecodeError as e:
            self.failure = Failure(e.stage, str(e))
            return
        if self.facts.frames < 1:
            self.failure = Failure("open", f"{path.name} decodes no picture")
            return
        plan = loader.sampling.indices(self.facts.frames)  # (K, F)
        self.requests = {j: plan[j] for j in range(len(plan))}
        self.kept: dict[int, np.ndarray] = {}
        self.error: DecodeError | None = None

    def early(self) -> Iterator[Sample]:
        if self.failure is not None:
            yield Sample(self.row, failure=self.failure)

    def served(self, j: int, frames: np.ndarray | DecodeError) -> Iterator[Sample]:
        if isinstance(frames, DecodeError):
            self.error = frames
        else:
            self.kept[j] = frames
        return iter(())

    def end(self) -> Iterator[Sample]:
        if self.failure is not None:
            return
        row, valid = self.row, np.zeros(len(self.requests), bool)
        valid[sorted(self.kept)] = True
        if not valid.any():
            why = str(self.error) if self.error is not None else "no window could be decoded"
            yield Sample(row, failure=Failure("decode", f"video {row}: {why}"))
            return
        if self.error is not None:
            log.warning("context of video %s: %d of %d windows kept: %s", row, int(valid.sum()), len(valid),
                        self.error)
        frames = np.stack([self.kept[j] for j in sorted(self.kept)])
        yield Sample(row, inputs={"frames": frames, "valid": valid}, size=len(self.kept))


# ------------------------------------------------------------------------------------------------
# the extractor
# ------------------------------------------------------------------------------------------------
class VideoExtractor(TrackExtractor):
    """Clip tokens of a video backbone for the `video` (per clip) or `context` (per video) track.

    The backbone is built (and its checkpoint read, once) when the extractor is made, on the CPU;
    `setup` moves it to the runtime's device. Without a checkpoint its weights are random, seeded
    with `backbones.registry.RANDOM_WEIGHTS_SEED` (said loudly, recorded in the provenance).
    """

    gpu_batch = 32

    def __init__(self, manifest: Any, track: str = "video", *, backbone: str = "mvit_v2_s",
                 checkpoint: CheckpointFile | str | Path | None = None,
                 clip_sampling: ClipSampling = ClipSampling(), context_sampling: ContextSampling = ContextSampling(),
                 row_ids: list[str] | None = None, video_root: str | Path | None = None, decoder: str = "cpu",
                 pool: str | None = None, preset: dict[str, Any] | None = None,
                 checkpoint_option: str | None = "--checkpoint"):
        """
        Args:
            manifest: a `Manifest` (clips, videos with their file paths).
            track: "video" (rows = clips) or "context" (rows = videos).
            backbone: a registered backbone that extracts this track (`backbone info` lists them).
            checkpoint: its checkpoint file; None = seeded random weights (said loudly).
            clip_sampling / context_sampling: the frame rules (recorded in provenance).
            row_ids: restrict the rows to these clip ids (video) or video ids (context); default: all.
                The group is created for exactly these rows.
            video_root: where the videos are now, if moved since `data prepare` (`Manifest.video_files`).
            decoder: "cpu" (PyAV in the loader workers) or "gpu" (torchcodec on the extraction's GPU,
                `decode_gpu`; falls back to the CPU with one log line where it cannot run).
            pool: None = every token; "cls" = the class token only (video track, one window), stored
                as tokens (1, D), e.g. (1, 768) for MViTv2-S.
            preset: the record of the preset that chose these settings (`presets.apply_preset`); the
                group becomes TRACK/BACKBONE-PRESET and the provenance holds the record.
            checkpoint_option: the option the random-weights warning tells to pass (None: no warning).
        Raises:
            UserError: an unknown track or backbone, a backbone that does not extract this track, a
                checkpoint that is missing or does not fit, not one video file (`videos_with_files`).
        """
        if track not in TRACKS:
            raise UserError(f"unknown video track '{track}': choose one of {', '.join(TRACKS)}")
        self.manifest, self.track = manifest, get_track(track)
        self.video_root = video_root
        self.decoder = decoder
        self.checkpoint = checkpoint
        self.clip_sampling, self.context_sampling = clip_sampling, context_sampling
        # the track, then the recipe's frames, are checked before any model is built
        need = track_backbone_class(self.track.name, backbone).recipe(checkpoint).get("clip_len")
        frames = (context_sampling if self.track.per_video else clip_sampling).frames
        if need and frames != need:
            raise UserError(f"{backbone} takes {need} frames per window (its checkpoint's recipe), not {frames}: "
                            "drop --frames")
        if getattr(manifest, "clips", None):  # not one video file: one line before the model is built
            videos_with_files(manifest, video_root)
        self.backbone = create_for_track(self.track.name, backbone, checkpoint, checkpoint_option)
        self.backbone_name = backbone
        self.token_shape = tuple(self.backbone.token_shape)
        if pool is not None and (pool != "cls" or self.track.per_video or clip_sampling.max_windows > 1):
            raise UserError(f"pooling {pool!r} is for the video track with one window per clip (pool: cls)")
        self.pool, self.preset = pool, preset
        self.group = preset_group(self.track.group(backbone), preset)
        self.unit = str(self.track.unit)
        self.cpu_batch = 8 if self.track.per_video else 4  # windows / clips per CPU forward
        self._row_ids = list(row_ids) if row_ids is not None else None
        self.model = None

    # -- rows and work: from the track table (TrackExtractor) -------------------------------------
    def arrays(self) -> dict[str, Any]:
        from migfuse.data_cache.store import ArraySpec

        n, d = self.token_shape
        if self.track.per_video:
            k = self.context_sampling.windows
            return {"tokens": ArraySpec((k, n, d), "float16"), "valid": ArraySpec((k,), "bool")}
        if self.clip_sampling.max_windows > 1:
            return {"tokens": ArraySpec((self.clip_sampling.max_windows, n, d), "float16", ragged=True)}
        return {"tokens": ArraySpec((1 if self.pool else n, d), "float16")}

    def provenance(self) -> dict[str, Any]:
        sampling = self.context_sampling.record() if self.track.per_video else self.clip_sampling.record()
        return {"track": self.track.name, "backbone": self.backbone_name,
                **weights_provenance(self.checkpoint, RANDOM_WEIGHTS_SEED), **self.backbone.provenance(),
                "preprocessing": self.preprocessing(), "sampling": sampling,
                "decoder": "PyAV (FFmpeg), nearest frame to index/25 s",
                "tokens": self.backbone.tokens_doc, **self._pooling()}

    def _pooling(self) -> dict[str, Any]:
        """Provenance of a pooled group: the pooling, the preset, and `default_pooling` raw (the views
        keep the one vector as it is)."""
        if not self.pool:
            return {}
        from migfuse.extract.presets import POOLINGS

        return {"tokens": "one vector per clip: " + POOLINGS[self.pool],
                "pooling": {"name": self.pool, "doc": POOLINGS[self.pool]}, "default_pooling": "raw",
                **({"preset": self.preset} if self.preset else {})}

    def preprocessing(self) -> dict[str, Any]:
        return dict(self.backbone.preprocessing)

    def check_inputs(self) -> None:
        self.videos_with_input()

    def videos_with_input(self) -> set[str]:
        return videos_with_files(self.manifest, self.video_root)

    def loader(self):
        paths = self.manifest.video_files(self.video_root)
        pre = self.preprocessing()
        common = dict(paths=paths, facts=self.manifest.video_measures(), short_side=int(pre["resize_short_side"]),
                      crop=int(pre["crop_size"][0]),
                      decoder=choose_decoder(self.decoder, self.runtime.device), device=self.runtime.device)
        if self.track.per_video:
            return ContextLoader(**common, sampling=self.context_sampling)
        clips = {c.clip_id: (c.start_frame, c.end_frame) for c in self.manifest.clips}
        return ClipLoader(**common, clips=clips, sampling=self.clip_sampling)

    # -- main process ------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        device = self.runtime.device
        self.backbone.model.to(device).eval()
        # the caller holds inference mode; compiling the plain function keeps the graph whole
        self.model = self.runtime.maybe_compile(self.backbone.clip_tokens)
        pre = self.preprocessing()
        self._mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1, 1)
        self._std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1, 1)

    def _tokens(self, frames: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, *token_shape) float32 tokens, in the runner's fixed batches."""
        return self.in_fixed_batches(self._tokens_batch, frames)

    def _tokens_batch(self, frames: np.ndarray) -> np.ndarray:
        import torch

        from migfuse.backbones.video_input import normalise_clips

        x = self.runtime.to_device(frames)  # uint8 over the bus (4x less than float)
        x = normalise_clips(x, self._mean, self._std)  # (B, 3, F, H, W), as fine-tuning's input
        with torch.inference_mode(), self.runtime.autocast():
            out = self.model(x)
        return out.float().cpu().numpy()

    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:
        counts = [len(i["frames"]) for i in inputs]
        tokens = self._tokens(np.concatenate([i["frames"] for i in inputs]))
        out: list[dict[str, np.ndarray] | Failure] = []
        for inp, part in zip(inputs, np.split(tokens, np.cumsum(counts)[:-1])):
            if self.track.per_video:
                valid = inp["valid"]
                full = np.zeros((len(valid), *self.token_shape), np.float32)
                full[valid] = part
                out.append({"tokens": full, "valid": valid})
            elif self.clip_sampling.max_windows > 1:
                out.append({"tokens": part})
            else:
                out.append({"tokens": part[0][:1] if self.pool == "cls" else part[0]})
        return out


@register_track(*TRACKS)
def build_extractor(manifest: Any, track: str, *, backbone: str = "mvit_v2_s",
                    checkpoint: CheckpointFile | None = None, frames: int | None = None, windows: int = 1,
                    context_windows: int = 8, row_ids: list[str] | None = None,
                    video_root: str | Path | None = None, decoder: str = "cpu", pool: str | None = None,
                    preset: dict[str, Any] | None = None,
                    checkpoint_option: str | None = "--checkpoint") -> VideoExtractor:
    """The `video` (per clip) or `context` (per video) extractor of a manifest.

    Args:
        backbone, checkpoint: the video backbone and its weights (None: seeded random weights).
        frames: frames per window; None = the backbone's recipe (`preprocessing["clip_len"]`, 16 for
            MViTv2-S), which is also the only value a backbone with a recipe takes.
        windows: video track: up to this many 16-frame windows per long clip (1 = one window).
        context_windows: context track: windows per video (K).
        row_ids: only these clip ids (video) or video ids (context), e.g. a quick demo subset.
        video_root: the folder the videos are in now, when moved since `data prepare`.
        decoder: "cpu" (PyAV) or "gpu" (torchcodec NVDEC on the extraction's GPU; see `decode_gpu`).
        pool, preset: set by `--preset` (`migfuse.extract.presets`): one pooled vector per clip.
        checkpoint_option: the option the random-weights warning names (None: no warning).
    """
    if frames is None:
        frames = int(track_backbone_class(track, backbone).recipe(checkpoint).get("clip_len", 16))
    return VideoExtractor(manifest, track, backbone=backbone, checkpoint=checkpoint,
                          clip_sampling=ClipSampling(frames=frames, max_windows=windows),
                          context_sampling=ContextSampling(windows=context_windows, frames=frames),
                          row_ids=row_ids, video_root=video_root, decoder=decoder, pool=pool, preset=preset,
                          checkpoint_option=checkpoint_option)
