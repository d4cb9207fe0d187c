"""Face extraction memory vs video length: peak RSS of the face loader on a short and a 10x longer video.

    .venv/bin/python benchmarks/decode_memory.py [--seconds 10] [--factor 10] [--frames 8]

Input: two generated 1280x720 25 fps h264 videos (iMiGUE's size), `--seconds` and `--factor` x
`--seconds` long, with one 41-frame clip every 2 s (so the long video has 10x the clips). Each
measurement runs in a fresh subprocess: the face track's loader (`FaceLoader`, scope clip: decode,
MTCNN detection, alignment, K=`--frames` frames per clip) over the video's one work item, consuming
its samples as the runner does; the child reports its peak RSS (`resource.getrusage`, ru_maxrss) and
its RSS before the loader ran (imports and MTCNN built). Memory that does not grow with the video's
length means the decoder keeps only the frames of clips still waiting, not the video's.
Prints a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

CLIP_EVERY, CLIP_LEN = 50, 40  # annotation frames (25 fps): a clip [50j, 50j + 40] every 2 s


def write_video(path: Path, n_frames: int, width: int = 1280, height: int = 720) -> Path:
    """A moving colour pattern, h264 (libx264 ultrafast), a keyframe every second."""
    import av

    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.gop_size = 25
        st.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(n_frames):
            img = np.stack([(xx // 4 + t * 3) % 256, (yy // 4 + t) % 256, (xx + yy + 5 * t) // 8 % 256], -1)
            for p in st.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(path: str, n_frames: int, frames: int) -> None:
    """Run the face loader over one video; print JSON {baseline_mb, peak_mb, clips, seconds}."""
    import torch

    from migfuse.extract.face.extractor import FaceLoader
    from migfuse.extract.interface import WorkItem

    torch.set_num_threads(1)
    clips = {f"v_{j}": (s, s + CLIP_LEN) for j, s in enumerate(range(0, n_frames - CLIP_LEN, CLIP_EVERY))}
    loader = FaceLoader(paths={"v": path}, scope="clip", frames=frames, clips=clips)
    loader._faces(np.zeros((1, 720, 1280, 3), np.uint8))  # build MTCNN before the baseline
    baseline = _rss_mb()
    t0 = time.perf_counter()
    failed = 0
    for sample in loader(WorkItem("v", tuple(clips))):
        failed += sample.failure is not None
    print(json.dumps({"baseline_mb": baseline, "peak_mb": _rss_mb(), "clips": len(clips), "failed": failed,
                      "seconds": time.perf_counter() - t0}))


def measure(path: Path, n_frames: int, frames: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(n_frames), str(frames)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="length of the short video")
    ap.add_argument("--factor", type=int, default=10, help="the long video is this many times longer")
    ap.add_argument("--frames", type=int, default=8, help="K face frames per clip")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (args.seconds, args.seconds * args.factor):
            n = seconds * 25
            path = write_video(Path(tmp) / f"v{seconds}.mp4", n)
            r = measure(path, n, args.frames)
            rows.append((seconds, n, r))
    import migfuse

    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"migfuse from {Path(migfuse.__file__).parent}\n")
    print("| video (1280x720, 25 fps) | clips | K | peak RSS MB | before the loader MB | growth MB | s |")
    print("|---|---|---|---|---|---|---|")
    for seconds, n, r in rows:
        print(f"| {seconds} s ({n} frames) | {r['clips']} | {args.frames} | {r['peak_mb']:.0f} "
              f"| {r['baseline_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
