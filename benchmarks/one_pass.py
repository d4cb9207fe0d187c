"""Benchmark of `extract all`: the four video tracks' loaders in one decode pass per video against
the four separate commands' loaders, on the same iMiGUE-like video, in the same run.

    python benchmarks/one_pass.py [--frames 3500] [--video 298] [--rounds 2]

Input: one generated 1280x720 25 fps x264 video (3 B-frames, a keyframe every 230 frames, moving
noise so the encoder has real work) of --frames frames, with the clips of iMiGUE video --video
(../shared/imigue/labels_20200831.csv) that end inside it: the clip layout of the real annotation.
Each loader runs in this process with one FFmpeg thread and one torch thread (one core, as one
loader worker of a 16-core node), over every row of its track:
  video         16 frames per clip, resized + cropped (`extract video`);
  context       K windows x 16 frames over the video (`extract context`);
  face          8 frames per clip at full size (`extract face`);
  face_context  K windows x 8 frames (`extract face --scope context`);
K is 8 (the default) scaled by --frames / the annotated video's length, so that context windows and
clips keep the proportion they have in the full video (8 windows over 20,195 frames for 298).
MTCNN is left out of the face loaders (a stand-in that finds no face): the issue puts it where the
forward runs, and here only the decode side is compared. Measured per run: frames decoded (PyAV)
and CPU seconds of this process (`time.process_time`), per clip of the video track. Then the one
pass with 1 and 2 FFmpeg threads without skipping and at the 8- and 32-frame skipping margins
(frames decoded, CPU, stretches decoded again because the margin was too small, and whether the
samples equal those of no skipping), and the
projection of the whole video-track decode (18,498 clips) on a 16-core node: 15 loader processes
at the measured one-pass rate per core. Prints markdown; record it in benchmarks/RESULTS.md
(section "One decode pass").
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extract_video  # noqa: E402 - the benchmarks' video writer, found by the line above

LABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "imigue" / "labels_20200831.csv"
IMIGUE_CLIPS = 18498
NODE_LOADERS = 15  # a 16-core node: one core feeds the GPU


#: iMiGUE-like encoding: x264, 3 B-frames, a keyframe every 230 frames (what the issue measured)
IMIGUE_X264 = {"preset": "veryfast", "crf": "23", "bf": "3", "g": "230", "keyint_min": "230", "sc_threshold": "0"}


def write_video(path: Path, n_frames: int, width: int = 1280, height: int = 720) -> None:
    """x264, 25 fps, 3 B-frames, keyframe every 230 frames: `extract_video.py`'s drifting pattern."""
    extract_video.write_video(path, n_frames, width, height, seed=0, options=IMIGUE_X264)


def imigue_clips(video: int) -> list[tuple[int, int]]:
    """(start_frame, end_frame) of the annotated clips of `video`."""
    with open(LABELS, newline="") as f:
        return [(int(r["start_frame"]), int(r["end_frame"])) for r in csv.DictReader(f) if int(r["video_id"]) == video]


def make_prepared(root: Path, n_frames: int, video: int) -> tuple[Path, int]:
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo

    path = root / "0001.mp4"
    write_video(path, n_frames)
    clips = [Clip.make("0001", k, s, e, raw_class=1)
             for k, (s, e) in enumerate(c for c in imigue_clips(video) if c[1] < n_frames)]
    Manifest(clips=clips, videos={"0001": VideoInfo("0001", video_path=path, n_frames=n_frames)}).save(
        root / "prepared")
    return root / "prepared", len(clips)


class Counted:
    """`decode.read_frames` wrapped: the frames each call decoded are added up."""

    def __init__(self):
        from migfuse.extract import decode

        self.decode, self.real, self.frames, self.redone = decode, decode.read_frames, 0, 0

    def __enter__(self):
        def counting(path, indices, **kwargs):
            kwargs.pop("stats", None)
            stats: dict = {}
            try:
                yield from self.real(path, indices, stats=stats, **kwargs)
            finally:
                self.frames += stats.get("decoded", 0)
                self.redone += stats.get("redone", 0)

        self.decode.read_frames = counting
        return self

    def __exit__(self, *exc):
        self.decode.read_frames = self.real


def run_loader(loader, items) -> tuple[int, float]:
    """(frames decoded, CPU seconds) of a loader over its work items, in this process."""
    frames, cpu, _, _ = run_loader_samples(loader, items)
    return frames, cpu


def run_loader_samples(loader, items) -> tuple[int, float, int, list]:
    """`run_loader`, plus the stretches decoded again (skipping margin too small) and the samples."""
    with Counted() as counted:
        t = time.process_time()
        samples = [s for item in items for s in loader(item)]
        cpu = time.process_time() - t
    assert all(s.failure is None for s in samples), [s.failure for s in samples if s.failure]
    return counted.frames, cpu, counted.redone, samples


def same_samples(a: list, b: list) -> bool:
    return [s.id for s in a] == [s.id for s in b] and all(
        x.inputs.keys() == y.inputs.keys() and all(np.array_equal(x.inputs[k], y.inputs[k]) for k in x.inputs)
        for x, y in zip(a, b))


