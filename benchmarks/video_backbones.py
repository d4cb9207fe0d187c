"""Forward cost of the registered video backbones at their published input size, beside MViTv2-S.

    .venv/bin/python benchmarks/video_backbones.py [--names mvit_v2_s swin3d_t ...] [--rounds 2]
                                                   [--threads 1] [--device cpu]

For each backbone (default: every backbone registered for the video track), one clip of its recipe's
input (`preprocessing`: clip_len frames, crop_size; random weights, batch 1, fp32, inference mode)
through `clip_tokens`, the extraction forward. Columns: parameters, GFLOPs of one clip (counted by
torch's `FlopCounterMode`: matmuls and convolutions, 1 multiply-add = 2 FLOPs), median seconds per
clip over --rounds after one warm-up, clips/s, the token shape stored per clip, and the ratio of
its clips/s to MViTv2-S's measured in the same run (the baseline; always measured). Prints a
Markdown table for benchmarks/RESULTS.md (section `video_backbones`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from torch.utils.flop_counter import FlopCounterMode

from migfuse.backbones.registry import backbone_class, create_seeded, list_backbones

BASELINE = "mvit_v2_s"


def measure(name: str, rounds: int, device: str) -> dict[str, object]:
    bb = create_seeded(name, warn=False, device=device, **backbone_class(name).extract_options)  # as extraction
    bb.model.to(device).eval()
    pre = bb.preprocessing
    h, w = pre["crop_size"]
    x = torch.randn(1, 3, int(pre["clip_len"]), int(h), int(w), device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            tokens = bb.clip_tokens(x)  # also the warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            bb.clip_tokens(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"name": name, "params": bb.num_parameters(), "gflops": counter.get_total_flops() / 1e9,
            "input": f"{pre['clip_len']}x{h}x{w}", "tokens": tuple(tokens.shape[1:]), "seconds": seconds,
            "clips_per_s": 1.0 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", help="backbones to measure (default: every video backbone)")
    ap.add_argument("--rounds", type=int, default=2, help="timed forwards per backbone (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.names or list_backbones("video")
    names = [BASELINE] + [n for n in names if n != BASELINE]
    rows = [measure(n, args.rounds, args.device) for n in names]
    base = rows[0]["clips_per_s"]
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"device {args.device}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"{args.rounds} rounds (median)\n")
    print("| backbone | params | input | GFLOPs / clip | s / clip | clips/s | tokens / clip | clips/s vs mvit_v2_s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['input']} | {r['gflops']:.1f} | {r['seconds']:.2f} | "
              f"{r['clips_per_s']:.3f} | {r['tokens']} | {r['clips_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
