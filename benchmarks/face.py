"""Face track throughput: detection + alignment faces/s, and SwinFace faces/s.

    .venv/bin/python benchmarks/face.py [--frames 48] [--batch 32] [--threads 2] [--device cpu]

Input: frames of a generated demo video (320x240, one real face per frame) and, for the 720p
case, the same frames upscaled to 1280x720 (iMiGUE's size; detection runs on a 640-px downscale).
Baselines measured in the same run:
  * detection: facenet-pytorch's own `MTCNN(image_size=112)(frame)` crop path (detect + an
    unaligned square crop), against migfuse's detect + main-face choice + 5-point similarity alignment;
  * SwinFace: the original full forward (all 11 branches and 43 heads, as SwinFace's inference does),
    against migfuse's expression-only path (backbone + the expression branch it stores).
Prints a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import av
import numpy as np
import torch

from migfuse.backbones._torchvision import import_facenet
from migfuse.extract.face.align import align_face, to_model_input
from migfuse.extract.face.detect import FaceDetector, select_main_face
from migfuse.backbones.registry import create_backbone
from migfuse.synth import generate_dataset


def demo_frames(n: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(Path(tmp) / "d", videos=1, clips_per_video=2, progress=False)
        with av.open(str(next(root.rglob("*.mp4")))) as c:
            frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))]
    return np.stack(frames)


def upscale(frames: np.ndarray, size=(1280, 720)) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


def rate(n: int, fn) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_detect(frames: np.ndarray) -> tuple[float, float]:
    det = FaceDetector()

    def ours():
        faces = det.detect(frames)
        for t, i in enumerate(select_main_face(faces)):
            if i is not None:
                align_face(frames[t], faces[t].landmarks[i])

    from PIL import Image

    baseline_mtcnn = import_facenet().MTCNN(image_size=112, margin=0, post_process=False, device="cpu")
    images = [Image.fromarray(f) for f in frames]  # its numpy path needs cv2, which is not installed

    def baseline():
        baseline_mtcnn(images)

    return rate(len(frames), ours), rate(len(frames), baseline)


def bench_swinface(batch: int, device: str) -> tuple[float, float]:
    model = create_backbone("swinface").model.to(device).eval()
    x = torch.from_numpy(to_model_input(
        np.random.default_rng(0).integers(0, 255, (batch, 112, 112, 3), np.uint8))).to(device)

    def ours():
        with torch.inference_mode():
            model.expression(x)

    def full():
        with torch.inference_mode():
            model(x)

    return rate(batch, ours), rate(batch, full)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames = demo_frames(args.frames)
    rows = []
    for name, f in (("320x240 (demo)", frames), ("1280x720 (iMiGUE size)", upscale(frames))):
        ours, base = bench_detect(f)
        rows.append((f"detect + align, {name}", ours, "facenet MTCNN crop (unaligned)", base))
    ours, base = bench_swinface(args.batch, args.device)
    rows.append((f"SwinFace expression path, batch {args.batch}", ours, "SwinFace full forward (11 branches)", base))
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads, device {args.device}\n")
    print("| measurement | faces/s | baseline (same run) | faces/s | ratio |")
    print("|---|---|---|---|---|")
    for what, ours, base_name, base in rows:
        print(f"| {what} | {ours:.1f} | {base_name} | {base:.1f} | {ours / base:.2f} |")


if __name__ == "__main__":
    main()
