"""`migfuse extract skeleton --backbone posec3d`: PoseC3D's last-stage features per clip from heatmap volumes.

The joint stream draws keypoint heatmaps, the bone stream limb heatmaps (PoseC3D's two streams), from the
prepared OpenPose skeletons mapped to COCO-17 (`skeleton_layouts` coco-17: BODY_25 points in COCO order),
each clip as mmaction2's test pipeline treats an annotation (`pose_heatmaps`). The loader (worker
processes, numpy, no torch) samples the frames and crops the keypoints; the model's process draws the
heatmaps on the extraction device (the GPU where there is one: drawing is the costly part) and runs the
network. Rows: features (512, T', H'*W') fp16, i.e. channels x time x spatial position (the track's
"joint" axis holds the 8x8 positions of a 64x64 crop, row-major); the provenance's `token_layout` says
so, and the views pool them as a map (`pose_grid`), not as joints.
Failures as `extract skeleton` records them: no skeleton, a clip past the skeleton file, no person seen.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from migfuse.backbones.pose_heatmaps import HeatmapConfig, clip_keypoints
from migfuse.checkpoint_file import CheckpointFile
from migfuse.data_cache.token_layout import HEATMAP_VOLUME
from migfuse.data_cache.tracks import get_track
from migfuse.errors import UserError
from migfuse.extract.interface import Failure, Sample, WorkItem
from migfuse.extract.skeleton.extractor import SkeletonExtractor, no_person, skeleton_clips
from migfuse.extract.skeleton.preprocess import STREAMS

log = logging.getLogger(__name__)


def _heatmap_config(d: dict) -> HeatmapConfig:
    return HeatmapConfig(**{k: v for k, v in d.items() if k != "skeletons"})


class HeatmapLoader:
    """Picklable loader: WorkItem(key=video id, ids=clip ids) -> per clip kp (1, L, 17, 2), score (1, L, 17)."""

    def __init__(self, prepared: str, config: dict):
        self.prepared, self.config = prepared, config
        self._manifest = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_manifest": None}

    def __call__(self, item: WorkItem) -> Iterator[Sample]:
        from migfuse.datasets.manifest import Manifest
        from migfuse.datasets.pyskl import DEFAULT_IMG_SHAPE
        from migfuse.datasets.skeleton_layouts import get_layout

        if self._manifest is None:
            self._manifest = Manifest.load(self.prepared)
        m, cfg = self._manifest, _heatmap_config(self.config)
        source = np.asarray(get_layout("coco-17").source)
        facts = m.videos[item.key].measured if item.key in m.videos else None
        img_shape = (facts.height, facts.width) if facts is not None else DEFAULT_IMG_SHAPE
        for cid, clip, got in skeleton_clips(m, item):
            if isinstance(got, Failure):
                yield Sample(cid, failure=got)
                continue
            frames, fmask = got
            points = np.asarray(frames[:, source], dtype=np.float32) * fmask[:, None, None]  # (T, 17, 3)
            if not np.any(points[..., 2] >= 1e-4):
                yield Sample(cid, failure=no_person(clip))
                continue
            annotation = {"keypoint": points[None, :, :, :2], "keypoint_score": points[None, :, :, 2],
                          "img_shape": img_shape, "total_frames": len(points)}
            _, kp, score = clip_keypoints(annotation, cfg)
            yield Sample(cid, inputs={"kp": kp, "score": score})


class HeatmapExtractor(SkeletonExtractor):
    """PoseC3D features of one stream (joint: keypoint heatmaps, bone: limb heatmaps)."""

    cpu_batch, gpu_batch, cpu_workers = 4, 32, 0

    def __init__(self, manifest: Any, checkpoint: CheckpointFile | str | Path | None, stream: str,
                 backbone: str = "posec3d"):
        """
        Args:
            manifest: a saved `Manifest`, or its PREPARED folder.
            checkpoint: the stream's PoseC3D file (keypoint model for joint, limb model for bone); None:
                seeded random weights (testing only, warned and recorded).
            stream: joint or bone.
        Raises:
            UserError: an unknown stream, or a checkpoint that is no PoseC3D file.
        """
        from migfuse.backbones.registry import create_for_track
        from migfuse.datasets.manifest import Manifest

        if stream not in STREAMS:
            raise UserError(f"unknown --stream '{stream}': choose joint or bone")
        self.track = get_track(stream)
        self.unit = str(self.track.unit)
        self._row_ids = None
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.prepared = str(self.manifest.root)
        self.backbone = create_for_track(stream, backbone, checkpoint)
        limb = stream == "bone"
        if checkpoint is not None and self.backbone.heatmap.limb != limb and "with_limb" in self.backbone.file_settings:
            raise UserError(f"{checkpoint} is a {'limb' if self.backbone.heatmap.limb else 'keypoint'} model: pass "
                            f"--stream {'bone' if self.backbone.heatmap.limb else 'joint'}")
        self.heatmap = _heatmap_config({**self.backbone.heatmap.__dict__, "limb": limb, "num_clips": 1})
        self.stream, self.arch, self.trained = stream, backbone, {}
        self.random_weights = checkpoint is None
        self.group = self.track.group(backbone)

    def arrays(self) -> dict[str, Any]:
        from migfuse.data_cache.store import ArraySpec

        c, t, h, w = self.backbone.model.arch.feature_shape(self.heatmap.clip_len, self.heatmap.size,
                                                             self.heatmap.size)
        return {"features": ArraySpec((c, t, h * w), "float16")}

    def provenance(self) -> dict[str, Any]:
        """The backbone's settings, the heatmap recipe, and the token layout the views pool by (the
        pose axis is the H' x W' map: `pose_grid`, data_cache/token_layout.py)."""
        ckpt = self.backbone.checkpoint
        _, t, h, w = self.backbone.model.arch.feature_shape(self.heatmap.clip_len, self.heatmap.size, self.heatmap.size)
        layout = {"class_token": False, "grid": [t, h, w], "input": HEATMAP_VOLUME}
        return {**self.backbone.provenance(), "backbone": self.arch, "stream": self.stream, "token_layout": layout,
                "checkpoint": Path(str(ckpt)).name if ckpt else None,
                "checkpoint_sha256": self.backbone.checkpoint_sha256,
                "weights": "RANDOM (seeded): no --checkpoint given" if self.random_weights else "checkpoint",
                "layout": "coco-17", "heatmaps": self.heatmap.to_dict(),
                "output": "last stage feature map (C, T', H'*W'), the person channels drawn together"}

    def loader(self) -> HeatmapLoader:
        cfg = {k: v for k, v in self.heatmap.__dict__.items() if k != "skeletons"}
        return HeatmapLoader(self.prepared, cfg)

    def setup(self) -> None:
        self.backbone.device = self.runtime.device
        self.backbone.model.to(self.runtime.device).eval()

    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:
        kp = np.stack([s["kp"] for s in inputs])
        score = np.stack([s["score"] for s in inputs])
        feats = self.in_fixed_batches(self._features, np.concatenate([kp, score[..., None]], axis=-1))
        return [{"features": f} for f in feats]

    def _features(self, x: np.ndarray) -> np.ndarray:
        """(B, M, L, 17, 3) keypoints + score -> (B, C, T', H'*W') float32: heatmaps drawn on the device."""
        import torch

        from migfuse.backbones.pose_heatmaps import draw_heatmaps, draw_heatmaps_torch

        h = self.heatmap
        args = ((h.size, h.size), h.sigma, h.use_score, h.limb, h.skeletons)
        with torch.no_grad():
            if str(self.runtime.device).startswith("cpu"):  # numpy draws faster than torch on a CPU
                maps = self.runtime.to_device(draw_heatmaps(x[..., :2], x[..., 2], *args))
            else:
                x = self.runtime.to_device(x)
                maps = draw_heatmaps_torch(x[..., :2], x[..., 2], *args)  # (B, L, C, H, W)
            with self.runtime.autocast():
                feats = self.backbone.model.backbone(maps.permute(0, 2, 1, 3, 4).contiguous())
        return feats.float().flatten(3).cpu().numpy()
