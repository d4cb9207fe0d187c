"""`data pose` throughput: detector + pose model frames/s on 720p frames, and the time for all iMiGUE clips.

    .venv/bin/python benchmarks/pose.py [--pose-model DIR --detector DIR] [--batch-sizes 1,4,8]
                                        [--frames 8] [--device cpu] [--threads 2]

Without model folders it writes random-weight folders of the published sizes with transformers'
default configs (VitPoseConfig = ViTPose-B, 256x192 input; RTDetrConfig = RT-DETR R50vd, 640x640) and
runs them through `load_pose_estimator`, as `data pose` does; with real folders (ViTPose-B / RT-DETR
downloads) the same. A random detector finds arbitrary boxes, so its threshold is 0 there and --max-persons (1, the
interviewee) boxes reach the pose model: the table gives persons per frame, since the pose model runs
once per person. Baseline: batch size 1, measured in the
same run (ratio = frames/s / batch-1 frames/s). Decoding 720p is measured too (it runs in the loader
workers, beside the models).

The projection counts the frames `data pose --scope clips` estimates: the union of the clip ranges of
the annotation (labels_20200831.csv: 18,498 clips), against 3.77 M frames in the videos (--scope
videos). Prints a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

VIDEO_FRAMES = 3_770_000  # frames of all iMiGUE videos (the count)
LABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "imigue" / "labels_20200831.csv"


def clip_frames(labels: Path) -> int:
    """Frames covered by the union of every video's clip ranges (start/end inclusive)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    with open(labels, newline="") as f:
        for row in csv.DictReader(f):
            ranges.setdefault(row["video_id"], []).append((int(row["start_frame"]), int(row["end_frame"])))
    total = 0
    for spans in ranges.values():
        covered = np.zeros(max(e for _, e in spans) + 1, bool)
        for s, e in spans:
            covered[max(s, 0):e + 1] = True
        total += int(covered.sum())
    return total


def random_folders(root: Path) -> tuple[Path, Path]:
    """ViTPose-B and RT-DETR R50vd folders of random weights (transformers' default configs)."""
    import torch

    from migfuse.backbones._torchvision import import_torchvision

    import_torchvision()  # transformers' image code imports torchvision (see _torchvision.py)
    import transformers as tf

    torch.manual_seed(0)
    pose, detector = root / "vitpose-b-random", root / "rtdetr-r50-random"
    tf.VitPoseForPoseEstimation(tf.VitPoseConfig(num_labels=17)).save_pretrained(pose)  # the 17 COCO points
    tf.VitPoseImageProcessor().save_pretrained(pose)
    coco = {i: "person" if i == 0 else f"class_{i}" for i in range(80)}  # the detector must name a person class
    det = tf.RTDetrForObjectDetection(tf.RTDetrConfig(use_pretrained_backbone=False, id2label=coco,
                                                      label2id={v: k for k, v in coco.items()}))
    with torch.no_grad():  # random class heads almost never say "person": make every query one, as a frame
        for layer in det.modules():  # of the interviewee would, so boxes reach the pose model
            if isinstance(layer, torch.nn.Linear) and layer.out_features == len(coco):
                layer.bias[0] = 10.0
    det.save_pretrained(detector)
    tf.RTDetrImageProcessor().save_pretrained(detector)
    return pose, detector


