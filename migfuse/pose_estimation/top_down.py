"""Keypoints in person boxes: a ViTPose / ViTPose+ model through transformers, read from a local folder.

Top-down, as the published models were trained: each box is widened to the model's input aspect
(height:width, 256:192 for the published folders) and padded by 1.25, warped to the input size by the
folder's `VitPoseImageProcessor` (an affine warp from the box's centre and scale, bilinear), and the
model gives one heatmap per keypoint at a quarter of the input size. The decoding is transformers'
own `post_process_pose_estimation` on those heatmaps: the heatmap argmax, refined by DARK (Gaussian
modulation, kernel 11, and a Taylor step), mapped back through the same box (the "unbiased" transform:
heatmap cells 0..W-1 span the padded box edge to edge). So the coordinates are exactly what the
library's reference gives for the same outputs, in frame pixels.

The boxes of all frames of a batch are warped together and run `batch_size` at a time.
ViTPose+ folders (a mixture of experts in the backbone) are run with the expert of the head's
keypoint set (COCO: 0; `model_folders.DATASET_INDEX`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from migfuse.pose_estimation.model_folders import DATASET_INDEX

#: the reference decoding's Gaussian kernel (transformers' default, and ViTPose's test config)
DARK_KERNEL = 11


def to_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """(P, 4) x1, y1, x2, y2 -> (P, 4) x, y, width, height (the COCO boxes the processor takes)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


class TopDownPose:
    """Keypoints and their scores for person boxes in frames.

    Args:
        folder: a checked ViTPose folder (`model_folders.check_pose_folder`).
        layout: the layout its head gives ("coco-17").
        transformers: the imported module (`model_folders.import_transformers`).
        device: a torch device name.
        batch_size: person crops per forward pass.
    """

    def __init__(self, folder: Path, layout: str, transformers: Any, *, device: str, batch_size: int):
        from migfuse.backbones.hf_video import _quiet_transformers

        with _quiet_transformers():
            self.processor = transformers.VitPoseImageProcessor.from_pretrained(folder, local_files_only=True)
            self.model = transformers.VitPoseForPoseEstimation.from_pretrained(
                folder, local_files_only=True).to(device).eval()
        self.output_class = transformers.models.vitpose.modeling_vitpose.VitPoseEstimatorOutput
        self.device = device
        self.layout = layout
        self.batch_size = int(batch_size)
        self.num_keypoints = int(self.model.config.num_labels)
        experts = int(getattr(self.model.config.backbone_config, "num_experts", 1))
        #: the ViTPose+ expert run (None for a plain ViTPose)
        self.dataset_index = DATASET_INDEX[layout] if experts > 1 else None

    def input_size(self) -> list[int]:
        """[height, width] of the crops the model takes."""
        return [int(self.processor.size["height"]), int(self.processor.size["width"])]

    def heatmaps(self, frames: Sequence[np.ndarray], coco_boxes: Sequence[np.ndarray]) -> Any:
        """The model's heatmaps (N, K, H/4, W/4) float32 torch tensor on the CPU, N = all boxes of all
        frames in order; `coco_boxes[i]` is frame i's (P_i, 4) x, y, width, height."""
        import torch

        used = [i for i, boxes in enumerate(coco_boxes) if len(boxes)]
        inputs = self.processor(images=[frames[i] for i in used], boxes=[coco_boxes[i].tolist() for i in used],
                                return_tensors="pt")
        pixels = inputs["pixel_values"]
        maps = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                chunk = pixels[start:start + self.batch_size].to(self.device)
                extra = {}
                if self.dataset_index is not None:
                    extra["dataset_index"] = torch.full((len(chunk),), self.dataset_index, dtype=torch.long,
                                                        device=self.device)
                maps.append(self.model(pixel_values=chunk, **extra).heatmaps.float().cpu())
        return torch.cat(maps)

    def decode(self, heatmaps: Any, coco_boxes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: keypoints (P, K, 2) float32 x, y in frame pixels and scores (P, K) float32 in [0, 1],
        by transformers' reference `post_process_pose_estimation` (module doc). The scores are the
        heatmap peaks, clipped to [0, 1] (a trained head's peaks lie there; an untrained one's may not)."""
        empty = (np.zeros((0, self.num_keypoints, 2), np.float32), np.zeros((0, self.num_keypoints), np.float32))
        used = [i for i, boxes in enumerate(coco_boxes) if len(boxes)]
        decoded = [empty] * len(coco_boxes)
        if not used:
            return decoded
        results = self.processor.post_process_pose_estimation(
            self.output_class(heatmaps=heatmaps), boxes=[coco_boxes[i] for i in used], kernel_size=DARK_KERNEL)
        for i, persons in zip(used, results):
            keypoints = np.stack([p["keypoints"].numpy() for p in persons]).astype(np.float32)
            scores = np.stack([p["scores"].numpy().reshape(-1) for p in persons]).astype(np.float32)
            decoded[i] = (keypoints, np.clip(scores, 0.0, 1.0))
        return decoded

    def __call__(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: keypoints (P, K, 2) and scores (P, K) of its boxes (P, 4) x1, y1, x2, y2 (frame pixels)."""
        coco_boxes = [to_coco_boxes(b) for b in boxes]
        if not any(len(b) for b in coco_boxes):
            return self.decode(None, coco_boxes)
        return self.decode(self.heatmaps(frames, coco_boxes), coco_boxes)
