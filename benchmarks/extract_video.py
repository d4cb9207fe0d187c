"""Benchmark of the video track: decode alone, model alone, end to end, on the same generated videos.

    python benchmarks/extract_video.py [--videos 1] [--clips-per-video 12] [--size 1280x720] [--workers 1] [--rounds 2]

Writes generated 25 fps h264 videos (moving noise, so the encoder has real work), then measures
clips/s for:
  decode   the video track's loader in this process (decode once per video, sample 16 frames per
           clip, resize + crop to uint8): what one loader worker delivers;
  model    MViTv2-S (random weights) on pre-decoded uint8 clips, batch --batch-size;
  e2e      `run_extraction` with --workers loader processes into a fresh cache;
and the ratio e2e / model (1.0 = decoding fully hidden behind the forward pass). Prints a markdown
table; record it in benchmarks/RESULTS.md (section `video`).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


#: x264 settings of the generated videos (other benchmarks pass their own, e.g. B-frames and long GOPs)
FAST_X264 = {"preset": "ultrafast", "crf": "23"}


def write_video(path: Path, n_frames: int, width: int, height: int, seed: int,
                options: dict[str, str] | None = None) -> None:
    """h264 mp4, 25 fps: a smooth moving gradient plus noise (compresses like real footage, roughly);
    `options`: x264's (default `FAST_X264`)."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern = np.clip(128 + 100 * np.sin(xx / 60.0) * np.cos(yy / 45.0) + rng.normal(0, 12, (height, width)), 0, 255)
    pattern = pattern.astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(options or FAST_X264)
        for i in range(n_frames):
            # the pattern drifts (motion for the encoder); a fresh noise row band changes every frame
            img = np.roll(pattern, (2 * i, 4 * i), axis=(0, 1))[..., None].repeat(3, axis=2)
            band = (7 * i) % (height - 8)
            img[band:band + 8] = rng.integers(0, 256, (8, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_dataset(root: Path, videos: int, clips: int, width: int, height: int) -> Path:
    """Videos with `clips` clips each of 25-75 frames (iMiGUE clips are 1-3 s), spread over the video."""
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo

    rng = np.random.default_rng(0)
    all_clips, infos = [], {}
    for v in range(1, videos + 1):
        vid = f"{v:04d}"
        lengths = rng.integers(25, 76, clips)
        gaps = rng.integers(5, 40, clips)
        starts = np.cumsum(gaps + np.r_[0, lengths[:-1]])
        n_frames = int(starts[-1] + lengths[-1] + 10)
        path = root / f"{vid}.mp4"
        write_video(path, n_frames, width, height, seed=v)
        infos[vid] = VideoInfo(vid, video_path=path, n_frames=n_frames)
        all_clips += [Clip.make(vid, k, int(s), int(s + n - 1), raw_class=1)
                      for k, (s, n) in enumerate(zip(starts, lengths))]
    return Manifest(clips=all_clips, videos=infos).save(root / "prepared")


def bench_decode(extractor) -> tuple[float, list]:
    """clips/s of the video track's loader run in this process, and the samples it produced."""
    loader = extractor.loader()
    items = extractor.work_items(extractor.ids())
    t = time.perf_counter()
    samples = [s for item in items for s in loader(item)]
    dt = time.perf_counter() - t
    assert all(s.failure is None for s in samples), [s.failure for s in samples if s.failure]
    return len(samples) / dt, samples


def bench_model(extractor, samples: list, batch_size: int) -> float:
    """clips/s of the forward pass alone (uint8 -> normalise -> MViTv2-S), on already decoded clips."""
    extractor.setup()
    frames = np.concatenate([s.inputs["frames"] for s in samples])
    # No warm-up call: the end-to-end run has none either, so the two time the same model work.
    t = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        extractor._tokens(frames[i:i + batch_size])
    return len(frames) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--clips-per-video", type=int, default=12)
    ap.add_argument("--size", default="1280x720", help="WxH of the generated videos")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating model-alone / end-to-end rounds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.runner import run_extraction
    from migfuse.extract.video import VideoExtractor

    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        prepared = make_dataset(root, args.videos, args.clips_per_video, width, height)
        gen = time.perf_counter() - t
        manifest = Manifest.load(prepared)
        n = len(manifest.clips)

        decode_rate, samples = bench_decode(VideoExtractor(manifest, "video"))
        # The machine is shared and its load drifts: alternate model-alone and end-to-end runs on
        # the same clips and compare per round and by median.
        model_rates, e2e_rates = [], []
        for r in range(args.rounds):
            model_rates.append(bench_model(VideoExtractor(manifest, "video"), samples, args.batch_size))
            t = time.perf_counter()
            summary = run_extraction(VideoExtractor(manifest, "video"), root / f"cache{r}.zarr", workers=args.workers,
                                     batch_size=args.batch_size)
            e2e_rates.append(n / (time.perf_counter() - t))
            assert summary.ok and summary.done == n, summary.failed

    model_rate, e2e_rate = float(np.median(model_rates)), float(np.median(e2e_rates))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {n} clips of 25-75 frames in "
          f"{args.videos} {width}x{height} h264 videos (generated in {gen:.1f} s), batch {args.batch_size}, "
          f"{args.workers} loader worker(s), load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| measurement | clips/s | s/clip |")
    print("|---|---|---|")
    rows = [("decode alone (1 process: decode + sample + resize/crop)", decode_rate)]
    rows += [(f"model alone, round {r + 1} (MViTv2-S fp32, random weights)", m) for r, m in enumerate(model_rates)]
    rows += [(f"end to end, round {r + 1} (`run_extraction`: model build, workers, cache writes)", e)
             for r, e in enumerate(e2e_rates)]
    for name, rate in rows:
        print(f"| {name} | {rate:.3f} | {1 / rate:.2f} |")
    per_round = ", ".join(f"{e / m:.2f}" for m, e in zip(model_rates, e2e_rates))
    print(f"\nratio end-to-end / model-alone: {e2e_rate / model_rate:.2f} (medians); per round: {per_round}")


if __name__ == "__main__":
    main()
