"""PoseC3D heatmap drawing rate: numpy vs torch, CPU and CUDA when present.

    .venv/bin/python benchmarks/posec3d.py [--clips 8] [--repeats 3] [--threads 2]

`--clips` clips of one person, 48 frames, 17 COCO keypoints at random positions on the 64x64 crop with
random scores (the val_pipeline's volume), keypoint and limb channels. Baseline: the numpy path
(`draw_heatmaps`); rows give clips/s, the ratio to it and the largest difference to its volumes (the
torch paths must stay under 1e-5: the device check of `draw_heatmaps_torch`). Prints a Markdown table
for RESULTS.md. The network's forward cost (PoseC3D SlowOnly-R50 at 17x48x56x56 and 64x64) is a row of
the one backbone table beside MViTv2-S and the video backbones: benchmarks/video_backbones.py.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def heatmap_rows(clips: int, repeats: int) -> list[tuple[str, str, float, float]]:
    from migfuse.backbones.pose_heatmaps import draw_heatmaps, draw_heatmaps_torch

    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 64, (clips, 1, 48, 17, 2)).astype(np.float32)
    score = rng.uniform(0.3, 1, (clips, 1, 48, 17)).astype(np.float32)
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for limb in (False, True):
        what = "limbs" if limb else "keypoints"
        reference = draw_heatmaps(kp, score, (64, 64), limb=limb)
        rate = clips / best_time(lambda: draw_heatmaps(kp, score, (64, 64), limb=limb), repeats)
        rows.append((what, "numpy (baseline)", rate, 0.0))
        for dev in devices:
            tk, ts = torch.from_numpy(kp).to(dev), torch.from_numpy(score).to(dev)
            rate = clips / best_time(lambda: draw_heatmaps_torch(tk, ts, (64, 64), limb=limb), repeats)
            diff = float(np.abs(draw_heatmaps_torch(tk, ts, (64, 64), limb=limb).cpu().numpy() - reference).max())
            rows.append((what, f"torch {dev}", rate, diff))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# PoseC3D ({platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
          f"{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''})\n")
    rows = heatmap_rows(args.clips, args.repeats)
    print("| channels | path | clips/s (48x17x64x64) | vs numpy | max abs diff to numpy |\n|---|---|---|---|---|")
    base = {}
    for what, path, rate, diff in rows:
        base.setdefault(what, rate)
        print(f"| {what} | {path} | {rate:.2f} | {rate / base[what]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
