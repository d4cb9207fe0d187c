"""Forward cost of every backbone at its published input size, beside MViTv2-S, in one table.

    .venv/bin/python benchmarks/video_backbones.py [--names mvit_v2_s swin3d_t ...] [--rounds 2]
                                                   [--threads 1] [--device cpu]

Rows (default `DEFAULT_NAMES`; any registered video or PoseC3D backbone by `--names`), random weights,
batch 1, fp32, inference mode, each built as extraction builds it:
  * video backbones (MViTv2-S, Video Swin T/S/B, VideoMAE, V-JEPA 2): one clip of the recipe's input
    (`preprocessing`: clip_len frames, crop_size) through `clip_tokens`, the extraction forward.
    VideoMAE and V-JEPA 2 have no folder here: they are built from transformers' default config with
    the registry's changes (VideoMAE-B 16x224; V-JEPA 2 ViT-L 16x256, the published fpc16 models),
    their recipe from transformers' processor defaults.
  * PoseC3D (SlowOnly-R50): a 17-channel 48-frame joint heatmap volume through the backbone (what
    `extract skeleton` runs after drawing the maps), at the NTU60 configs' 56x56 crop (published) and
    at migfuse's 64x64 extraction crop. The drawing rate is in benchmarks/posec3d.py.
Columns: parameters (the whole model), GFLOPs of one clip (torch's `FlopCounterMode`: matmuls and
convolutions, 1 multiply-add = 2 FLOPs), median seconds per clip over --rounds after one warm-up (the
counted pass), clips/s, the output shape per clip, and the ratio of its clips/s to MViTv2-S's measured
in the same run (the baseline; always measured first). Prints a Markdown table for
benchmarks/RESULTS.md (section `video_backbones`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from migfuse.backbones.registry import backbone_class, create_seeded

BASELINE = "mvit_v2_s"
DEFAULT_NAMES = ("mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b", "videomae", "vjepa2", "posec3d", "posec3d@64")
POSEC3D_PUBLISHED_CROP = 56  # the NTU60 configs' Resize(-1, 64) + CenterCrop(56)


def clip_input(name: str, device: str) -> tuple[Any, torch.Tensor, Callable[[torch.Tensor], torch.Tensor], str]:
    """(backbone, one input clip, the extraction forward, input in words) of `name` ("posec3d@64": that crop)."""
    name, _, crop = name.partition("@")
    bb = create_seeded(name, warn=False, device=device, **backbone_class(name).extract_options)  # as extraction
    bb.model.to(device).eval()
    if "video" in bb.tracks:
        pre = bb.preprocessing
        h, w = pre["crop_size"]
        x = torch.randn(1, 3, int(pre["clip_len"]), int(h), int(w), device=device)
        return bb, x, bb.clip_tokens, f"{pre['clip_len']}x{h}x{w} RGB"
    side = int(crop or POSEC3D_PUBLISHED_CROP)  # a heatmap-volume backbone (PoseC3D)
    frames, channels = bb.heatmap.clip_len, bb.model.arch.in_channels
    x = torch.rand(1, channels, frames, side, side, device=device)
    return bb, x, bb.model.backbone, f"{channels}x{frames}x{side}x{side} heatmaps"


def measure(name: str, rounds: int, device: str) -> dict[str, object]:
    bb, x, forward, what = clip_input(name, device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            out = forward(x)  # also the warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            forward(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"name": name, "params": bb.num_parameters(), "gflops": counter.get_total_flops() / 1e9,
            "input": what, "out": tuple(out.shape[1:]), "seconds": seconds, "clips_per_s": 1.0 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", help="backbones to measure, NAME or posec3d@CROP (default: "
                                               f"{' '.join(DEFAULT_NAMES)})")
    ap.add_argument("--rounds", type=int, default=2, help="timed forwards per backbone (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.names or list(DEFAULT_NAMES)
    names = [BASELINE] + [n for n in names if n != BASELINE]
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"device {args.device}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"{args.rounds} rounds (median)\n", flush=True)
    print("| backbone | params | input / clip | GFLOPs / clip | s / clip | clips/s | output / clip "
          "| clips/s vs mvit_v2_s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    base = None
    for name in names:  # each row as soon as it is measured: the big ViTs take minutes on a CPU
        r = measure(name, args.rounds, args.device)
        base = base or r["clips_per_s"]
        print(f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['input']} | {r['gflops']:.1f} | {r['seconds']:.2f} | "
              f"{r['clips_per_s']:.3f} | {r['out']} | {r['clips_per_s'] / base:.2f}x |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
