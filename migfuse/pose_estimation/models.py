"""The pose estimator `data pose` runs: a person detector, then a top-down 2-D pose model on each box.

    estimator = load_pose_estimator("vitpose-base-simple", "rtdetr_r50vd_coco_o365", device="cuda")
    poses = estimator(frames)      # frames: RGB uint8 (H, W, 3); one FramePoses per frame

Both models are transformers' own (the `pose` extra), read from local Hugging Face folders; nothing is
downloaded (`local_files_only`). The detector is any `AutoModelForObjectDetection` folder with a
"person" class (RT-DETR as in transformers' ViTPose docs; `detector.py`); the pose model a ViTPose /
ViTPose+ folder (`top_down.py`), decoded by transformers' reference decoding. Without a detector the
whole frame is the one person box (score 1): for videos already cropped to their subject.
docs/pose.md says which published folders to get and why this backend.
"""
from __future__ import annotations

from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Sequence

import numpy as np

from migfuse.errors import UserError
from migfuse.pose_estimation import model_folders
from migfuse.pose_estimation.types import FramePoses, PoseEstimator  # noqa: F401 - the interface, re-exported
from migfuse.pose_estimation.top_down import DARK_KERNEL


#: --precision of `data pose`: the models' forwards in float32 or under autocast to bf16 / fp16
PRECISIONS = ("fp32", "bf16", "fp16")


def load_pose_estimator(pose_model: str | Path, detector: str | Path | None, *, device: str = "cpu",
                        box_threshold: float = 0.3, max_persons: int = 5, batch_size: int = 16,
                        precision: str = "fp32") -> PoseEstimator:
    """A detector + ViTPose estimator from two local Hugging Face folders.

    Args:
        pose_model: a ViTPose / ViTPose+ folder (e.g. usyd-community/vitpose-base-simple).
        detector: an object detector folder with a "person" class (e.g. PekingU/rtdetr_r50vd_coco_o365);
            None: the whole frame is the one person box.
        device: torch device ("cpu", "cuda", "cuda:1").
        box_threshold: the lowest detector score kept, in [0, 1].
        max_persons: most persons kept per frame (highest detector scores first), >= 1.
        batch_size: frames per detector pass and person crops per pose pass, >= 1.
        precision: "fp32", or "bf16" / "fp16": the two models' forwards under torch.autocast (the
            decoding stays float32); part of the provenance (poses differ slightly).
    Raises:
        UserError: one line naming the path and the fix, for a missing folder/file, a folder without
            weights, a model of the wrong kind (detector given as pose model and vice versa), an
            unsupported architecture, a bad threshold / count, transformers not installed.
    """
    if not 0.0 <= float(box_threshold) <= 1.0:
        raise UserError(f"box threshold {box_threshold} is not a detector score: give a value from 0 to 1 "
                        "(0.3 keeps the boxes transformers' ViTPose example keeps)")
    for name, value in (("max persons", max_persons), ("batch size", batch_size)):
        if int(value) != value or value < 1:
            raise UserError(f"{name} {value} is not a count: give a whole number of at least 1")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    pose_folder = Path(pose_model)
    _, layout = model_folders.check_pose_folder(pose_folder)
    detector_folder = None if detector is None else Path(detector)
    detector_config = None if detector_folder is None else model_folders.check_detector_folder(detector_folder)
    transformers = model_folders.import_transformers()
    return TransformersPoseEstimator(pose_folder, layout, detector_folder, detector_config, transformers,
                                     device=device, box_threshold=box_threshold, max_persons=int(max_persons),
                                     batch_size=int(batch_size), precision=precision)


