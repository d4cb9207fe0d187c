"""MViTv2-S fine-tuning and forward throughput: clips/s at demo and full width, on the CPU or a GPU; with
`--backbones`, the training step of the other trainable video backbones beside it (same run, same table).

    python benchmarks/finetune.py [--device cpu|cuda] [--widths demo,full] [--batch 2] [--steps 3]
                                  [--extract] [--decode] [--size 1280x720] [--json OUT.json] [--quick]
                                  [--backbones swin3d_t,videomae,vjepa2]

Rows (Markdown table, for benchmarks/RESULTS.md section `finetune`):
  train    one optimiser step per batch as `backbone train video` takes it: GPU-side augmentation,
           forward + backward (bf16 autocast on CUDA, fp32 on CPU), gradient clipping, AdamW with
           layer-wise lr groups, on pre-decoded uint8 clips already on the device (the model's pace);
           `train (NAME)`: the same for backbone NAME at its published size and input recipe, random
           weights (videomae / vjepa2: transformers' default configs, ViT-B 16 frames / ViT-L 16 frames);
  forward  `--extract`: the extraction forward (inference mode; fp32, and bf16 on CUDA) - what
           `extract video` computes per clip;
  decode   `--decode`: the training dataset (decode + sample + resize/crop, one process) on generated
           h264 videos of --size: clips/s one loader worker delivers. Workers needed to keep the
           model busy = train clips/s / decode clips/s.
GPU rows add the peak memory and the fraction of the device's dense bf16 peak (the roofline) reached,
from the model's own FLOPs counted with torch.utils.flop_counter (training = 3 x forward).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Dense bf16 tensor-core peak (FLOP/s) by device name, from the vendors' data sheets (no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def forward_flops(width: str, backbone: str = "mvit_v2_s") -> float:
    """FLOPs of one clip's forward pass (counted on the CPU, batch 1): MViTv2-S at `width`, or `backbone`
    at its published size and recipe input."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _, (_, x) = _train_model(width, backbone, "cpu", 1, False)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def _train_model(width: str, backbone: str, device: str, batch: int, checkpointing: bool):
    """(classifier as `backbone train video` builds it, its AdamW, the augmentation, (uint8 clips, normalised
    zeros)) for MViTv2-S at `width` or another trainable `backbone`, with random weights."""
    from migfuse.finetune import video as vt
    from migfuse.finetune.video_data import Augment
    from migfuse.finetune.video_models import video_family

    family = video_family(backbone)
    cfg = vt.resolve(sets=[f"width={width}"] if backbone == "mvit_v2_s" else [], backbone=backbone)
    weights, _ = vt.build_model(cfg, None, family)
    weights.to(device)
    model = vt.FineTuneModel(weights, checkpointing, family, cfg["head_dropout"])
    groups = vt.param_groups(weights, 1e-4, 0.75, 0.05, family)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    pre = family.preprocessing
    aug = Augment(mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    t, (h, w) = int(pre["clip_len"]), pre["crop_size"]
    frames = torch.randint(0, 256, (batch, t, h, w, 3), dtype=torch.uint8, device=device)
    return model, opt, aug, (frames, torch.zeros(1, 3, t, h, w, device=device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _mem_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _mem_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None


def bench_train(width: str, device: str, batch: int, steps: int, checkpointing: bool = False,
                backbone: str = "mvit_v2_s") -> dict:
    """clips/s of full optimiser steps (augment, forward, backward, clip, AdamW) on device-resident clips."""
    model, opt, aug, (x, _) = _train_model(width, backbone, device, batch, checkpointing)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 32, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    cuda = device.startswith("cuda")

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(aug(x, gen))
        loss_fn(logits.float(), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    _mem_reset(device)
    step()  # warm-up (allocations, cuDNN autotuning)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t
    return {"rate": steps * batch / seconds, "mem_gib": _mem_gib(device)}


def bench_forward(width: str, device: str, batch: int, steps: int, bf16: bool) -> dict:
    """clips/s of the extraction forward (inference mode) on device-resident normalised clips."""
    from migfuse.backbones.mvit import build_mvit, forward_tokens

    model = build_mvit(width, 400).eval().to(device)
    x = torch.randn(batch, 3, 16, 224, 224, device=device)
    _mem_reset(device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            forward_tokens(model, x)

    run()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return {"rate": steps * batch / (time.perf_counter() - t), "mem_gib": _mem_gib(device)}


def bench_decode(size: str, clips: int) -> float:
    """clips/s of the training dataset (decode + sample + resize/crop) in this process."""
    from extract_video import make_dataset

    from migfuse.datasets.manifest import Manifest
    from migfuse.finetune.video_data import VideoClipDataset

    w, h = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = make_dataset(Path(tmp), 1, clips, w, h)
        manifest = Manifest.load(prepared)
        ds = VideoClipDataset(manifest, [c.clip_id for c in manifest.clips])
        t = time.perf_counter()
        got = sum(ds[i] is not None for i in range(len(ds)))
        return got / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--widths", default="demo,full")
    ap.add_argument("--batch", type=int, default=2, help="clips per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--extract", action="store_true", help="also time the extraction forward")
    ap.add_argument("--decode", action="store_true", help="also time the training dataset's decoding")
    ap.add_argument("--size", default="1280x720", help="WxH of the generated videos for --decode")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in training")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, if not in the table")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--quick", action="store_true", help="1 timed step, batch 1 at full width")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--backbones", default="", help="also time the training step of these trainable video "
                                                    "backbones (comma-separated, e.g. swin3d_t,videomae,vjepa2)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.ERROR)
    device = args.device
    if device == "cuda":
        device = "cuda:0"
    peak = peak_flops(device, args.peak_tflops)
    rows = []
    for width in args.widths.split(","):
        flops = forward_flops(width)
        batch = 1 if (args.quick and width == "full" and not device.startswith("cuda")) else args.batch
        steps = 1 if args.quick else args.steps
        precision = "bf16" if device.startswith("cuda") else "fp32"
        r = bench_train(width, device, batch, steps, args.checkpointing)
        rows.append({"what": "train", "width": width, "precision": precision, "batch": batch, **r,
                     "flops_per_clip": 3 * flops})
        if args.extract:
            for bf16 in ([False, True] if device.startswith("cuda") else [False]):
                r = bench_forward(width, device, batch * 4 if device.startswith("cuda") else batch, steps, bf16)
                rows.append({"what": "forward", "width": width, "precision": "bf16" if bf16 else "fp32",
                             "batch": batch * 4 if device.startswith("cuda") else batch, **r, "flops_per_clip": flops})
    for backbone in filter(None, args.backbones.split(",")):
        batch = 1 if args.quick and not device.startswith("cuda") else args.batch
        r = bench_train("full", device, batch, 1 if args.quick else args.steps, args.checkpointing, backbone)
        rows.append({"what": f"train ({backbone})", "width": "published", "batch": batch, **r,
                     "precision": "bf16" if device.startswith("cuda") else "fp32",
                     "flops_per_clip": 3 * forward_flops("full", backbone)})
    if args.decode:
        rows.append({"what": "decode", "width": "-", "precision": "-", "batch": 1,
                     "rate": bench_decode(args.size, 4 if args.quick else 12), "mem_gib": None, "flops_per_clip": None})
    for r in rows:
        r["roofline"] = (r["rate"] * r["flops_per_clip"] / peak) if (peak and r["flops_per_clip"]) else None
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {name}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}"
          + (f", dense bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "") + "\n")
    print("| measurement | width | precision | batch | clips/s | s/clip | GFLOP/clip | peak GPU mem (GiB) | "
          "bf16 roofline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = " (decode + sample + resize/crop, 1 process, " + args.size + ")" if r["what"] == "decode" else ""
        print(f"| {r['what']}{extra} | {r['width']} | {r['precision']} | {r['batch']} | {r['rate']:.3f} | "
              f"{1 / r['rate']:.2f} | {r['flops_per_clip'] / 1e9:.1f} | " if r["flops_per_clip"] else
              f"| {r['what']}{extra} | {r['width']} | {r['precision']} | {r['batch']} | {r['rate']:.3f} | "
              f"{1 / r['rate']:.2f} | - | ", end="")
        print(f"{r['mem_gib']:.2f} | " if r["mem_gib"] is not None else "- | ", end="")
        print(f"{100 * r['roofline']:.1f} % |" if r["roofline"] is not None else "- |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
