"""`migfuse extract skeleton`: per clip, the last unit's feature map (256, T', V) fp16 of one stream.

Writes group `joint/<agcn|aagcn>` or `bone/<agcn|aagcn>` through the shared runner (resume, shards,
failure records). One work item per video (its skeleton is memory-mapped once). Rows that fail:
  * the video has no skeleton (empty or missing file): stage `skeleton`;
  * the clip's frames run past the skeleton file (or start before it): stage `skeleton`, as the video
    track fails a clip past its video's end (never clamped silently);
  * no person is detected in any frame of the clip: stage `skeleton`.
The loader (worker processes) imports no torch; the model lives in the main process.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.data_cache.tracks import get_track, tracks_with_layout
from migfuse.datasets.pose_layouts import check_readable
from migfuse.errors import UserError
from migfuse.extract.interface import Failure, Sample, TrackExtractor, WorkItem
from migfuse.extract.presets import preset_group
from migfuse.extract.skeleton.preprocess import STREAMS, PreprocessConfig, clip_frames, clip_input

log = logging.getLogger(__name__)


class SkeletonLoader:
    """Picklable loader: WorkItem(key=video id, ids=clip ids) -> one Sample per clip, x (3, L, V, 1)."""

    def __init__(self, prepared: str, stream: str, config: dict):
        self.prepared, self.stream, self.config = prepared, stream, config
        self._manifest = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_manifest": None}  # each worker reads the manifest itself

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        from migfuse.datasets.manifest import Manifest

        if self._manifest is None:
            self._manifest = Manifest.load(self.prepared)
        m = self._manifest
        config = PreprocessConfig.from_dict(self.config)
        for cid, clip, got in skeleton_clips(m, item):
            if isinstance(got, Failure):
                yield Sample(cid, failure=got)
                continue
            frames, fmask = got
            ci = clip_input(frames, fmask, self.stream, config)
            if ci.person_frames == 0:
                yield Sample(cid, failure=no_person(clip))
                continue
            yield Sample(cid, inputs={"x": ci.x})


def skeleton_clips(manifest: Any, item: WorkItem) -> Iterator[tuple[str, Any, Failure | tuple[np.ndarray, np.ndarray]]]:
    """Each clip of a video's work item with its skeleton frames: (clip id, clip, (frames, frame mask)),
    or (clip id, clip, Failure) when the video has no skeleton or the clip runs past (or starts before)
    the skeleton file: never clamped silently, as the video track fails a clip past its video's end.
    Shared by the joint-coordinate and the heatmap loaders."""
    try:
        skel, mask = manifest.skeleton(item.key)
    except UserError as e:
        for cid in item.ids:
            yield cid, manifest.clip(cid), Failure("skeleton", str(e))
        return
    for cid in item.ids:
        clip = manifest.clip(cid)
        if clip.start_frame < 0 or clip.end_frame >= skel.shape[0]:
            yield cid, clip, Failure(
                "skeleton", f"clip {cid} (frames {clip.start_frame}-{clip.end_frame}) runs past the {skel.shape[0]} "
                            f"frames of video {clip.video_id}'s skeleton; check the labels (or the skeleton files) "
                            "and re-run `migfuse data prepare`")
            continue
        yield cid, clip, clip_frames(skel, mask, clip.start_frame, clip.end_frame)


def no_person(clip: Any) -> Failure:
    return Failure("skeleton", f"no person detected in frames {clip.start_frame}-{clip.end_frame} of video "
                               f"{clip.video_id}")


def _ceil_half(n: int) -> int:
    return (n + 1) // 2


class SkeletonExtractor(TrackExtractor):
    """Feature maps of one stream with a trained (or published) 2s-AGCN / AAGCN checkpoint.

    The layout, clip length and stream come from the checkpoint's migfuse provenance (written by
    `migfuse backbone train skeleton`); for a published checkpoint without one, from the arguments.
    """

    cpu_batch, gpu_batch, cpu_workers = 64, 256, 0  # loading a clip is a memory-mapped slice: cheap

    def __init__(self, manifest: Any, checkpoint: CheckpointFile | str | Path, stream: str, *,
                 layout: str | None = None, length: int | None = None, arch: str | None = None,
                 pool: str | None = None, preset: dict[str, Any] | None = None):
        """
        Args:
            manifest: a saved `Manifest`, or its PREPARED folder.
            checkpoint: the stream's checkpoint (read once, for its provenance and its weights).
            stream: joint or bone (the track written).
            layout, length, arch: only for checkpoints without migfuse provenance.
            pool: None = the feature map (C, T', V); "mean" = mmaction2 GCNHead's pooling before its
                fc (mean over T' and V, then over the checkpoint's persons, padded ones included as
                FormatGCNInput pads them), stored as features (C, 1, 1).
            preset: the record of the preset that chose these settings (`presets.apply_preset`); the
                group becomes STREAM/ARCH-PRESET and the provenance holds the record.
        Raises:
            UserError: an unknown stream, a checkpoint of another stream, layout or length.
        """
        from migfuse.backbones.agcn import unwrap_state_dict
        from migfuse.backbones.registry import create_backbone
        from migfuse.datasets.manifest import Manifest

        if stream not in STREAMS or stream not in tracks_with_layout("pose_features"):
            raise UserError(f"unknown --stream '{stream}': choose joint or bone")
        self.track = get_track(stream)
        self.unit = str(self.track.unit)
        self._row_ids = None
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.prepared = str(self.manifest.root)
        checkpoint = as_checkpoint(checkpoint)
        sd, meta = unwrap_state_dict(checkpoint.contents, checkpoint.path)
        trained = meta.get("migfuse") if isinstance(meta.get("migfuse"), dict) else {}
        if trained.get("stream") and trained["stream"] != stream:
            raise UserError(f"{checkpoint} was trained on the {trained['stream']} stream; pass --stream "
                            f"{trained['stream']} or a {stream} checkpoint")
        # a preset's pinned layout and length are not the user's options: name the preset, not them
        pinned = (f"--preset {preset['name']} pins {{}}: drop --preset (it is for the published file "
                  f"{preset['published_weights']}, not a migfuse-trained one)") if preset else None
        if layout and trained.get("layout") and layout != trained["layout"]:
            raise UserError(f"{checkpoint} was trained with layout {trained['layout']}: " + (
                pinned.format(f"layout {layout}") if pinned else
                "drop --layout (it is only for checkpoints without migfuse provenance)"))
        arch = arch or trained.get("arch") or ("aagcn" if any(k.startswith("backbone.") for k in sd) else "agcn")
        self.backbone = create_backbone(arch, checkpoint, **({"layout": layout} if layout else {}))
        pre = dict(trained.get("preprocess") or {})
        if pre and length and length != pre.get("length"):
            raise UserError(f"{checkpoint} was trained on {pre.get('length')}-frame clips; " + (
                pinned.format(f"{length}-frame clips") if pinned else
                "drop --length (it is only for checkpoints without migfuse provenance)"))
        if not pre:
            pre = {"layout": self.backbone.layout.name, "length": length or 64}
        self.config = PreprocessConfig.from_dict(pre)
        if self.config.layout != self.backbone.layout.name:
            raise UserError(f"{checkpoint} was trained with layout {self.config.layout}, not "
                            f"{self.backbone.layout.name}; drop --layout or pass --layout {self.config.layout}")
        check_readable(self.config.layout, self.backbone.layout.source, self.manifest.skeleton_layouts(),
                       self.prepared)
        if pending := self.manifest.pending_poses():
            raise UserError(f"{self.prepared} is an unfinished `migfuse data pose` output: {len(pending)} videos "
                            f"(e.g. {pending[0]}) are not estimated yet; run `migfuse data pose` for the other "
                            "shards (or run it again to finish) before extracting")
        self.stream, self.arch, self.trained = stream, arch, trained
        if pool not in (None, "mean"):
            raise UserError(f"pooling {pool!r} is not one of the skeleton track's (mean)")
        self.pool, self.preset = pool, preset
        self.group = preset_group(self.track.group(arch), preset)

    def arrays(self) -> dict[str, Any]:
        from migfuse.data_cache.store import ArraySpec

        t = _ceil_half(_ceil_half(self.config.length))  # two stride-2 temporal convs (k 9, pad 4)
        shape = (self.backbone.model.out_channels, t, self.backbone.layout.num_node)
        if self.pool:
            shape = (shape[0], 1, 1)
        return {"features": ArraySpec(shape, "float16")}

    def provenance(self) -> dict[str, Any]:
        keep = ("split", "seed", "epoch", "val_top1", "val_top5", "base_channels", "balance", "init")
        return {
            "backbone": self.arch, "stream": self.stream, "checkpoint": Path(str(self.backbone.checkpoint)).name,
            "checkpoint_sha256": self.backbone.checkpoint_sha256, "layout": self.config.layout,
            "preprocess": self.config.to_dict(), "output": "last unit feature map (C, T', V), person 0",
            "trained": {k: self.trained[k] for k in keep if k in self.trained},
            **self._pooling(),
        }

    def _pooling(self) -> dict[str, Any]:
        """Provenance of a pooled group (pooling, preset; the views keep the vector: `default_pooling` raw)."""
        if not self.pool:
            return {}
        from migfuse.extract.presets import POOLINGS

        return {"output": "last unit feature map pooled to one vector (C, 1, 1)",
                "pooling": {"name": self.pool, "doc": POOLINGS[self.pool]}, "default_pooling": "raw",
                **({"preset": self.preset} if self.preset else {})}

    def videos_with_input(self) -> set[str]:
        """Videos whose skeleton file `data prepare` wrote is here."""
        root = self.manifest.root
        return {v for v, info in self.manifest.videos.items()
                if info.skeleton and root is not None and (root / info.skeleton).is_file()}

    def check_inputs(self) -> None:
        if not self.videos_with_input():
            raise UserError(f"not one of the {len(self.manifest.videos)} videos of {self.prepared} has a skeleton "
                            "(prepare_report.json says why): check the skeleton files under the dataset root and "
                            "rerun `migfuse data prepare`")

    def loader(self) -> SkeletonLoader:
        return SkeletonLoader(self.prepared, self.stream, self.config.to_dict())

    def setup(self) -> None:
        self.backbone.model.to(self.runtime.device).eval()

    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:

        feats = self.in_fixed_batches(self._features, np.stack([s["x"] for s in inputs]))
        return [{"features": f} for f in feats]

    def _features(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, L, V, 1) -> (B, C, T', V) float32 features of person 0; pooled: (B, C, 1, 1)."""
        import torch

        x = self.runtime.to_device(x)
        persons = self.backbone.num_person
        if persons > 1:  # a published multi-person checkpoint: the others are zero, as FormatGCNInput pads
            x = torch.cat([x, x.new_zeros(x.shape[:-1] + (persons - 1,))], dim=-1)
        with torch.no_grad(), self.runtime.autocast():
            feats = self.backbone.model.features(x)
        if self.pool == "mean":  # (B*M, C, T', V) -> (B, C): GCNHead's mean over T'V, then persons
            pooled = feats.float().mean(dim=(2, 3)).reshape(-1, persons, feats.shape[1]).mean(1)
            return pooled[:, :, None, None].cpu().numpy()
        return feats[::persons].float().cpu().numpy()
