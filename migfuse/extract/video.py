"""The video tracks: MViTv2-S tokens per clip (`video/mvit_v2_s`) and per video (`context/mvit_v2_s`).

Split along the runner's line (docs/contracts.md, "Extraction runner"):
  * loaders (worker processes): decode each video once (`decode.stream_clips`), sample frames
    (`sampling`), resize + centre-crop each frame to uint8 224x224 exactly as the checkpoint's recipe
    (`mvit.PREPROCESSING`) does before its float conversion, and stream one sample per row;
  * forward (main process): uint8 -> float, normalise, MViTv2-S tokens (bf16 autocast on GPU).

`extract_track("video" | "context", prepared, cache, ...)` is the library entry point (the CLI and
`migfuse demo` call it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from migfuse.errors import UserError
from migfuse.backbones.checkpoints import weights_provenance
from migfuse.extract.decode import DecodeError, PastEnd, probe
from migfuse.extract.decode_gpu import choose_decoder, stream_video
from migfuse.data_cache.tracks import get_track, tracks_with_layout
from migfuse.extract.runner import (Failure, RunOptions, RunSummary, Sample, TrackExtractor, WorkItem, extract,
                                    video_files)
from migfuse.extract.sampling import ClipSampling, ContextSampling

log = logging.getLogger(__name__)

#: The tracks of the track table this module extracts (MViTv2-S tokens of clips / of whole videos).
TRACKS = tracks_with_layout("video_tokens", "context_tokens")
#: Seed of the random weights used without --checkpoint, so a resumed run writes the same values.
RANDOM_WEIGHTS_SEED = 0


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
class _VideoLoader:
    """Shared decode-once-per-video logic. Picklable: paths and rules only, no model."""

    paths: Mapping[str, str | None]  # video id -> file (None: not found by `data prepare`)
    short_side: int = 256
    crop: int = 224
    decoder: str = "cpu"  # "gpu": torchcodec on `device` (`decode_gpu.choose_decoder` decided it)
    device: str = "cpu"

    def _path(self, key: str) -> Path:
        p = self.paths.get(key)
        if not p:
            raise DecodeError("open", f"no video file for video {key} in videos.csv (put the mp4 next to its "
                                      "labels and re-run `migfuse data prepare`)")
        return Path(p)

    def _stream(self, path: Path, requests: Mapping[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray | DecodeError]]:
        """The video decoded once for all `requests`, each frame resized + centre-cropped once, as it is
        decoded (on the GPU with --decoder gpu: only the crops come back)."""
        return stream_video(path, requests, decoder=self.decoder, device=self.device,
                            transform=lambda rgb: resize_crop(rgb, self.short_side, self.crop),
                            gpu_transform=lambda x: resize_crop_tensor(x, self.short_side, self.crop).permute(0, 2, 3, 1))


@dataclass
class ClipLoader(_VideoLoader):
    """Video track: per clip, (W, F, 224, 224, 3) uint8 frames."""

    clips: Mapping[str, tuple[int, int]] | None = None  # clip id -> (start_frame, end_frame)
    sampling: ClipSampling = ClipSampling()

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        try:
            path = self._path(item.key)
        except DecodeError as e:
            yield from (Sample(row, failure=Failure(e.stage, str(e))) for row in item.ids)
            return
        plans = {row: self.sampling.windows(*self.clips[row]) for row in item.ids}
        for row, frames in self._stream(path, plans):
            if not isinstance(frames, DecodeError):
                yield Sample(row, inputs={"frames": frames}, size=len(plans[row]))
            elif frames.stage == "open":
                yield Sample(row, failure=Failure("open", str(frames)))
            else:
                start, end = self.clips[row]
                why = _past_end(path, end, frames.n_frames) if isinstance(frames, PastEnd) else str(frames)
                yield Sample(row, failure=Failure("decode", f"clip {row} (frames {start}..{end}): {why}"))


def _past_end(path: Path, end: int, n_frames: int) -> str:
    return f"the video ends before frame {end} ({path.name} has {n_frames} frames at 25 fps); check the labels"


@dataclass
class ContextLoader(_VideoLoader):
    """Context track: per video, the frames of its valid windows (V, F, 224, 224, 3) + valid (K,).

    Windows the decoder could not serve (damage after them, or past the end) are invalid; the row
    fails only when no window is valid.
    """

    sampling: ContextSampling = ContextSampling()

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        for row in item.ids:  # a context row is the video itself
            try:
                path = self._path(row)
                n_frames = probe(path).n_frames
            except DecodeError as e:
                yield Sample(row, failure=Failure(e.stage, str(e)))
                continue
            if n_frames < 1:
                yield Sample(row, failure=Failure("open", f"{path.name} has no frames"))
                continue
            plan = self.sampling.indices(n_frames)  # (K, F)
            valid = np.zeros(len(plan), bool)
            kept: dict[int, np.ndarray] = {}
            error: DecodeError | None = None
            for j, frames in self._stream(path, {j: plan[j] for j in range(len(plan))}):
                if isinstance(frames, DecodeError):
                    error = frames
                else:
                    valid[j] = True
                    kept[j] = frames
            if not valid.any():
                why = str(error) if error is not None else "no window could be decoded"
                yield Sample(row, failure=Failure("decode", f"video {row}: {why}"))
                continue
            if error is not None:
                log.warning("context of video %s: %d of %d windows kept: %s", row, int(valid.sum()), len(valid), error)
            frames = np.stack([kept[j] for j in sorted(kept)])
            yield Sample(row, inputs={"frames": frames, "valid": valid}, size=len(kept))


# ------------------------------------------------------------------------------------------------
# the extractor
# ------------------------------------------------------------------------------------------------
class VideoExtractor(TrackExtractor):
    """MViTv2-S tokens for the `video` (per clip) or `context` (per video) track.

    Subclasses may replace the model (tests use a tiny stand-in) by overriding `backbone_name`,
    `token_shape`, `model_provenance` and `build_model`.
    """

    backbone_name = "mvit_v2_s"
    token_shape: tuple[int, int] = (393, 768)
    gpu_batch = 32

    def __init__(self, manifest: Any, track: str = "video", *, checkpoint: str | Path | None = None,
                 clip_sampling: ClipSampling = ClipSampling(), context_sampling: ContextSampling = ContextSampling(),
                 row_ids: list[str] | None = None, video_root: str | Path | None = None, decoder: str = "cpu"):
        """
        Args:
            manifest: a `Manifest` (clips, videos with their file paths).
            track: "video" (rows = clips) or "context" (rows = videos).
            video_root: where the videos are now, if moved since `data prepare` (see `video_files`).
            decoder: "cpu" (PyAV in the loader workers) or "gpu" (torchcodec on the extraction's GPU,
                `decode_gpu`; falls back to the CPU with one log line where it cannot run).
            checkpoint: MViTv2-S checkpoint file; None = seeded random weights (said loudly).
            clip_sampling / context_sampling: the frame rules (recorded in provenance).
            row_ids: restrict the rows to these clip ids (video) or video ids (context); default: all.
                The group is created for exactly these rows.
        """
        if track not in TRACKS:
            raise UserError(f"unknown video track '{track}': choose one of {', '.join(TRACKS)}")
        self.manifest, self.track = manifest, get_track(track)
        self.video_root = video_root
        self.decoder = decoder
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise UserError(f"checkpoint not found: {self.checkpoint} (pass the path of a local MViTv2-S .pth file)")
        self.clip_sampling, self.context_sampling = clip_sampling, context_sampling
        self.group = self.track.group(self.backbone_name)
        self.unit = str(self.track.unit)
        self.cpu_batch = 8 if self.track.per_video else 4  # windows / clips per CPU forward
        self._row_ids = list(row_ids) if row_ids is not None else None
        self._weights: dict[str, str] | None = None
        self._fine_tune: dict[str, Any] | None = None
        if self.checkpoint is not None and self.backbone_name == "mvit_v2_s":
            # a fine-tuned run (`backbone train video`) may be the demo width: its tokens are narrower
            from migfuse.backbones.mvit import NUM_TOKENS, checkpoint_facts

            facts = checkpoint_facts(self.checkpoint)
            self.token_shape = (NUM_TOKENS, facts["embed_dim"])
            self._fine_tune = facts["fine_tune"]
        self.model = None
        self.device = "cpu"

    # -- rows and work: from the track table (TrackExtractor) -------------------------------------
    def arrays(self) -> dict[str, Any]:
        from migfuse.data_cache.store import ArraySpec

        n, d = self.token_shape
        if self.track.per_video:
            k = self.context_sampling.windows
            return {"tokens": ArraySpec((k, n, d), "float16"), "valid": ArraySpec((k,), "bool")}
        if self.clip_sampling.max_windows > 1:
            return {"tokens": ArraySpec((self.clip_sampling.max_windows, n, d), "float16", ragged=True)}
        return {"tokens": ArraySpec((n, d), "float16")}

    def provenance(self) -> dict[str, Any]:
        sampling = self.context_sampling.record() if self.track.per_video else self.clip_sampling.record()
        return {"track": self.track.name, "backbone": self.backbone_name, **self.model_provenance(),
                "sampling": sampling, "decoder": "PyAV (FFmpeg), nearest frame to index/25 s",
                "tokens": "after the final LayerNorm: class token, then 8x7x7 patches in (t, h, w) order"}

    def loader(self):
        paths = video_files(self.manifest, self.video_root)
        pre = self.preprocessing()
        common = dict(paths=paths, short_side=int(pre["resize_short_side"]), crop=int(pre["crop_size"][0]),
                      decoder=choose_decoder(self.decoder, self.compute.device), device=self.compute.device)
        if self.track.per_video:
            return ContextLoader(**common, sampling=self.context_sampling)
        clips = {c.clip_id: (c.start_frame, c.end_frame) for c in self.manifest.clips}
        return ClipLoader(**common, clips=clips, sampling=self.clip_sampling)

    # -- the model (override these for another token model) --------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        from migfuse.backbones.mvit import PREPROCESSING

        return dict(PREPROCESSING)

    def model_provenance(self) -> dict[str, Any]:
        if self._weights is None:  # hashing a 130 MB checkpoint once is enough
            self._weights = weights_provenance(self.checkpoint, RANDOM_WEIGHTS_SEED)
            if self._fine_tune is not None:  # base checkpoint sha256 + the fine-tuning run
                self._weights = {**self._weights, "fine_tuned": self._fine_tune}
        return {**self._weights, "preprocessing": self.preprocessing()}

    def build_model(self, device: str):
        """-> callable (B, 3, F, 224, 224) float tensor on `device` -> (B, *token_shape) tensor."""
        import torch

        from migfuse.backbones.registry import create_backbone

        if self.checkpoint is None:
            log.warning("NO CHECKPOINT: %s uses RANDOM weights (seed %d); the tokens are meaningless except for "
                        "testing. Pass --checkpoint mvit_v2_s-ae3be167.pth (or an mmaction2 MViTv2-S file).",
                        self.group, RANDOM_WEIGHTS_SEED)
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
        # SDPA: torchvision's attention maths through the fused kernel (same tokens to float rounding)
        bb = create_backbone(self.backbone_name, checkpoint=self.checkpoint, device=device, attention="sdpa")
        from migfuse.backbones.mvit import forward_tokens

        # the caller holds inference mode; compiling the plain function keeps the graph whole
        return self.compute.maybe_compile(lambda x: forward_tokens(bb.model, x)[0])

    # -- main process ------------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        import torch

        self.device = device
        self.model = self.build_model(device)
        pre = self.preprocessing()
        self._mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1, 1)
        self._std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1, 1)

    def _tokens(self, frames: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, *token_shape) float32 tokens, in the runner's fixed batches."""
        return self.compute.in_fixed_batches(self._tokens_batch, frames)

    def _tokens_batch(self, frames: np.ndarray) -> np.ndarray:
        import torch

        x = self.compute.to_device(frames)  # uint8 over the bus (4x less than float)
        x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, F, H, W) in [0, 1]
        x = (x - self._mean) / self._std
        with torch.inference_mode(), self.compute.autocast():
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
                out.append({"tokens": part[0]})
        return out


