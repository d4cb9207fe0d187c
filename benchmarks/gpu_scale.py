"""Extraction at iMiGUE scale on one node: every track's marginal rate, fixed cost and ceilings, in one run.

    python benchmarks/gpu_scale.py --out OUT                      # on a GPU node (about 4 minutes on an H200)
    python benchmarks/gpu_scale.py --quick --device cpu --out OUT # the same steps, small, on a CPU (CI)

Data (made here, in parallel processes): 1280x720 25 fps h264 videos (x264 veryfast, 3 B-frames,
keyframes every 250 frames, as downloaded footage) of a moving background with a real face (the
demo figure's face, scaled up) so that MTCNN has work; clips of 25-75 frames, one per ~100 frames
(iMiGUE has one per ~400: denser clips keep generation inside the time budget, and make decoding
here slightly cheaper per clip than on iMiGUE). Skeleton tracks run on generated skeletons
(`migfuse.synth.skeletons`) with a published-size 2s-AGCN (random weights).

Per track (video, context, face, face_context, joint, bone), all through the real `extract` path
(`runner.run_extractor` with the device's default batch and workers):
  * two runs on N/2 (every other clip of every video) and N rows into fresh caches, after the
    ceilings below so that both meet a warm process: marginal rate = (N - N/2) / (t_N - t_N/2), fixed
    cost = t_N/2 - (N/2) / marginal (model build, CUDA start, worker spawn, cache creation);
  * the run's own account of its time (`RunSummary.timings`): forward share = the GPU busy share;
  * decode ceiling = the track's loader alone in this process x the run's loader workers;
  * forward ceiling = the extractor's forward alone on pre-loaded inputs, warm, at the run's batch;
  * ratio = marginal / min(ceilings) (target >= 0.8 for `extract video`);
  * projected time for all of iMiGUE = fixed + iMiGUE rows / marginal; the tracks run one after
    another on one node, so the whole cache takes their sum (target <= 10 min on one H200).
Then the video forward's fraction of the dense bf16 peak (MViTv2-S = 128.4 GFLOP/clip, target
>= 15 %), tokens of bf16 against fp32 on the same clips (cosine >= 0.99, mean abs diff / rms <= 0.05),
`--compile` against eager, and GPU decoding against CPU decoding where torchcodec can run.

Prints a Markdown table and writes OUT/gpu_scale.md and OUT/gpu_scale.json (small files only; the
data and caches go to OUT/work, removed at the end unless --keep). Exits 1 when a track failed.
`--quick` uses the demo width of MViTv2-S and small videos so that it runs in about a minute on 2 CPU
cores: its rates say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Rows of each track on the whole of iMiGUE (18,498 clips in 359 videos; 8 context windows; 8 face frames).
IMIGUE_ROWS = {"video": 18498, "context": 359, "face": 18498, "face_context": 359, "joint": 18498, "bone": 18498}
#: What one row holds in the unit the rate is also given in (faces for the face tracks).
UNITS_PER_ROW = {"face": 8, "face_context": 8 * 8}
MVIT_GFLOP = 128.4  # forward FLOPs of MViTv2-S per 16x224x224 clip (benchmarks/finetune.py, torch flop counter)
TARGET_RATIO, TARGET_TOTAL_S, TARGET_PEAK, TARGET_FACES, TARGET_FIXED_S = 0.8, 600.0, 0.15, 500.0, 15.0
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu_scale {time.monotonic() - T0:6.1f} s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def write_video(path: str, n_frames: int, width: int, height: int, seed: int) -> None:
    """h264 mp4 at 25 fps: a drifting textured background and a face that moves slowly."""
    import av
    from PIL import Image

    from migfuse.synth import dataset as synth

    rng = np.random.default_rng(seed)
    face_png = Path(synth.__file__).parent / "assets" / "face.png"
    scale = max(1, height // 240)
    face = np.asarray(Image.open(face_png).convert("RGB").resize((52 * scale, 62 * scale)))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.clip(110 + 60 * np.sin(xx / 70.0) * np.cos(yy / 50.0) + rng.normal(0, 10, (height, width)), 0, 255)
    bg = bg.astype(np.uint8)[..., None].repeat(3, axis=2)
    fh, fw = face.shape[:2]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "bf": "3", "g": "250"}
        for i in range(n_frames):
            img = np.roll(bg, (i, 2 * i), axis=(0, 1)).copy()
            y = height // 3 + int(10 * np.sin(i / 15))
            x = width // 2 - fw // 2 + int(20 * np.cos(i / 20))
            img[y:y + fh, x:x + fw] = face
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_videos(root: Path, videos: int, clips: int, width: int, height: int, processes: int) -> Path:
    """Write the videos in parallel and a prepared folder (manifest) for them; returns it."""
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
    from migfuse.worker_pool import run_tasks

    rng = np.random.default_rng(0)
    jobs, all_clips, infos = [], [], {}
    for v in range(videos):
        vid = f"{v + 1:04d}"
        lengths = rng.integers(25, 76, clips)
        gaps = rng.integers(25, 75, clips)
        starts = np.cumsum(gaps + np.r_[0, lengths[:-1]])
        n_frames = int(starts[-1] + lengths[-1] + 25)
        path = root / f"{vid}.mp4"
        jobs.append((str(path), n_frames, width, height, v))
        infos[vid] = VideoInfo(vid, video_path=path, n_frames=n_frames)
        all_clips += [Clip.make(vid, k, int(s), int(s + n - 1), raw_class=1 + k % 32)
                      for k, (s, n) in enumerate(zip(starts, lengths))]
    list(run_tasks(write_video, jobs, processes, ordered=False))
    return Manifest(clips=all_clips, videos=infos).save(root / "prepared")


def make_skeletons(root: Path, videos: int, clips_per_video: int, quick: bool) -> tuple[Path, dict[str, Path]]:
    """Generated skeleton clips and a 2s-AGCN checkpoint per stream (published size; tiny with --quick)."""
    import torch

    from migfuse.synth.skeletons import make_toy_dataset
    from migfuse.finetune.skeleton import TrainConfig, build_model

    make_toy_dataset(root / "skel", classes=4, videos=videos, clips_per_video=clips_per_video, val_videos=1, seed=0)
    checkpoints = {}
    for stream in ("joint", "bone"):
        cfg = TrainConfig(stream=stream, **({"base_channels": 8, "length": 32} if quick else {}))
        meta = {"migfuse": {"arch": "agcn", "stream": stream, "layout": "imigue",
                            "preprocess": cfg.preprocess().to_dict()}}
        torch.manual_seed(0)
        checkpoints[stream] = root / f"{stream}.pt"
        torch.save({"meta": meta, "state_dict": build_model(cfg).state_dict()}, checkpoints[stream])
    return root / "skel", checkpoints


def demo_mvit_checkpoint(path: Path) -> Path:
    """A demo-width MViTv2-S file (as `backbone train video --set width=demo` writes), for --quick."""
    import torch

    from migfuse.backbones.mvit import FINETUNE_KIND, build_mvit

    torch.manual_seed(0)
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo"}},
                "state_dict": build_mvit("demo", num_classes=32).state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
@dataclass
class TrackResult:
    track: str
    rows: tuple[int, int] = (0, 0)
    seconds: tuple[float, float] = (0.0, 0.0)
    marginal: float = 0.0  # rows/s
    fixed_s: float = 0.0
    forward_share: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    decode_one: float = 0.0  # rows/s of one loader process
    decode_ceiling: float = 0.0
    forward_ceiling: float = 0.0
    ratio: float = 0.0
    projected_s: float = 0.0
    #: "two sizes", or "one run" when the two runs did not separate (fixed cost = the run's start)
    method: str = "two sizes"
    error: str = ""

    @property
    def units(self) -> int:
        return UNITS_PER_ROW.get(self.track, 1)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def loader_alone(make: Callable[[], Any], rows: list[str], device: str) -> tuple[float, list]:
    """rows/s of the track's loader in this process, and its samples (inputs kept for the forward)."""
    from migfuse.runtime import Runtime

    ex = make()
    ex._row_ids = rows
    ex.runtime, ex.batch = Runtime.resolve(device=device), ex.default_batch(device)
    loader = ex.loader()
    t = time.perf_counter()
    samples = [s for item in ex.work_items(ex.ids()) for s in loader(item)]
    dt = time.perf_counter() - t
    bad = [s.failure for s in samples if s.failure is not None]
    if bad:
        raise RuntimeError(f"loader failed: {bad[0]}")
    return len(samples) / dt, samples