class TransformersPoseEstimator:
    """A transformers person detector (or the whole frame) + a ViTPose model (module doc)."""

    def __init__(self, pose_folder: Path, layout: str, detector_folder: Path | None,
                 detector_config: dict[str, Any] | None, transformers: Any, *, device: str, box_threshold: float,
                 max_persons: int, batch_size: int, precision: str = "fp32"):
        from migfuse.pose_estimation.detector import PersonDetector
        from migfuse.pose_estimation.top_down import TopDownPose

        self.layout = layout
        self.pose_folder, self.detector_folder = pose_folder, detector_folder
        self.device, self.batch_size = device, batch_size
        self.box_threshold, self.max_persons = float(box_threshold), max_persons
        self.transformers_version = str(transformers.__version__)
        self.precision = precision
        autocast = _autocast(device, precision)
        self.pose = TopDownPose(pose_folder, layout, transformers, device=device, batch_size=batch_size,
                                autocast=autocast)
        self.detector = None if detector_folder is None else PersonDetector(
            detector_folder, detector_config or {}, transformers, device=device, box_threshold=box_threshold,
            max_persons=max_persons, batch_size=batch_size, autocast=autocast)
        self._provenance: dict[str, Any] | None = None

    def __call__(self, frames: Sequence[np.ndarray]) -> list[FramePoses]:
        """One FramePoses per frame (frames: RGB uint8 (H, W, 3), any sizes); persons by detector score."""
        frames = [_check_frame(frame, i) for i, frame in enumerate(frames)]
        if not frames:
            return []
        if self.detector is None:
            found = [(np.array([[0, 0, f.shape[1], f.shape[0]]], np.float32), np.ones(1, np.float32)) for f in frames]
        else:
            found = self.detector(frames)
        poses = []
        for start in range(0, len(frames), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            poses += self.pose(frames[chunk], [boxes for boxes, _ in found[chunk]])
        return [FramePoses(boxes=boxes, box_scores=box_scores, keypoints=keypoints, scores=scores)
                for (boxes, box_scores), (keypoints, scores) in zip(found, poses)]

    def provenance(self) -> dict[str, Any]:
        """What made the poses: each model (role, name, path, sha256 of the folder, architecture, licence),
        the detector threshold and person cap, input sizes, the decoding, transformers' version. Not the
        device or batch size, which do not change the poses (a resumed run may use others)."""
        if self._provenance is None:
            from migfuse.backbones import hf_folder
            from migfuse.checkpoint_file import folder_sha256

            def model(role: str, folder: Path) -> dict[str, Any]:
                config = hf_folder.read_json(folder / "config.json", folder)
                return {"role": role, "name": folder.name, "path": str(folder.resolve()),
                        "sha256": folder_sha256(folder), "model_type": config.get("model_type"),
                        "architecture": (config.get("architectures") or [None])[0], **hf_folder.licence(folder)}

            models = [model("pose", self.pose_folder)]
            if self.detector_folder is not None:
                models.insert(0, model("detector", self.detector_folder))
            self._provenance = {
                "backend": "transformers", "transformers": self.transformers_version, "models": models,
                "layout": self.layout, "keypoints": self.pose.num_keypoints,
                "detector": "model" if self.detector is not None else "none: the whole frame is the person box",
                "person_classes": [] if self.detector is None else self.detector.person_ids,
                "box_threshold": self.box_threshold, "max_persons": self.max_persons, "precision": self.precision,
                "input_size": {"pose": list(self.pose.input_size()),
                               "detector": None if self.detector is None else self.detector.input_size()},
                "box_padding": 1.25, "dataset_index": self.pose.dataset_index,
                "decoding": (f"heatmap argmax + DARK (kernel {DARK_KERNEL}) + unbiased affine back to the box: "
                             "transformers VitPoseImageProcessor.post_process_pose_estimation; scores = heatmap "
                             "peak clipped to [0, 1]"),
                "warp_and_decoding_on": "the processor's scipy / numpy code" if self.pose.reference else
                                        "torch, batched on the device (equal to the processor's)"}
        return self._provenance


def _autocast(device: str, precision: str) -> Callable[[], AbstractContextManager]:
    """The context the models' forwards run in: none for fp32, else torch.autocast to bf16 / fp16."""
    if precision == "fp32":
        return nullcontext
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype)


def _check_frame(frame: Any, index: int) -> np.ndarray:
    """The frame as given if it is RGB uint8 (H, W, 3); a ValueError (a caller's bug, not the user's) otherwise."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"frame {index} is {frame.dtype} {frame.shape}, not RGB uint8 (H, W, 3)")
    return frame