def raw_rates(pose: Path, detector: Path, batch_sizes: list[int], frames: int, persons: int,
              device: str) -> list[tuple[int, float, float]]:
    """Model forwards alone (no resize, crop or decoding of outputs): the detector on (B, 3, 640, 640),
    the pose model on (B x persons, 3, 256, 192). What the estimator costs at least."""
    import torch
    import transformers as tf

    det = tf.RTDetrForObjectDetection.from_pretrained(detector).to(device).eval()
    vit = tf.VitPoseForPoseEstimation.from_pretrained(pose).to(device).eval()
    rows = []
    for bs in batch_sizes:
        x, crops = torch.randn(bs, 3, 640, 640, device=device), torch.randn(bs * persons, 3, 256, 192, device=device)
        with torch.inference_mode():
            det(pixel_values=x), vit(pixel_values=crops)  # warm-up
            t0 = time.perf_counter()
            for _ in range(max(1, frames // bs)):
                det(pixel_values=x), vit(pixel_values=crops)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        rows.append((bs, max(1, frames // bs) * bs / (time.perf_counter() - t0), float(persons)))
    return rows


def decode_rate(frames: int) -> float:
    """Frames/s of decoding a generated 1280x720 h264 video in one process (what one loader worker does)."""
    import av

    from migfuse.extract.decode import read_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "720p.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            rng = np.random.default_rng(0)
            base = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
            for i in range(frames):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 8 * i, axis=1), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        t0 = time.perf_counter()
        n = sum(1 for _ in read_frames(path, range(frames)))
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pose-model", type=Path)
    ap.add_argument("--detector", type=Path)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--frames", type=int, default=8, help="frames timed per batch size (after one warm-up call)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-persons", type=int, default=1, help="people per frame (iMiGUE: the one interviewee)")
    ap.add_argument("--box-threshold", type=float, default=None,
                    help="default 0 for the random detector (so that --max-persons boxes reach the pose model), "
                         "0.3 for real folders")
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--raw", action="store_true", help="time the model forwards alone (also used when this "
                                                       "migfuse has no pose models module)")
    ap.add_argument("--persons", type=int, default=1, help="--raw: people per frame given to the pose model")
    args = ap.parse_args()
    import torch

    from migfuse.pose_estimation.run import load_estimator

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8) for _ in range(args.frames)]
    rows = []
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    mode = "detector + pose through load_pose_estimator"
    with tempfile.TemporaryDirectory() as tmp:
        pose, detector = (args.pose_model, args.detector) if args.pose_model else random_folders(Path(tmp))
        try:
            if args.raw:
                raise ModuleNotFoundError("--raw")
            import migfuse.pose_estimation.models  # noqa: F401
        except ModuleNotFoundError:
            mode = f"model forwards alone (RT-DETR 640x640 + ViTPose 256x192 x {args.persons} person)"
            rows = raw_rates(pose, detector, sizes, args.frames, args.persons, args.device)
        for bs in sizes if not rows else []:
            threshold = args.box_threshold if args.box_threshold is not None else (0.3 if args.pose_model else 0.0)
            est = load_estimator(pose, detector, device=args.device, max_persons=args.max_persons, batch_size=bs,
                                 box_threshold=threshold)
            est(frames[:bs])  # warm-up: allocations, kernel choice
            t0 = time.perf_counter()
            found = est(frames)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            rows.append((bs, len(frames) / seconds, float(np.mean([f.boxes.shape[0] for f in found]))))
    base = rows[0][1]
    clips = clip_frames(args.labels) if args.labels.is_file() else None
    best = max(r[1] for r in rows)
    print(f"\nRun {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}; models: {pose.name} + "
          f"{detector.name if detector else '-'}; 1280x720 frames; {mode}\n")
    print("| batch size | frames/s | s/frame | persons/frame | ratio vs batch 1 |\n|---|---|---|---|---|")
    for bs, fps, persons in rows:
        print(f"| {bs} | {fps:.2f} | {1 / fps:.2f} | {persons:.1f} | {fps / base:.2f} |")
    print(f"\ndecoding 720p h264 in one process: {decode_rate(50):.1f} frames/s (the loader workers' share)")
    if clips:
        print(f"\niMiGUE: {clips:,} clip frames (--scope clips) of {VIDEO_FRAMES:,} video frames: at {best:.2f} "
              f"frames/s {clips / best / 3600:.1f} h (clips) and {VIDEO_FRAMES / best / 3600:.1f} h (videos)")


if __name__ == "__main__":
    main()