def forward_alone(make: Callable[[], Any], samples: list, device: str, precision: str | None = None,
                  compile: bool = False, repeats: int = 2) -> tuple[float, list]:
    """rows/s of the extractor's forward on pre-loaded samples at the device's batch (after a
    warm-up batch), and its outputs."""
    from migfuse.runtime import Runtime

    ex = make()
    batch = ex.default_batch(device)
    ex.runtime, ex.batch = Runtime.resolve(device=device, precision=precision, compile=compile), batch
    ex.setup()
    groups, cur, units = [], [], 0
    for s in samples:  # batches as the runner fills them (Sample.size units)
        cur.append(s.inputs)
        units += max(1, s.size)
        if units >= batch:
            groups.append(cur)
            cur, units = [], 0
    if cur:
        groups.append(cur)
    ex.forward(groups[0])  # warm-up: kernels chosen, compiled, memory allocated
    _sync(device)
    t = time.perf_counter()
    outputs = []
    for _ in range(repeats):
        outputs = [o for g in groups for o in ex.forward(g)]
    _sync(device)
    return repeats * len(samples) / (time.perf_counter() - t), outputs


#: rows the loader-alone and forward-alone measurements take (whole videos, at least one)
LOADER_ROWS = 48


def whole_videos(make: Callable[[], Any], at_least: int) -> list[str]:
    """The rows of the first work items (videos) until there are `at_least` of them."""
    ex = make()
    rows: list[str] = []
    for item in sorted(ex.work_items(ex.ids()), key=lambda it: it.key):
        rows += list(item.ids)
        if len(rows) >= at_least:
            break
    return rows


