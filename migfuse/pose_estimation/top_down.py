"""Keypoints in person boxes: a ViTPose / ViTPose+ model through transformers, read from a local folder.

Top-down, as the published models were trained: each box is widened to the model's input aspect
(height:width, 256:192 for the published folders) and padded by 1.25, warped to the input size (an
affine warp from the box's centre and scale, bilinear), normalised as the folder's
`VitPoseImageProcessor` says, and the model gives one heatmap per keypoint at a quarter of the input
size. The decoding is transformers' reference (`post_process_pose_estimation`): the heatmap argmax,
refined by DARK (Gaussian modulation, kernel 11, and a Taylor step), mapped back through the same
box (the "unbiased" transform: heatmap cells 0..w-1 span the padded box edge to edge). So the
coordinates are what the library gives for the same outputs, in frame pixels.

The warp and the decoding run batched in torch on the model's device (`on_device`: the same
arithmetic as the processor's scipy / numpy code, which costs ~20 ms a box on the CPU and would bound
a GPU run); `reference=True`, or a processor without torchvision, runs the processor's own code.
The boxes of all frames of a batch are run `batch_size` at a time. ViTPose+ folders (a mixture of
experts in the backbone) are run with the expert of the head's keypoint set (COCO: 0;
`model_folders.DATASET_INDEX`).
"""
from __future__ import annotations

from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Sequence

import numpy as np

from migfuse.pose_estimation import on_device
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
        reference: warp and decode with the processor's own scipy / numpy code instead of `on_device`.
        autocast: the context of the forward (`models._autocast`); heatmaps are decoded in float32.
    """

    def __init__(self, folder: Path, layout: str, transformers: Any, *, device: str, batch_size: int,
                 reference: bool = False, autocast: Callable[[], AbstractContextManager] = nullcontext):
        from migfuse.backbones.hf_video import _quiet_transformers

        with _quiet_transformers():
            self.processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            self.model = transformers.VitPoseForPoseEstimation.from_pretrained(
                folder, local_files_only=True).to(device).eval()
        self.output_class = transformers.models.vitpose.modeling_vitpose.VitPoseEstimatorOutput
        self.device = device
        self.autocast = autocast
        self.layout = layout
        self.batch_size = int(batch_size)
        self.num_keypoints = int(self.model.config.num_labels)
        experts = int(getattr(self.model.config.backbone_config, "num_experts", 1))
        #: the ViTPose+ expert run (None for a plain ViTPose)
        self.dataset_index = DATASET_INDEX[layout] if experts > 1 else None
        # the torch warp needs the torchvision processor (it normalises torch tensors) and its affine warp
        fast = type(self.processor).__name__ == "VitPoseImageProcessor"
        self.reference = reference or not (fast and getattr(self.processor, "do_affine_transform", True))

    def input_size(self) -> tuple[int, int]:
        """(height, width) of the crops the model takes."""
        return int(self.processor.size["height"]), int(self.processor.size["width"])

    def pixels(self, frames: Sequence[np.ndarray], coco_boxes: Sequence[np.ndarray]) -> Any:
        """The model's input (N, 3, height, width) float32 for all boxes of all frames in order;
        `coco_boxes[i]` is frame i's (P_i, 4) x, y, width, height."""
        import torch

        used = [i for i, boxes in enumerate(coco_boxes) if len(boxes)]
        if self.reference:
            return self.processor(images=[frames[i] for i in used], boxes=[coco_boxes[i].tolist() for i in used],
                                  return_tensors="pt")["pixel_values"]
        crops = []
        for i in used:
            centers, scales = on_device.box_geometry(coco_boxes[i], self.input_size())
            frame = torch.from_numpy(np.ascontiguousarray(frames[i])).to(self.device)
            crops.append(on_device.crop_boxes(frame, centers, scales, self.input_size()))
        p = self.processor
        return p.rescale_and_normalize(torch.cat(crops), p.do_rescale, p.rescale_factor, p.do_normalize,
                                       p.image_mean, p.image_std)

    def heatmaps(self, frames: Sequence[np.ndarray], coco_boxes: Sequence[np.ndarray]) -> Any:
        """The model's heatmaps (N, K, height/4, width/4) float32 torch tensor, N = all boxes of all frames
        in order (on the device; on the CPU for the reference decoding)."""
        import torch

        pixels = self.pixels(frames, coco_boxes)
        maps = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                chunk = pixels[start:start + self.batch_size].to(self.device)
                extra = {}
                if self.dataset_index is not None:
                    extra["dataset_index"] = torch.full((len(chunk),), self.dataset_index, dtype=torch.long,
                                                        device=self.device)
                with self.autocast():
                    heatmaps = self.model(pixel_values=chunk, **extra).heatmaps
                maps.append(heatmaps.float())
        maps = torch.cat(maps)
        return maps.cpu() if self.reference else maps

    def decode(self, heatmaps: Any, coco_boxes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: keypoints (P, K, 2) float32 x, y in frame pixels and scores (P, K) float32 in [0, 1]
        (module doc). The scores are the heatmap peaks, clipped to [0, 1] (a trained head's peaks lie
        there; an untrained one's may not)."""
        empty = (np.zeros((0, self.num_keypoints, 2), np.float32), np.zeros((0, self.num_keypoints), np.float32))
        used = [i for i, boxes in enumerate(coco_boxes) if len(boxes)]
        decoded = [empty] * len(coco_boxes)
        if not used:
            return decoded
        if self.reference:
            results = self.processor.post_process_pose_estimation(
                self.output_class(heatmaps=heatmaps), boxes=[coco_boxes[i] for i in used], kernel_size=DARK_KERNEL)
            per_frame = [(np.stack([p["keypoints"].numpy() for p in persons]),
                          np.stack([p["scores"].numpy().reshape(-1) for p in persons])) for persons in results]
        else:
            centers, scales = on_device.box_geometry(np.concatenate([coco_boxes[i] for i in used]), self.input_size())
            keypoints, scores = on_device.decode(heatmaps, centers, scales, DARK_KERNEL)
            ends = np.cumsum([len(coco_boxes[i]) for i in used])
            per_frame = list(zip(np.split(keypoints, ends[:-1]), np.split(scores, ends[:-1])))
        for i, (keypoints, scores) in zip(used, per_frame):
            decoded[i] = (keypoints.astype(np.float32), np.clip(scores, 0.0, 1.0).astype(np.float32))
        return decoded

    def __call__(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: keypoints (P, K, 2) and scores (P, K) of its boxes (P, 4) x1, y1, x2, y2 (frame pixels)."""
        coco_boxes = [to_coco_boxes(b) for b in boxes]
        if not any(len(b) for b in coco_boxes):
            return self.decode(None, coco_boxes)
        return self.decode(self.heatmaps(frames, coco_boxes), coco_boxes)
