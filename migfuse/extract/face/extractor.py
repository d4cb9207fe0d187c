"""The face track: MTCNN faces -> 5-point alignment -> SwinFace expression features, per clip or window.

Split along the runner's line (docs/contracts.md, "Extraction runner"):
  * loader (worker processes): decode each video once for all its rows (`decode.stream_clips`:
    each clip / window is detected as soon as its frames are decoded and its full-size frames are
    released then, so memory does not grow with the video's length), sample K face frames per
    clip (uniform over the clip, the video track's rule) or per context window (K of the window's
    frames, the context track's windows), detect faces with MTCNN (on the CPU, or on the GPU of
    an extraction that runs on one, several rows per call),
    keep ONE main face per row (`detect.select_main_face`: anchored on the largest confident face, followed by
    overlap), align it to the ArcFace 112x112 template; frames without it are masked, never filled;
  * forward (main process): SwinFace on the aligned crops; per face frame the expression-branch
    512-d feature and the 7 expression logits (optionally the 7x7x768 global tokens).

Groups (docs/contracts.md): `face/swinface` per clip — features (K, 512), logits (K, 7), mask (K,)
[, global_tokens (K, 49, 768)]; `face_context/swinface` per video — features (Wc, K, 512),
logits (Wc, K, 7), mask (Wc, K).

A row where no face is ever found is stored with an all-False mask (a real outcome the fusion heads
handle), not as a failure: failures are for input that could not be read. A decode error fails only
the clips not yet served (earlier clips are kept); in a `face_context` row the windows after it stay
masked (the row fails only when no window could be decoded), as the context track marks them invalid.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from migfuse.backbones.checkpoints import weights_provenance
from migfuse.backbones.registry import RANDOM_WEIGHTS_SEED, create_for_track
from migfuse.checkpoint_file import CheckpointFile
from migfuse.data_cache.tracks import Track, get_track, tracks_with_layout
from migfuse.errors import UserError
from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import DecodeError, measure
from migfuse.extract.decode_gpu import choose_decoder, stream_video
from migfuse.extract.entry import register_track
from migfuse.extract.interface import Failure, Sample, TrackExtractor, WorkItem, videos_with_files
from migfuse.extract.sampling import ContextSampling, uniform_indices
from migfuse.extract.video_rows import FrameLoader, VideoRows

log = logging.getLogger(__name__)

SCOPES = ("clip", "context")
#: --scope -> the track it writes: the face-frame tracks of the table, per clip and per video.
_FACE_TRACKS = {get_track(name).unit: name for name in tracks_with_layout("face_frames")}


def scope_track(scope: str) -> Track:
    """The face track of a --scope: clip -> face (rows = clips), context -> face_context (rows = videos)."""
    if scope not in SCOPES:
        raise UserError(f"unknown --scope '{scope}': choose clip or context")
    return get_track(_FACE_TRACKS["clip" if scope == "clip" else "video"])
FEATURE_DIM, NUM_EXPRESSIONS = 512, 7
#: frames per MTCNN call when detection runs on a GPU (rows of a video gathered until this many)
GPU_DETECT_FRAMES = 64


@dataclass
class FaceLoader(FrameLoader):
    """Decode + detect + align for the rows of one video. Picklable: paths and rules, no model."""

    paths: Mapping[str, str | None]  # video id -> mp4 (None: not found by `data prepare`)
    scope: str
    frames: int  # K face frames per clip / per window
    clips: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # clip id -> (start, end)
    context: ContextSampling = ContextSampling()
    min_prob: float = 0.9
    #: where MTCNN runs in the worker: "cpu", or the extraction's GPU ("cuda:N")
    detector_device: str = "cpu"
    #: frames MTCNN takes per call: rows are gathered until they hold this many (1: each row at once,
    #: the CPU behaviour; on a GPU larger batches keep it busy)
    detect_frames: int = 1
    decoder: str = "cpu"  # "gpu": torchcodec on `detector_device` (see `decode_gpu`)
    #: video id -> what `data prepare` measured (None / absent: measured when the video is decoded)
    facts: Mapping[str, VideoMeasure | None] = field(default_factory=dict)
    _detector: Any = field(default=None, init=False, repr=False, compare=False)  # built in the worker

    def plan(self, row: str, n_frames: int | None) -> np.ndarray:
        """Frame indices of a row: (K,) for a clip, (Wc, K) for a video's context windows."""
        if self.scope == "clip":
            return uniform_indices(*self.clips[row], self.frames)
        windows = self.context.indices(n_frames)  # (Wc, 16)
        pick = uniform_indices(0, windows.shape[1] - 1, self.frames)
        return windows[:, pick]

    def _faces(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) frames of one row -> aligned crops (T, 112, 112, 3) uint8 (zeros where masked), mask (T,)."""
        return self._faces_of_rows([frames])[0]

    def _faces_of_rows(self, rows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`_faces` of several rows of one video with one MTCNN call over all their frames (the main
        face is still chosen per row)."""
        from migfuse.extract.face.align import CROP_SIZE, align_face
        from migfuse.extract.face.detect import FaceDetector, select_main_face

        if self._detector is None:
            self._detector = FaceDetector(device=self.detector_device)
        found = self._detector.detect(np.concatenate(rows)) if len(rows) > 1 else self._detector.detect(rows[0])
        out, start = [], 0
        for frames in rows:
            faces, start = found[start:start + len(frames)], start + len(frames)
            choice = select_main_face(faces, min_prob=self.min_prob)
            crops = np.zeros((len(frames), CROP_SIZE, CROP_SIZE, 3), np.uint8)
            mask = np.zeros(len(frames), bool)
            for t, i in enumerate(choice):
                if i is not None:
                    crops[t] = align_face(frames[t], faces[t].landmarks[i])
                    mask[t] = True
            out.append((crops, mask))
        return out

    def stream(self, path: Path, requests: Mapping[Any, np.ndarray], facts: VideoMeasure | None):
        return stream_video(path, requests, decoder=self.decoder, device=self.decode_device(), facts=facts)

    def decode_device(self) -> str:
        return self.detector_device

    def rows(self, item: WorkItem, path: Path, facts: VideoMeasure | None) -> VideoRows:
        if self.scope == "clip":
            return _FaceClipRows(self, item.ids, facts)
        return _FaceContextRows(self, item.key, path, facts)


