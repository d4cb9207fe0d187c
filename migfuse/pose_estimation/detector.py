"""Person boxes in frames: a transformers object detector (RT-DETR, DETR, ...) read from a local folder.

The folder's own image processor prepares the frames (its resize and normalisation) and turns the
model's outputs into boxes in frame pixels (`post_process_object_detection` with each frame's size);
of those, the "person" class (by the config's id2label name) above the threshold is kept, the
`max_persons` highest first, clipped to the frame. Frames are run `batch_size` at a time.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Sequence

import numpy as np

from migfuse.pose_estimation.model_folders import person_labels


class PersonDetector:
    """Boxes and scores of the persons in each frame.

    Args:
        folder: a checked detector folder (`model_folders.check_detector_folder`).
        config: its config.json.
        transformers: the imported module (`model_folders.import_transformers`).
        device: a torch device name ("cpu", "cuda", "cuda:1").
        box_threshold: the lowest detector score kept, in [0, 1].
        max_persons: most boxes kept per frame (highest scores first).
        batch_size: frames per forward pass.
    """

    def __init__(self, folder: Path, config: dict[str, Any], transformers: Any, *, device: str,
                 box_threshold: float, max_persons: int, batch_size: int,
                 autocast: Callable[[], AbstractContextManager] = nullcontext):
        from migfuse.backbones.hf_video import _quiet_transformers

        with _quiet_transformers():
            self.processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            self.model = transformers.AutoModelForObjectDetection.from_pretrained(
                folder, local_files_only=True).to(device).eval()
        from transformers.image_processing_backends import TorchvisionBackend

        self.torchvision_processor = isinstance(self.processor, TorchvisionBackend)
        self.device = device
        self.autocast = autocast
        self.person_ids = person_labels(config)
        self.box_threshold = float(box_threshold)
        self.max_persons = int(max_persons)
        self.batch_size = int(batch_size)

    def input_size(self) -> Any:
        """The processor's resize setting (e.g. {"height": 640, "width": 640}), for the provenance."""
        size = getattr(self.processor, "size", None)
        if dataclasses.is_dataclass(size):  # transformers' SizeDict: the fields that are set
            return {k: v for k, v in dataclasses.asdict(size).items() if v is not None}
        return dict(size) if isinstance(size, dict) else size

    def __call__(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: boxes (P, 4) float32 x1, y1, x2, y2 in frame pixels, scores (P,) float32, highest first."""
        found = []
        for start in range(0, len(frames), self.batch_size):
            found += self._batch(frames[start:start + self.batch_size])
        return found

    def _batch(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        # a torchvision processor resizes on the device (a 720p frame's resize is not free on the CPU)
        on_device = {"device": self.device} if self.torchvision_processor else {}
        inputs = self.processor(images=list(frames), return_tensors="pt", **on_device).to(self.device)
        with torch.inference_mode():
            with self.autocast():
                outputs = self.model(**inputs)
            for key, value in outputs.items():  # boxes and scores are post-processed in float32
                if torch.is_tensor(value) and value.is_floating_point():
                    outputs[key] = value.float()
        sizes = [frame.shape[:2] for frame in frames]
        results = self.processor.post_process_object_detection(outputs, threshold=self.box_threshold,
                                                               target_sizes=sizes)
        return [self._persons(result, size) for result, size in zip(results, sizes)]

    def _persons(self, result: dict[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The person boxes of one frame: clipped to it, empty ones dropped, the best `max_persons`."""
        labels = result["labels"].cpu().numpy()
        scores = result["scores"].float().cpu().numpy()
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        keep = np.isin(labels, self.person_ids)
        boxes, scores = boxes[keep], scores[keep]
        height, width = size
        boxes = np.clip(boxes, 0, [width, height, width, height])
        real = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, scores = boxes[real], scores[real]
        order = np.argsort(-scores, kind="stable")[:self.max_persons]
        return boxes[order].astype(np.float32), scores[order].astype(np.float32)
