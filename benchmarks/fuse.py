"""Fusion benchmark at iMiGUE scale on this machine (CPU): is the default recipe laptop-sized?

    .venv/bin/python benchmarks/fuse.py [--root /tmp/migfuse_fuse_bench] [--threads N] [--skip-build]

What it does:
  1. build: a synthetic prepared dataset with the MiGA split sizes (12,893 train + 777 validation =
     13,670 training-side clips, 4,562 test clips, 359 videos, long-tailed labels with a planted
     signal) and the emotion protocol (102 train / 100 test videos). Only the VIEWS are written,
     directly through the store API (views/video (9, 768), views/joint and views/bone (14, 256),
     views/context (8, 2, 768), views/face_context (8, 16, 519)): full-resolution video tokens are
     0.6 MB per clip = 11 GB, which the pooled views exist to avoid.
  2. cmtf: `migfuse.fuse.train.train(task="mg")` with the default config (CMTF head): seconds per
     epoch, epochs run (early stopping), total, peak RSS.
  3. interfusion: the default emotion training (InterFusion head), total and peak RSS.
  4. fullres: a few CMTF training steps on full-resolution tokens (video 393 x 768, joint and bone
     16 x 55 = 880 tokens each) vs the same steps on view-sized tokens, in memory; the per-clip time
     ratio extrapolates what one full-resolution epoch would cost (measured steps, not a full run).
Each phase runs in its own process so that its peak memory (ru_maxrss) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, N_TEST = 12_893, 777, 4_562
VIDEOS = {"train": 245, "validation": 10, "test": 104}
# CS-train clip counts per class (iMiGUE labels_20200831.csv, cross-subject protocol): the real long tail.
CLASS_COUNTS = [11, 421, 39, 218, 80, 23, 65, 871, 87, 3, 315, 163, 101, 42, 28, 27, 322, 85, 2, 961, 174,
                376, 659, 705, 11, 293, 87, 61, 1247, 6, 2332, 4120]
WINDOWS, FACES = 8, 16  # context windows per video and face frames per window (extract defaults: k=8, 16 frames)
SIGNAL = 0.02  # planted class signal per feature (noise std 1): weak enough that training runs its epochs
VIEW_SHAPES = {"video": (9, 768), "joint": (14, 256), "bone": (14, 256)}
FULL_SHAPES = {"video": (393, 768), "joint": (16 * 55, 256), "bone": (16 * 55, 256)}


def build(root: Path, seed: int = 0) -> dict:
    from migfuse.datasets import classes
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
    from migfuse.data_cache.store import ArraySpec, GroupSpec, TokenCache

    rng = np.random.default_rng(seed)
    p = np.array(CLASS_COUNTS, float) / sum(CLASS_COUNTS)
    clips, videos = [], {}
    # Video ids: the 202 emotion-protocol videos + 157 others of 1..453, shuffled over the MG splits,
    # so split_emotion follows the real protocol lists (102 train / 100 test).
    emotion_ids = sorted(classes.EMOTION_TRAIN_VIDEOS | classes.EMOTION_TEST_VIDEOS)
    others = [i for i in range(1, 454) if i not in set(emotion_ids)][: sum(VIDEOS.values()) - len(emotion_ids)]
    video_numbers = rng.permutation(emotion_ids + others)
    v = 0
    for split, n_clips in (("train", N_TRAIN), ("validation", N_VAL), ("test", N_TEST)):
        for chunk in np.array_split(np.arange(n_clips), VIDEOS[split]):
            number = int(video_numbers[v])
            vid = f"{number:04d}"
            win_lose = "Win" if rng.random() < 0.5 else "Lose"
            emo = classes.split_emotion(number)
            videos[vid] = VideoInfo(vid, subject=v % 72 + 1, win_lose=win_lose, split_emotion=emo)
            for k in range(len(chunk)):
                label = int(rng.choice(32, p=p))
                clips.append(Clip(f"{vid}_{k}", vid, k, 50 * k, 50 * k + 39, label, classes.index_to_raw(label),
                                  v % 72 + 1, win_lose, "test" if split == "test" else "train", split, emo))
            v += 1
    prepared = Manifest(clips=clips, videos=videos).save(root / "prepared")
    cache = TokenCache(root / "cache.zarr")
    ids = [c.clip_id for c in clips]
    labels = np.array([c.label for c in clips])
    note = "synthetic benchmark view, written directly (full-resolution tokens would be 0.6 MB/clip = 11 GB)"

    def write_view(track, ids, shape, label_of, n_classes, per_window=False):
        spec = GroupSpec(f"views/{track}", ids,
                         {"tokens": ArraySpec(shape, "float16"), "mask": ArraySpec(shape[:-1], "bool")},
                         {"kind": "view", "track": track, "source": note, "pooling": {"name": "synthetic"}},
                         clips_per_chunk=max(1, (8 << 20) // (int(np.prod(shape)) * 2)))
        g = cache.require_group(spec)
        dirs = np.random.default_rng([seed, shape[-1]]).standard_normal((n_classes, shape[-1])).astype(np.float32)
        for s in range(0, len(ids), 2048):
            part = ids[s : s + 2048]
            y = label_of[s : s + 2048]
            x = rng.standard_normal((len(part), *shape), dtype=np.float32)
            x += SIGNAL * dirs[y].reshape(len(part), *([1] * (len(shape) - 1)), shape[-1])
            mask = np.ones((len(part), *shape[:-1]), bool)
            if per_window and track == "face_context":
                mask &= rng.random(mask.shape) < 0.6
            g.write_many(part, {"tokens": x.astype(np.float16), "mask": mask})

    t0 = time.perf_counter()
    for track, shape in VIEW_SHAPES.items():
        write_view(track, ids, shape, labels, 32)
    emo_ids = sorted(vid for vid, info in videos.items() if info.split_emotion)
    emo_y = np.array([classes.emotion_label(videos[x].win_lose) for x in emo_ids])
    write_view("context", emo_ids, (WINDOWS, 2, 768), emo_y, 2, per_window=True)
    write_view("face_context", emo_ids, (WINDOWS, FACES, 512 + 7), emo_y, 2, per_window=True)
    size = sum(f.stat().st_size for f in (root / "cache.zarr").rglob("*") if f.is_file())
    return {"clips": len(ids), "videos": len(videos), "emotion_videos": len(emo_ids),
            "build_seconds": round(time.perf_counter() - t0, 1), "views_bytes": size, "prepared": str(prepared)}


def run_training(root: Path, task: str, threads: int) -> dict:
    from migfuse.fuse.train import train

    out = root / f"run_{task}"
    if out.exists():  # a finished run folder would be resumed ("nothing to do"): measure a fresh run
        shutil.rmtree(out)
    t0 = time.perf_counter()
    config = {} if threads < 0 else {"threads": threads}  # -1: the library default (DEFAULTS["threads"])
    summary = train(root / "cache.zarr", root / "prepared", task, out, config=config)
    total = time.perf_counter() - t0
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"total_seconds": round(total, 1), "train_seconds": summary["train_seconds"], "epochs": len(epochs),
            "seconds_per_epoch": round(float(np.mean([e["seconds"] for e in epochs])), 2),
            "best": summary["best"], "parameters": summary["parameters"], "n_train": summary["n_train"]}


def steps(shapes: dict, batch: int, n: int, threads: int) -> float:
    """Seconds per training step of the default CMTF on random tokens of `shapes` (after 1 warm-up)."""
    import torch
    import torch.nn.functional as F

    from migfuse.fuse.heads import make_head

    from migfuse.fuse.train import DEFAULTS

    n_threads = DEFAULTS["threads"] if threads < 0 else threads
    if n_threads:
        torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    model = make_head("cmtf", shapes, 32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = {}
    for k, s in shapes.items():
        b[k], b[f"{k}_mask"] = torch.randn(batch, *s), torch.ones(batch, s[0], dtype=torch.bool)
    y = torch.randint(0, 32, (batch,))
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(b), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fullres(threads: int) -> dict:
    batch = 16
    view = steps(VIEW_SHAPES, batch, 6, threads)
    full = steps(FULL_SHAPES, batch, 3, threads)
    return {"batch": batch, "view_ms_per_clip": round(1e3 * view / batch, 2),
            "full_ms_per_clip": round(1e3 * full / batch, 1),
            "ratio": round(full / view, 1), "full_epoch_seconds": round(full / batch * (N_TRAIN + N_VAL))}


def phase(name: str, root: Path, threads: int) -> dict:
    """Run one phase in a child process; return its JSON result plus its peak RSS."""
    cmd = [sys.executable, __file__, "--phase", name, "--root", str(root), "--threads", str(threads)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"phase {name} failed:\n{r.stderr[-4000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/migfuse_fuse_bench"))
    ap.add_argument("--threads", type=int, default=-1, help="torch threads (-1 = migfuse default, 0 = torch default)")
    ap.add_argument("--phase", choices=["build", "cmtf", "interfusion", "fullres"], help=argparse.SUPPRESS)
    ap.add_argument("--skip-build", action="store_true", help="reuse the synthetic cache under --root")
    args = ap.parse_args()
    if args.phase:
        fn = {"build": lambda: build(args.root), "cmtf": lambda: run_training(args.root, "mg", args.threads),
              "interfusion": lambda: run_training(args.root, "emotion", args.threads),
              "fullres": lambda: fullres(args.threads)}[args.phase]
        out = fn()
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(out))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "loadavg_start": [round(x, 1) for x in load], "threads": args.threads}
    if not args.skip_build:
        results["build"] = phase("build", args.root, args.threads)
    for name in ("cmtf", "interfusion", "fullres"):
        results[name] = phase(name, args.root, args.threads)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    results["loadavg_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