class _FaceClipRows(VideoRows):
    """One sample per clip, as soon as its K frames are decoded and detected (only waiting clips'
    frames are held; with `detect_frames` > 1, clips wait until that many frames are gathered)."""

    def __init__(self, loader: FaceLoader, rows: tuple[str, ...], facts: VideoMeasure | None):
        self.loader, self.facts = loader, facts
        self.requests = {row: loader.plan(row, None) for row in rows}
        self.gathered: list[tuple[str, np.ndarray]] = []

    def _detect(self) -> Iterator[Sample]:
        gathered, self.gathered = self.gathered, []
        for (row, _), (crops, mask) in zip(gathered, self.loader._faces_of_rows([f for _, f in gathered])):
            yield Sample(row, inputs={"crops": crops[mask], "mask": mask}, size=max(1, int(mask.sum())))

    def served(self, row: str, frames: np.ndarray | DecodeError) -> Iterator[Sample]:
        if isinstance(frames, DecodeError):
            start, end = self.loader.clips[row]
            yield Sample(row, failure=Failure(frames.stage, f"clip {row} (frames {start}..{end}): {frames}"))
            return
        self.gathered.append((row, frames))
        if sum(len(f) for _, f in self.gathered) >= self.loader.detect_frames:
            yield from self._detect()

    def end(self) -> Iterator[Sample]:
        if self.gathered:
            yield from self._detect()