def run_track(name: str, make: Callable[[], Any], work: Path, device: str) -> TrackResult:
    from migfuse.extract.interface import RunOptions
    from migfuse.extract.runner import run_extractor
    from migfuse.runtime import Runtime

    res = TrackResult(name)
    # the ceilings first, so that both timed runs meet a warm process (CUDA context, kernels chosen)
    res.decode_one, samples = loader_alone(make, whole_videos(make, LOADER_ROWS), device)
    res.forward_ceiling, _ = forward_alone(make, samples, device)
    rows = make().ids()
    # N/2 = every other row of every video (per-video tracks: every other video), so that both runs
    # keep all their loader workers busy and differ only in rows
    half = rows[::2]
    secs = []
    for k, subset in enumerate((half, rows)):
        ex = make()
        ex._row_ids = subset
        cache = work / f"cache_{name}_{k}.zarr"
        shutil.rmtree(cache, ignore_errors=True)
        summary = run_extractor(ex, cache, Runtime.resolve(device=device), RunOptions())
        if not summary.ok:
            raise RuntimeError(f"{len(summary.failed)} rows failed, e.g. {summary.failed[0]}")
        secs.append(summary.seconds)
        res.timings, res.settings = dict(summary.timings), dict(summary.settings)
        res.forward_share = summary.timings.get("forward", 0.0) / max(summary.seconds, 1e-9)
        shutil.rmtree(cache, ignore_errors=True)
    res.rows, res.seconds = (len(half), len(rows)), (secs[0], secs[1])
    dt = secs[1] - secs[0]
    if dt > 0.1 * secs[1]:
        res.marginal = (len(rows) - len(half)) / dt
        res.fixed_s = max(0.0, secs[0] - len(half) / res.marginal)
    else:  # too few rows to separate the costs (--quick): the larger run less its measured start
        res.method = "one run"
        res.fixed_s = res.timings.get("start", 0.0)
        res.marginal = len(rows) / max(secs[1] - res.fixed_s, 1e-9)
    res.decode_ceiling = res.decode_one * max(1, res.settings.get("workers", 1))
    res.ratio = res.marginal / min(res.decode_ceiling, res.forward_ceiling)
    res.projected_s = res.fixed_s + IMIGUE_ROWS[name] / res.marginal
    return res


