"""Skeleton track throughput: preprocessing, training and extraction clips/s on generated clips.

    .venv/bin/python benchmarks/skeleton.py [--clips 32] [--threads 2] [--device cpu]

For two model sizes: the published 2s-AGCN width (base 64, 64 frames) and the small demo width
(base 8, 32 frames), both on the 55-joint `imigue` layout. Training = one epoch of SGD steps with
data loading (batch 8); extraction = `extract joint` through the door end to end (runner + Zarr writes, batch 32).
Prints a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from migfuse.datasets.manifest import Manifest
from migfuse.finetune.skeleton_data import SkeletonClipDataset
from migfuse.extract.entry import extract
from migfuse.extract.interface import RunOptions
from migfuse.runtime import Runtime
from migfuse.extract.skeleton.preprocess import clip_frames, clip_input
from migfuse.synth.skeletons import make_toy_dataset
from migfuse.finetune.skeleton import TrainConfig, build_model

SIZES = {"published (base 64, T=64)": dict(base_channels=64, length=64),
         "demo (base 8, T=32)": dict(base_channels=8, length=32)}


def bench_preprocess(m: Manifest, config: TrainConfig) -> float:
    skels = {v: m.skeleton(v) for v in m.videos}
    t0 = time.perf_counter()
    for c in m.clips:
        clip_input(*clip_frames(*skels[c.video_id], c.start_frame, c.end_frame), "bone", config.preprocess())
    return len(m.clips) / (time.perf_counter() - t0)


def bench_train(m: Manifest, config: TrainConfig, clips: int, device: str) -> float:
    ds = SkeletonClipDataset(m, m.ids()[:clips], "joint", config.preprocess(), train=True)
    model = build_model(config).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    x, y = next(iter(loader))  # warm-up step (allocations, kernel choice)
    torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
    t0 = time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(ds) / (time.perf_counter() - t0)


def bench_extract(prepared: Path, tmp: Path, config: TrainConfig, device: str, name: str) -> float:
    meta = {"migfuse": {"arch": "agcn", "stream": "joint", "layout": "imigue",
                        "preprocess": config.preprocess().to_dict()}}
    ckpt = tmp / f"{name}.pt"
    torch.save({"meta": meta, "state_dict": build_model(config).state_dict()}, ckpt)
    t0 = time.perf_counter()
    summary = extract("joint", prepared, tmp / f"{name}.zarr", Runtime.resolve(device=device),
                      RunOptions(batch_size=32), checkpoint=ckpt)
    return summary.done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32, help="clips per measurement")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        videos = max(1, int(np.ceil(args.clips / 8)))
        m = make_toy_dataset(tmp / "prepared", videos=videos, clips_per_video=8, frames_per_clip=(40, 120),
                             val_videos=0)
        rows = []
        for name, size in SIZES.items():
            config = TrainConfig(layout="imigue", **size)
            params = sum(p.numel() for p in build_model(config).parameters())
            rows.append((name, params, bench_preprocess(m, config), bench_train(m, config, args.clips, args.device),
                         bench_extract(tmp / "prepared", tmp, config, args.device, name.split()[0])))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}; {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}, {len(m.clips)} generated clips of 40-119 frames, "
          f"layout imigue (55 joints)\n")
    print("| model | params | preprocess clips/s | train clips/s | extract clips/s |")
    print("|---|---|---|---|---|")
    for name, params, pre, tr, ex in rows:
        print(f"| {name} | {params / 1e6:.2f} M | {pre:.0f} | {tr:.2f} | {ex:.2f} |")


if __name__ == "__main__":
    main()
