"""Tiny random-weight pose models for tests and demos: a person detector and a ViTPose folder in seconds.

    detector, pose = write_tiny_models(tmp_path)     # tmp_path/tiny-detector, tmp_path/tiny-vitpose
    estimator = load_pose_estimator(pose, detector)

Each folder is what `huggingface-cli download` leaves for a published model (config.json,
model.safetensors, preprocessor_config.json, a README.md model card), written by transformers'
`save_pretrained`, so `load_pose_estimator` reads it exactly as a real one. The weights are seeded
random (the poses mean nothing: plumbing, not accuracy), except that the detector is made to find
persons: its class head gives "person" a score of about 0.98 and the other classes about 0.02, and its
boxes are about half the frame, so a threshold of 0.3 keeps one box per query (`num_queries`, default 1:
exactly one person per frame).
"""
from __future__ import annotations

from pathlib import Path

from migfuse.atomic_write import write_text
from migfuse.pose_estimation.model_folders import import_transformers

#: COCO-17 keypoint names in COCO's order (the id2label of the tiny pose head)
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
#: the tiny detector's classes: "person" is not class 0, so code that finds it by index 0 alone fails
DETECTOR_LABELS = ("bicycle", "person", "car")
_CARD = "---\nlicense: apache-2.0\n---\n\n# {name} (tiny, random weights: for tests only)\n"


def write_tiny_detector(folder: str | Path, *, seed: int = 0, num_queries: int = 1, input_size: int = 64,
                        labels: tuple[str, ...] = DETECTOR_LABELS) -> Path:
    """A tiny RT-DETR object detector folder (about 30 k parameters) that finds `num_queries` persons a frame.

    Args:
        folder: the folder to write (made; its files replaced).
        seed: torch seed of the random weights.
        num_queries: boxes per frame (each "person" with score ~0.98).
        input_size: side of the square the processor resizes frames to.
        labels: class names (id2label in this order).
    Returns:
        the folder.
    """
    import torch

    tf = import_transformers()
    torch.manual_seed(seed)
    backbone = tf.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                     layer_type="basic", out_indices=[2, 3, 4])
    config = tf.RTDetrConfig(
        backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16], encoder_ffn_dim=32,
        encoder_attention_heads=2, d_model=16, num_queries=num_queries, decoder_in_channels=[16, 16, 16],
        decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_n_points=2, num_denoising=0,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    model = tf.RTDetrForObjectDetection(config).eval()
    with torch.no_grad():
        person = torch.tensor([4.0 if name == "person" else -4.0 for name in labels])
        for head in model.model.decoder.class_embed:
            head.weight.zero_()
            head.bias.copy_(person)
        for box in model.model.decoder.bbox_embed:
            last = box.layers[-1]
            last.weight.zero_()
            # centre where the anchor is; width and height pushed from the anchor's ~0.05 to ~0.5 of the frame
            last.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 3.0]))
    processor = tf.RTDetrImageProcessor(size={"height": input_size, "width": input_size})
    return _save(model, processor, Path(folder), "tiny RT-DETR person detector")


def write_tiny_pose_model(folder: str | Path, *, seed: int = 0, input_size: tuple[int, int] = (64, 48),
                          num_experts: int = 1, num_keypoints: int = 17) -> Path:
    """A tiny ViTPose folder (simple decoder; about 20 k parameters): COCO-17 heatmaps at a quarter of `input_size`.

    Args:
        folder: the folder to write (made; its files replaced).
        seed: torch seed of the random weights.
        input_size: (height, width) of the person crops (the published models: (256, 192)).
        num_experts: > 1 makes a ViTPose+ folder (a mixture of experts in the MLPs).
        num_keypoints: the head's keypoints (17: COCO names; another count, for error tests, numbered names).
    Returns:
        the folder.
    """
    import torch

    tf = import_transformers()
    torch.manual_seed(seed)
    moe = {"num_experts": num_experts, "part_features": 8} if num_experts > 1 else {}
    backbone = tf.VitPoseBackboneConfig(image_size=list(input_size), patch_size=[16, 16], hidden_size=16,
                                        num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, out_indices=[1],
                                        **moe)
    names = COCO_KEYPOINTS if num_keypoints == 17 else tuple(f"point_{i}" for i in range(num_keypoints))
    config = tf.VitPoseConfig(backbone_config=backbone, id2label=dict(enumerate(names)),
                              label2id={name: i for i, name in enumerate(names)})
    model = tf.VitPoseForPoseEstimation(config).eval()
    processor = tf.VitPoseImageProcessor(size={"height": input_size[0], "width": input_size[1]})
    return _save(model, processor, Path(folder), "tiny ViTPose" + ("+" if num_experts > 1 else ""))


def write_tiny_models(root: str | Path, *, seed: int = 0, num_queries: int = 1) -> tuple[Path, Path]:
    """A tiny detector and a tiny COCO-17 ViTPose under `root`: (root/tiny-detector, root/tiny-vitpose)."""
    root = Path(root)
    return (write_tiny_detector(root / "tiny-detector", seed=seed, num_queries=num_queries),
            write_tiny_pose_model(root / "tiny-vitpose", seed=seed))


def _save(model, processor, folder: Path, name: str) -> Path:
    from migfuse.backbones.hf_video import _quiet_transformers

    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    write_text(folder / "README.md", _CARD.format(name=name))
    return folder