class _no_skipping:
    """`decode.read_frames` with skip_nonref=False for every call inside the block."""

    def __init__(self, decode):
        self.decode, self.real = decode, decode.read_frames

    def __enter__(self):
        real = self.real
        self.decode.read_frames = lambda path, indices, **kw: real(path, indices, **{**kw, "skip_nonref": False})

    def __exit__(self, *exc):
        self.decode.read_frames = self.real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=5600, help="length of the generated video (25 fps frames)")
    ap.add_argument("--video", type=int, default=298, help="the iMiGUE video whose clip layout is used")
    ap.add_argument("--rounds", type=int, default=2, help="alternating separate / one-pass rounds")
    args = ap.parse_args()
    import torch

    from migfuse.datasets.manifest import Manifest
    from migfuse.extract import decode
    from migfuse.extract.face.extractor import FaceLoader, build_extractor as face_extractor
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.one_pass import OnePassLoader
    from migfuse.extract.video import build_extractor as video_extractor
    from migfuse.runtime import Runtime

    torch.set_num_threads(1)
    decode.set_threads(1)
    FaceLoader._faces_of_rows = lambda self, rows: [  # MTCNN left out: see the docstring
        (np.zeros((len(f), 112, 112, 3), np.uint8), np.zeros(len(f), bool)) for f in rows]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        prepared, n_clips = make_prepared(Path(tmp), args.frames, args.video)
        gen = time.perf_counter() - t
        manifest = Manifest.load(prepared)
        windows = max(1, round(8 * args.frames / max(e for _, e in imigue_clips(args.video))))
        builders = {"video": (video_extractor, {}), "context": (video_extractor, {"context_windows": windows}),
                    "face": (face_extractor, {}), "face_context": (face_extractor, {"context_windows": windows})}
        loaders, items = {}, {}
        for track, (build, options) in builders.items():
            ex = build(manifest, track, **options)
            ex.runtime = Runtime()
            loaders[track], items[track] = ex.loader(), ex.work_items(ex.ids())
        merged = [WorkItem("0001", tuple((t, row) for t in loaders for it in items[t] for row in it.ids))]
        one = OnePassLoader(loaders)
        separate: dict[str, list[tuple[int, float]]] = {t: [] for t in loaders}
        passes: list[tuple[int, float]] = []
        for _ in range(args.rounds):  # the machine's load drifts: alternate, compare medians
            for track in loaders:
                separate[track].append(run_loader(loaders[track], items[track]))
            passes.append(run_loader(one, merged))
        # the skipping margin per decoding threading: frames decoded, CPU, stretches decoded again,
        # and whether the samples are those of no skipping at all
        kept_margin = decode.skip_margin_frames
        margins = {}
        reference = None
        for threads in (1, 2):
            decode.set_threads(threads)
            for margin in (0, 8, 32):  # 0: no skipping (the reference)
                decode.skip_margin_frames = lambda m=margin: m
                runs = []
                for _ in range(args.rounds):
                    if margin == 0:
                        with _no_skipping(decode):
                            runs.append(run_loader_samples(one, merged))
                    else:
                        runs.append(run_loader_samples(one, merged))
                if reference is None:
                    reference = runs[0][3]
                margins[threads, margin] = (runs[0][0], float(np.median([r[1] for r in runs])), runs[0][2],
                                            same_samples(runs[0][3], reference))
        decode.skip_margin_frames = kept_margin
        decode.set_threads(1)

    def median(runs: list[tuple[int, float]]) -> tuple[int, float]:
        return runs[0][0], float(np.median([cpu for _, cpu in runs]))

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, 1 torch + 1 FFmpeg thread; one 1280x720 x264 video of {args.frames} frames "
          f"(3 B-frames, keyframe every 230; generated in {gen:.0f} s) with the {n_clips} clips of iMiGUE video "
          f"{args.video} inside it and {windows} context windows; medians of {args.rounds} rounds; load average "
          f"at the end {os.getloadavg()[0]:.1f}\n")
    print("| run | frames decoded | CPU s | CPU s per clip | vs video alone |")
    print("|---|---|---|---|---|")
    video_cpu = median(separate["video"])[1]
    total_frames, total_cpu = 0, 0.0
    for track in loaders:
        frames, cpu = median(separate[track])
        total_frames, total_cpu = total_frames + frames, total_cpu + cpu
        print(f"| `extract {track}` alone | {frames:,} | {cpu:.2f} | {cpu / n_clips:.3f} | {cpu / video_cpu:.2f}x |")
    print(f"| sum of the four | {total_frames:,} | {total_cpu:.2f} | {total_cpu / n_clips:.3f} | "
          f"{total_cpu / video_cpu:.2f}x |")
    frames, cpu = median(passes)
    print(f"| `extract all` (one pass) | {frames:,} | {cpu:.2f} | {cpu / n_clips:.3f} | {cpu / video_cpu:.2f}x |")
    print(f"\none pass / sum of the four: {cpu / total_cpu:.2f} CPU, {frames / total_frames:.2f} frames decoded; "
          f"target one pass <= 1.3x the video track alone: {'met' if cpu <= 1.3 * video_cpu else 'NOT met'}")
    print("\n| one pass: FFmpeg threads, skipping margin | frames decoded | CPU s | stretches decoded again | "
          "samples = no skipping |")
    print("|---|---|---|---|---|")
    for (threads, margin), (f, c, redone, same) in margins.items():
        what = "no skipping" if margin == 0 else f"margin {margin} frames"
        print(f"| {threads} thread{'s' if threads > 1 else ''}, {what} | {f:,} | {c:.2f} | {redone} | "
              f"{'yes' if same else 'NO'} |")
    rate = n_clips / cpu
    print(f"\nprojection: {rate:.2f} clips per CPU-second in one pass x {NODE_LOADERS} loader processes = "
          f"{rate * NODE_LOADERS:.1f} clips/s; the decode of all four video tracks for iMiGUE's "
          f"{IMIGUE_CLIPS:,} clips: {IMIGUE_CLIPS / (rate * NODE_LOADERS) / 60:.1f} min on a 16-core node "
          f"(this clip density: {n_clips} clips in {args.frames} frames)")


if __name__ == "__main__":
    main()