def token_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine (lowest over rows) and mean |a - b| / rms(a) of two token sets (N, ...)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"min_cosine": float(cos.min()),
            "rel_mean_abs": float(np.abs(a - b).mean() / (np.sqrt((a ** 2).mean()) + 1e-12))}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:,.{digits}f}"


def report(results: list[TrackResult], extra: dict[str, Any], header: str) -> str:
    lines = [header, "",
             "| track | rows N/2, N | s at N/2, N | marginal rows/s | faces/s | fixed s | forward share (GPU busy) "
             "| loaders / forward / writes s | workers x threads, batch | decode ceiling rows/s (1 process x workers) "
             "| forward ceiling rows/s | end to end / min(ceilings) | projected iMiGUE s | rate from |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.track} | **FAIL**: {r.error} |" + " |" * 12)
            continue
        t, s = r.timings, r.settings
        lines.append(
            f"| {r.track} | {r.rows[0]}, {r.rows[1]} | {fmt(r.seconds[0])}, {fmt(r.seconds[1])} | "
            f"{fmt(r.marginal, 2)} | {fmt(r.marginal * r.units, 1) if r.units > 1 else '-'} | {fmt(r.fixed_s)} | "
            f"{100 * r.forward_share:.0f} % | "
            f"{fmt(t.get('loaders'))} / {fmt(t.get('forward'))} / {fmt(t.get('writes'))} | "
            f"{s.get('workers')} x {s.get('decode_threads')}, {s.get('batch')} | "
            f"{fmt(r.decode_one, 2)} x {max(1, s.get('workers', 1))} = {fmt(r.decode_ceiling, 2)} | "
            f"{fmt(r.forward_ceiling, 2)} | **{fmt(r.ratio, 2)}** | {fmt(r.projected_s, 0)} | {r.method} |")
    ok = [r for r in results if not r.error]
    total = sum(r.projected_s for r in ok)
    video = next((r for r in ok if r.track == "video"), None)
    face = next((r for r in ok if r.track == "face"), None)
    lines += ["", "| target | measured | target | met |", "|---|---|---|---|"]

    def target(name: str, value: float | None, goal: float, more_is_better: bool = True, unit: str = "") -> None:
        if value is None or not np.isfinite(value):
            lines.append(f"| {name} | n/a | {goal:g}{unit} | - |")
            return
        met = value >= goal if more_is_better else value <= goal
        lines.append(f"| {name} | {fmt(value, 2)}{unit} | {'>=' if more_is_better else '<='} {goal:g}{unit} | "
                     f"{'yes' if met else '**no**'} |")

    target("`extract video` end to end / min(decode, forward ceiling)", video.ratio if video else None, TARGET_RATIO)
    target(f"projected whole iMiGUE cache, {len(ok)} of {len(results)} tracks one after another, s", total,
           TARGET_TOTAL_S, more_is_better=False)
    target("video forward, fraction of the dense bf16 peak", extra.get("peak_fraction"), TARGET_PEAK)
    target("MTCNN + SwinFace end to end, faces/s (face track)", face.marginal * face.units if face else None,
           TARGET_FACES)
    target("largest fixed cost of a run, s", max((r.fixed_s for r in ok), default=None), TARGET_FIXED_S,
           more_is_better=False)
    lines += ["", "| check | result |", "|---|---|"]
    for key, value in extra.get("checks", {}).items():
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when torch has it), cpu, cuda or cuda:N")
    ap.add_argument("--quick", action="store_true", help="small and at the demo width: a CPU check of the script")
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_scale.md / gpu_scale.json (and work/)")
    ap.add_argument("--videos", type=int, help="generated videos (default 16; --quick 2)")
    ap.add_argument("--clips-per-video", type=int, help="clips per video (default 30; --quick 4)")
    ap.add_argument("--keep", action="store_true", help="keep OUT/work (videos, prepared folders)")
    ap.add_argument("--tracks", default="video,context,face,face_context,joint,bone")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # every run here builds random-weight MViTv2-S / SwinFace on purpose (said in the header): not once per run
    logging.getLogger("migfuse.backbones.registry").setLevel(logging.ERROR)

    import torch

    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.decode_gpu import gpu_decoding_unavailable
    from migfuse.extract.face.extractor import FaceExtractor
    from migfuse.runtime import resolve_device
    from migfuse.extract.sampling import ContextSampling
    from migfuse.extract.skeleton.extractor import SkeletonExtractor
    from migfuse.extract.video import VideoExtractor
    from migfuse.worker_pool import usable_cpus

    device = resolve_device(args.device)
    quick = args.quick
    videos = args.videos or (2 if quick else 16)
    clips = args.clips_per_video or (4 if quick else 30)
    width, height = (320, 240) if quick else (1280, 720)
    out = args.out
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    say(f"device {device}, {usable_cpus()} CPUs, {videos} videos x {clips} clips at {width}x{height}, quick={quick}")
    prepared = make_videos(work, videos, clips, width, height, processes=usable_cpus())
    skel, skel_ckpt = make_skeletons(work, videos=max(4, videos), clips_per_video=clips * 2, quick=quick)
    say(f"data written: {prepared}")
    manifest = Manifest.load(prepared)
    ckpt = demo_mvit_checkpoint(work / "mvit_demo.pt") if quick else None
    face_frames = 2 if quick else 8
    makers: dict[str, Callable[[], Any]] = {
        "video": lambda: VideoExtractor(manifest, "video", checkpoint=ckpt),
        "context": lambda: VideoExtractor(manifest, "context", checkpoint=ckpt),
        "face": lambda: FaceExtractor(manifest, "clip", frames=face_frames),
        "face_context": lambda: FaceExtractor(manifest, "context", frames=face_frames,
                                              context=ContextSampling(windows=8)),
        "joint": lambda: SkeletonExtractor(skel, skel_ckpt["joint"], "joint"),
        "bone": lambda: SkeletonExtractor(skel, skel_ckpt["bone"], "bone"),
    }
    UNITS_PER_ROW.update(face=face_frames, face_context=8 * face_frames)
    results: list[TrackResult] = []
    for name in [t.strip() for t in args.tracks.split(",") if t.strip()]:
        say(f"track {name}")
        try:
            results.append(run_track(name, makers[name], work, device))
        except Exception as e:  # noqa: BLE001 - one failing track must not hide the others' rows
            logging.exception("track %s failed", name)
            results.append(TrackResult(name, error=f"{type(e).__name__}: {e}"))

    checks: dict[str, str] = {}
    extra: dict[str, Any] = {"checks": checks}
    say("token checks")
    some = manifest.clips[0].video_id
    rows = [c.clip_id for c in manifest.clips if c.video_id == some][:4]
    try:
        _, samples = loader_alone(makers["video"], rows, device)
        rate32, out32 = forward_alone(makers["video"], samples, device, "fp32", repeats=1)
        rate16, out16 = forward_alone(makers["video"], samples, device, "bf16", repeats=1)
        agree = token_agreement(np.stack([o["tokens"] for o in out32]), np.stack([o["tokens"] for o in out16]))
        ok = agree["min_cosine"] >= 0.99 and agree["rel_mean_abs"] <= 0.05
        checks["video tokens bf16 vs fp32 (same clips)"] = (f"cosine {agree['min_cosine']:.5f}, mean abs diff / rms "
                                                            f"{agree['rel_mean_abs']:.4f}: "
                                                            f"{'within' if ok else '**outside**'} "
                                                            "the tolerance (0.99, 0.05)")
        if quick:
            checks["--compile vs eager"] = "not run with --quick (compiling takes minutes on a CPU)"
        else:
            rate_c, out_c = forward_alone(makers["video"], samples, device, None, compile=True, repeats=1)
            _, out_e = forward_alone(makers["video"], samples, device, None, repeats=1)
            agree = token_agreement(np.stack([o["tokens"] for o in out_e]), np.stack([o["tokens"] for o in out_c]))
            checks["--compile vs eager (default precision)"] = (
                f"cosine {agree['min_cosine']:.5f}, mean abs diff / rms "
                f"{agree['rel_mean_abs']:.4f}; forward {rate_c:.1f} clips/s compiled")
    except Exception as e:  # noqa: BLE001
        checks["video token checks"] = f"**FAIL**: {type(e).__name__}: {e}"
    why = gpu_decoding_unavailable(device)
    if why is None:
        try:
            cpu_rate, cpu = loader_alone(makers["video"], rows, device)
            gpu_make = lambda: VideoExtractor(manifest, "video", checkpoint=ckpt, decoder="gpu")  # noqa: E731
            gpu_rate, gpu = loader_alone(gpu_make, rows, device)
            diff = np.mean([np.abs(a.inputs["frames"].astype(int) - b.inputs["frames"].astype(int)).mean()
                            for a, b in zip(sorted(cpu, key=lambda s: s.id), sorted(gpu, key=lambda s: s.id))])
            _, t_cpu = forward_alone(makers["video"], cpu, device, repeats=1)
            _, t_gpu = forward_alone(makers["video"], gpu, device, repeats=1)
            agree = token_agreement(np.stack([o["tokens"] for o in t_cpu]), np.stack([o["tokens"] for o in t_gpu]))
            checks["--decoder gpu vs cpu"] = (
                f"one process: {gpu_rate:.2f} vs {cpu_rate:.2f} clips/s; pixels mean abs diff "
                f"{diff:.2f} / 255; tokens cosine {agree['min_cosine']:.5f}, mean abs diff / rms "
                f"{agree['rel_mean_abs']:.4f}")
        except Exception as e:  # noqa: BLE001
            checks["--decoder gpu vs cpu"] = f"**FAIL**: {type(e).__name__}: {e}"
    else:
        checks["--decoder gpu vs cpu"] = f"not measured: {why}"
    video = next((r for r in results if r.track == "video" and not r.error), None)
    if video and device.startswith("cuda") and not quick:
        from finetune import peak_flops

        peak = peak_flops(device, None)
        extra["peak_fraction"] = video.forward_ceiling * MVIT_GFLOP * 1e9 / peak if peak else None
    else:
        extra["peak_fraction"] = None
        checks["video forward vs the bf16 peak"] = "n/a: " + ("--quick runs the demo width" if quick else "not a GPU")

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or platform.machine())
    header = (f"## gpu_scale ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {name}, device {device}, torch "
              f"{torch.__version__}, {usable_cpus()} CPUs, quick {quick}, {time.monotonic() - T0:.0f} s in all)\n\n"
              f"{videos} generated {width}x{height} videos x {clips} clips; random weights (throughput only"
              f"{', MViTv2-S at the demo width' if quick else ''}); skeleton tracks on "
              f"{len(SkeletonExtractor(skel, skel_ckpt['joint'], 'joint').ids())} generated clips. Projections use "
              f"iMiGUE's rows: {', '.join(f'{k} {v:,}' for k, v in IMIGUE_ROWS.items())}.")
    text = report(results, extra, header)
    print("\n" + text)
    (out / "gpu_scale.md").write_text(text + "\n")
    payload = {"device": device, "quick": quick, "extra": extra,
               "total_projected_s": sum(r.projected_s for r in results if not r.error),
               "tracks": [{**{k: v for k, v in vars(r).items()}, "units_per_row": r.units} for r in results]}
    (out / "gpu_scale.json").write_text(json.dumps(payload, indent=1, default=float))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"report: {out / 'gpu_scale.md'}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