class _FaceContextRows(VideoRows):
    """One video's context windows over its decoded length, each detected as soon as it is
    decoded. Windows the decoder could not serve (damage after them) stay masked, like the
    context track's invalid windows; the row fails only when no window could be decoded."""

    def __init__(self, loader: FaceLoader, row: str, path: Path, facts: VideoMeasure | None):
        from migfuse.extract.face.align import CROP_SIZE

        self.loader, self.row, self.requests, self.failure = loader, row, {}, None
        try:
            self.facts = measure(path, facts)
        except DecodeError as e:
            self.failure = Failure(e.stage, f"video {row}: {e}")
            return
        if self.facts.frames < 1:
            self.failure = Failure("open", f"video {row}: {path.name} decodes no picture")
            return
        plan = loader.plan(row, self.facts.frames)  # (Wc, K)
        # the main face is chosen per window: windows lie far apart in the video
        self.requests = {j: plan[j] for j in range(len(plan))}
        self.crops = np.zeros((*plan.shape, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        self.mask = np.zeros(plan.shape, bool)
        self.served_windows, self.error = 0, None
        self.gathered: list[tuple[int, np.ndarray]] = []

    def early(self) -> Iterator[Sample]:
        if self.failure is not None:
            yield Sample(self.row, failure=self.failure)

    def _detect(self) -> None:
        gathered, self.gathered = self.gathered, []
        for (j, _), (crops, mask) in zip(gathered, self.loader._faces_of_rows([f for _, f in gathered])):
            self.crops[j], self.mask[j] = crops, mask

    def served(self, j: int, frames: np.ndarray | DecodeError) -> Iterator[Sample]:
        if isinstance(frames, DecodeError):
            self.error = frames
            return iter(())
        self.gathered.append((j, frames))
        self.served_windows += 1
        if sum(len(f) for _, f in self.gathered) >= self.loader.detect_frames:
            self._detect()
        return iter(())

    def end(self) -> Iterator[Sample]:
        if self.failure is not None:
            return
        if self.gathered:
            self._detect()
        row, error = self.row, self.error
        if error is not None:
            if not self.served_windows:
                yield Sample(row, failure=Failure(error.stage, f"video {row}: {error}"))
                return
            log.warning("face context of video %s: %d of %d windows decoded, the rest masked: %s",
                        row, self.served_windows, len(self.requests), error)
        yield Sample(row, inputs={"crops": self.crops[self.mask], "mask": self.mask},
                     size=max(1, int(self.mask.sum())))


class FaceExtractor(TrackExtractor):
    """SwinFace expression features of aligned faces, per clip (`face`) or per context window (`face_context`)."""

    backbone_name = "swinface"
    cpu_batch, gpu_batch, cpu_workers = 32, 256, 1  # on a CPU the loader's MTCNN competes with SwinFace

    def __init__(self, manifest: Any, scope: str = "clip", *, checkpoint: CheckpointFile | str | Path | None = None,
                 frames: int = 8, context: ContextSampling = ContextSampling(), global_tokens: bool = False,
                 row_ids: list[str] | None = None, video_root: str | Path | None = None, decoder: str = "cpu",
                 checkpoint_option: str | None = "--checkpoint"):
        """
        `checkpoint_option` is the option the random-weights warning names (None: no warning).

        Raises:
            UserError: an unknown scope, a checkpoint that is missing or does not fit, not one
                video file (`videos_with_files`).
        """
        self.track = scope_track(scope)
        self.video_root = video_root
        self.decoder = decoder
        self.manifest, self.scope, self.frames, self.context = manifest, scope, int(frames), context
        self.checkpoint = checkpoint
        self.global_tokens = global_tokens
        self.group = self.track.group(self.backbone_name)
        self.unit = str(self.track.unit)
        self._row_ids = list(row_ids) if row_ids is not None else None
        if getattr(manifest, "clips", None):  # not one video file: one line before the model is built
            videos_with_files(manifest, video_root)
        self.backbone = create_for_track(self.track.name, self.backbone_name, checkpoint, checkpoint_option)
        self.model = None

    def _lead(self) -> tuple[int, ...]:
        return (self.context.windows, self.frames) if self.track.per_video else (self.frames,)

    def arrays(self) -> dict[str, Any]:
        from migfuse.data_cache.store import ArraySpec

        lead = self._lead()
        specs = {"features": ArraySpec((*lead, FEATURE_DIM), "float16"),
                 "logits": ArraySpec((*lead, NUM_EXPRESSIONS), "float16"),
                 "mask": ArraySpec(lead, "bool")}
        if self.global_tokens:
            specs["global_tokens"] = ArraySpec((*lead, 49, 768), "float16")
        return specs

    def provenance(self) -> dict[str, Any]:
        weights = weights_provenance(self.checkpoint, RANDOM_WEIGHTS_SEED)
        sampling = ({"rule": "K frames at uniform segment centres over [start_frame, end_frame]", "frames": self.frames}
                    if not self.track.per_video else
                    {"rule": "K of each context window's frames (uniform)", "frames": self.frames,
                     "windows": self.context.record()})
        return {"track": self.track.name, "backbone": self.backbone_name, **weights, "sampling": sampling,
                "detector": "facenet-pytorch 2.6.0 MTCNN (bundled weights), min prob 0.9, one main face per row",
                "alignment": "5-landmark similarity (Umeyama) to the ArcFace 112x112 template",
                "preprocessing": "RGB /255, (x - 0.5) / 0.5",
                "stored": "expression-branch 512-d feature (TSS branch 2) + 7 expression logits (RAF-DB order)"}

    def environment(self) -> dict[str, Any]:
        """The torchvision NMS shim MTCNN runs through where torchvision's compiled op cannot load
        (`backbones._torchvision.shim_record`; same boxes, tested against a brute-force NMS)."""
        from migfuse.backbones._torchvision import shim_record

        record = shim_record()
        return {"mtcnn_nms": record} if record else {}

    def check_inputs(self) -> None:
        self.videos_with_input()

    def videos_with_input(self) -> set[str]:
        return videos_with_files(self.manifest, self.video_root)

    def loader(self) -> FaceLoader:
        paths = self.manifest.video_files(self.video_root)
        clips = {} if self.track.per_video else {c.clip_id: (c.start_frame, c.end_frame) for c in self.manifest.clips}
        # On a GPU, MTCNN runs there too (in each loader worker), on the frames of several rows at once.
        on_gpu = self.runtime.on_gpu
        return FaceLoader(paths=paths, facts=self.manifest.video_measures(), scope=self.scope, frames=self.frames,
                          clips=clips, context=self.context,
                          detector_device=self.runtime.device if on_gpu else "cpu",
                          detect_frames=GPU_DETECT_FRAMES if on_gpu else 1,
                          decoder=choose_decoder(self.decoder, self.runtime.device))

    def setup(self) -> None:
        self.model = self.backbone.model.to(self.runtime.device).eval()

    def _run(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 112, 112, 3) uint8 aligned faces -> features (N, 512), logits (N, 7) [, global (N, 49, 768)],
        in the runner's fixed batches."""
        return self.in_fixed_batches(self._run_batch, crops)

    def _run_batch(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from migfuse.extract.face.align import to_model_input

        x = self.runtime.to_device(to_model_input(crops))
        with torch.inference_mode(), self.runtime.autocast():
            feat, logits, glob = self.model.expression(x)  # skips the 10 other branches
        res = {"features": feat.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}
        if self.global_tokens:
            res["global_tokens"] = glob.float().cpu().numpy()  # (N, 49, 768)
        return res

    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:
        crops = np.concatenate([i["crops"] for i in inputs])
        faces = self._run(crops) if len(crops) else None
        out, start = [], 0
        for inp in inputs:
            mask = inp["mask"]
            n = int(mask.sum())
            row = {"mask": mask}
            for name, spec in self.arrays().items():
                if name == "mask":
                    continue
                full = np.zeros(spec.shape, np.float32)
                if n:
                    full[mask] = faces[name][start:start + n]
                row[name] = full
            start += n
            out.append(row)
        return out


@register_track(*tracks_with_layout("face_frames"))
def build_extractor(manifest: Any, track: str, *, checkpoint: CheckpointFile | None = None, frames: int = 8,
                    context_windows: int = 8, global_tokens: bool = False, row_ids: list[str] | None = None,
                    video_root: str | Path | None = None, decoder: str = "cpu",
                    checkpoint_option: str | None = "--checkpoint") -> FaceExtractor:
    """The face extractor of a manifest: `face` (per clip) or `face_context` (per video, one row of K
    face frames per context window: use the context track's `context_windows` so the windows line up).

    Args:
        checkpoint: SwinFace `.pt` (the original four-state-dict file); None = seeded random weights.
        frames: K face frames per clip / per window.
        global_tokens: also store SwinFace's 7x7x768 global tokens per face.
        row_ids, video_root, decoder, checkpoint_option: as the video tracks' `build_extractor`.
    On a GPU runtime MTCNN runs there too, in each loader worker, on `GPU_DETECT_FRAMES` frames per
    call; on a CPU it runs per row. The batch is faces per SwinFace forward (32 on a CPU, 256 on a GPU).
    """
    scope = "context" if get_track(track).per_video else "clip"
    return FaceExtractor(manifest, scope, checkpoint=checkpoint, frames=frames,
                         context=ContextSampling(windows=context_windows), global_tokens=global_tokens,
                         row_ids=row_ids, video_root=video_root, decoder=decoder,
                         checkpoint_option=checkpoint_option)