def extract_track(
    track: str,
    prepared: str | Path,
    cache: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    shard: str | None = None,
    retry_failed: bool = False,
    frames: int = 16,
    windows: int = 1,
    context_windows: int = 8,
    row_ids: list[str] | None = None,
    video_root: str | Path | None = None,
    compile: bool = False,
    decoder: str = "cpu",
) -> RunSummary:
    """Extract the `video` (per clip) or `context` (per video) MViTv2-S tokens of a prepared dataset.

    Args:
        track: "video" or "context".
        prepared: the PREPARED folder (`migfuse data prepare` output).
        cache: CACHE.zarr path (created if absent).
        checkpoint: MViTv2-S checkpoint; None = seeded random weights (warned, recorded in provenance).
        device, precision, batch_size, workers, shard, retry_failed, compile: see `runner.RunOptions`
            (batch_size None: 4 clips / 8 windows per forward on a CPU, 32 on a GPU; workers None: 2 on a
            CPU, one per core but one on a GPU).
        frames: frames per window (MViTv2-S is built for 16).
        windows: video track: up to this many 16-frame windows per long clip (1 = one window).
        context_windows: context track: windows per video (K).
        row_ids: only these clip ids (video) or video ids (context), e.g. a quick demo subset.
        video_root: the folder the videos are in now, when moved since `data prepare`.
        decoder: "cpu" (PyAV) or "gpu" (torchcodec NVDEC on the extraction's GPU; see `decode_gpu`).

    Returns:
        RunSummary (this process's rows; `failed` non-empty means the CLI exits non-zero).
    """
    from migfuse.datasets.manifest import Manifest

    if track not in TRACKS:
        raise UserError(f"unknown video track '{track}': choose one of {', '.join(TRACKS)}")
    manifest = Manifest.load(prepared)
    extractor = VideoExtractor(manifest, track, checkpoint=checkpoint,
                               clip_sampling=ClipSampling(frames=frames, max_windows=windows),
                               context_sampling=ContextSampling(windows=context_windows, frames=frames),
                               row_ids=row_ids, video_root=video_root, decoder=decoder)
    return extract(extractor, cache, RunOptions(device=device, precision=precision, batch_size=batch_size,
                                                workers=workers, shard=shard, retry_failed=retry_failed,
                                                compile=compile))
