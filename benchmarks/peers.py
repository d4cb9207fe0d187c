"""migfuse against its peers' patterns, side by side, in one run, on the same inputs.

    python benchmarks/peers.py [--quick] [--clips-per-video 12] [--rounds 2] [--read-clips 13670]
                               [--read-epochs 2] [--skip-fuse] [--root /tmp/migfuse_peers_bench]

Three parts, each printed as rows of one markdown table with the ratio migfuse / peer:

  extraction  one generated 1280x720 25 fps h264 video (x264 defaults: keyframe every <= 250 frames)
              with clips of 25-75 frames (iMiGUE's) separated by gaps of --gaps frames (default 5-40, as
              benchmarks/extract_video.py; iMiGUE has ~51 clips per video, about one per 400 frames).
              migfuse: the video track's loader (`ClipLoader`: `decode.stream_clips`, one decode per
              video for all its clips). Peer: per clip, open the container, seek to the keyframe before
              the clip's first sampled frame, decode forward to its last one, close: the pattern of
              video_features and of mmaction2's clip feature extractor (DecordInit + DecordDecode per
              clip). Both use the same sampled indices (`ClipSampling`) and the same resize + crop
              (`video.resize_crop`); the peer's frames are checked equal to migfuse's. Measured:
              decode only (what sets the pace on a GPU box), and decode + model, the model being
              MViTv2-S at its demo width (`mvit.build_mvit("demo")`, random weights, batch 4) so that
              the CPU can afford it. Rounds alternate migfuse and peer; medians.
  reads       the same pooled view tokens (views/video (9, 768), views/joint + views/bone (14, 256),
              fp16, from benchmarks/fuse.py's iMiGUE-scale synthetic cache), read three ways for
              CMTF training: migfuse's Zarr view groups (`fuse.data.load_tokens` into RAM), one .npy
              per clip and modality in a folder read by a per-sample Dataset every step
              (video_features' output), and one pickle of a dict id -> arrays loaded once
              (mmaction2's feature file). The same CMTF head, seed, AdamW step and batch order; only
              the reading differs. Each variant runs in its own process (peak RSS = ru_maxrss).
              Files are read warm from the page cache (just written): cold reads favour fewer,
              bigger files even more.
  fuse        benchmarks/fuse.py's default CMTF and InterFusion trainings at iMiGUE scale (targets:
              <= 2 min and <= 1 min on the 2-core machine), in subprocesses.

The machine is shared: the load average is printed with each part. Record the output in
benchmarks/RESULTS.md (section `peers`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODALITIES = ("video", "joint", "bone")


def _bench_module(name: str):
    """Import a sibling benchmark script (benchmarks/ is not a package) under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------
# extraction: decode once per video (migfuse) vs open + seek + decode per clip (peers)
# ------------------------------------------------------------------------------------------------
def per_clip_decode(path: Path, indices: np.ndarray, short_side: int, crop: int,
                    stats: dict[str, int] | None = None) -> np.ndarray:
    """The peers' pattern for one clip: open, seek to the keyframe before the first sampled frame,
    decode forward to the last one (nearest frame to index / 25 s, as migfuse), resize + crop, close.

    Returns (W, F, crop, crop, 3) uint8, `indices` being (W, F) 25 fps frame indices.
    """
    import av

    from migfuse.extract.video import resize_crop

    wanted = sorted(set(indices.reshape(-1).tolist()))
    targets = set(wanted)
    got: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as migfuse's decoder
        start = stream.start_time or 0
        tb = stream.time_base
        container.seek(start + int(max(0.0, (wanted[0] - 0.5) / 25.0) / tb), stream=stream, backward=True,
                       any_frame=False)
        for frame in container.decode(stream):
            if stats is not None:
                stats["decoded"] = stats.get("decoded", 0) + 1
            k = int(round(float((frame.pts - start) * tb) * 25.0))
            if k in targets and k not in got:
                got[k] = resize_crop(frame.to_ndarray(format="rgb24"), short_side, crop)
            if k >= wanted[-1]:
                break
    return np.stack([got[i] for i in indices.reshape(-1).tolist()]).reshape(*indices.shape, crop, crop, 3)


class DemoModel:
    """MViTv2-S at the demo width on uint8 clips, batch `batch`: the same model work for both decoders."""

    def __init__(self, batch: int = 4) -> None:
        import torch

        from migfuse.backbones.mvit import PREPROCESSING, build_mvit, forward_tokens

        torch.manual_seed(0)
        self.model, self.forward_tokens = build_mvit("demo").eval(), forward_tokens
        self.mean, self.std = PREPROCESSING["mean"], PREPROCESSING["std"]
        self.batch, self.pending = batch, []

    def add(self, frames: np.ndarray) -> None:
        """Queue one clip's (W, 16, 224, 224, 3) uint8 frames; run the model on each full batch."""
        self.pending.extend(frames)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import torch

        from migfuse.backbones.video_input import normalise_clips

        if not self.pending:
            return
        x = normalise_clips(torch.from_numpy(np.stack(self.pending)), self.mean, self.std)  # as extract video
        with torch.inference_mode():
            self.forward_tokens(self.model, x)
        self.pending = []


def reencode(path: Path, gop: int) -> None:
    """Re-encode `path` in place with a keyframe every `gop` frames (x264 ultrafast, crf 23 as generated):
    how far back a per-clip seek lands depends on it."""
    import av

    tmp = path.with_suffix(".gop.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = src.streams.video[0].width, src.streams.video[0].height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0"}
        for frame in src.decode(video=0):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)


def keyframes(path: Path) -> list[int]:
    """25 fps frame numbers of the video's keyframes (from the packets, no decoding)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [int(round(float(p.pts * s.time_base) * 25)) for p in c.demux(s) if p.is_keyframe and p.pts is not None]


def make_spaced_dataset(root: Path, clips: int, gaps: tuple[int, int], width: int, height: int) -> Path:
    """One video with `clips` clips of 25-75 frames separated by gaps drawn from `gaps` (frames):
    extract_video.make_dataset with the gaps as a parameter (it draws 5-40)."""
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo

    rng = np.random.default_rng(0)
    lengths = rng.integers(25, 76, clips)
    starts = np.cumsum(rng.integers(gaps[0], gaps[1] + 1, clips) + np.r_[0, lengths[:-1]])
    n_frames = int(starts[-1] + lengths[-1] + 10)
    path = root / "0001.mp4"
    _bench_module("extract_video").write_video(path, n_frames, width, height, seed=1)
    all_clips = [Clip.make("0001", k, int(a), int(a + n - 1), raw_class=1)
                 for k, (a, n) in enumerate(zip(starts, lengths))]
    return Manifest(clips=all_clips, videos={"0001": VideoInfo("0001", video_path=path, n_frames=n_frames)}).save(
        root / "prepared")


def extraction(root: Path, clips_per_video: int, rounds: int, width: int, height: int, gop: int = 0,
               gaps: tuple[int, int] = (5, 40)) -> dict:
    import torch

    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.video import VideoExtractor

    torch.set_num_threads(1)  # shared machine: one intra-op thread is the steadiest (RESULTS.md, fuse)
    manifest = Manifest.load(make_spaced_dataset(root, clips_per_video, gaps, width, height))
    extractor = VideoExtractor(manifest, "video")
    loader = extractor.loader()
    items = extractor.work_items(extractor.ids())
    video = Path(manifest.videos["0001"].video_path)
    if gop:
        reencode(video, gop)
    plans = {c.clip_id: loader.sampling.windows(c.start_frame, c.end_frame) for c in manifest.clips}
    n = len(plans)

    def migfuse_run(model: DemoModel | None) -> dict[str, np.ndarray]:
        out = {}
        for item in items:
            for s in loader(item):
                assert s.failure is None, s.failure
                out[s.id] = s.inputs["frames"]
                if model is not None:
                    model.add(s.inputs["frames"])
        return out

    def peer_run(model: DemoModel | None) -> dict[str, np.ndarray]:
        out = {}
        for clip_id, idx in plans.items():
            out[clip_id] = per_clip_decode(video, idx, loader.short_side, loader.crop)
            if model is not None:
                model.add(out[clip_id])
        return out

    rates: dict[str, list[float]] = {k: [] for k in ("migfuse decode", "peer decode", "migfuse +model", "peer +model")}
    checked = False
    for _ in range(rounds):
        for name, fn in (("migfuse", migfuse_run), ("peer", peer_run)):
            t = time.perf_counter()
            frames = fn(None)
            rates[f"{name} decode"].append(n / (time.perf_counter() - t))
            if name == "migfuse":
                reference = frames
            elif not checked:  # "same clips": the peer must deliver exactly migfuse's frames
                bad = [k for k in plans if not np.array_equal(frames[k], reference[k])]
                assert not bad, f"peer frames differ from migfuse's for clips {bad}"
                checked = True
        for name, fn in (("migfuse", migfuse_run), ("peer", peer_run)):
            model = DemoModel()
            t = time.perf_counter()
            fn(model)
            model.flush()
            rates[f"{name} +model"].append(n / (time.perf_counter() - t))
    stats: dict[str, int] = {}
    peer_stats: dict[str, int] = {}
    for clip_id, idx in plans.items():
        per_clip_decode(video, idx, loader.short_side, loader.crop, peer_stats)
    from migfuse.extract.decode import read_frames

    for _ in read_frames(video, sorted({i for p in plans.values() for i in p.reshape(-1).tolist()}), stats=stats):
        pass
    return {"clips": n, "gaps": list(gaps), "keyframes": keyframes(video),
            "video_frames": manifest.videos["0001"].n_frames, "migfuse_decoded_frames": stats["decoded"],
            "migfuse_seeks": stats["seeks"], "peer_decoded_frames": peer_stats["decoded"],
            "rates": {k: [round(x, 3) for x in v] for k, v in rates.items()}, "load": load()}


# ------------------------------------------------------------------------------------------------
# training reads: Zarr views vs one .npy per clip vs one pickle
# ------------------------------------------------------------------------------------------------
def read_ids(root: Path, n: int) -> tuple[list[str], list[int]]:
    from migfuse.datasets.manifest import Manifest

    clips = [c for c in Manifest.load(root / "prepared").clips if c.split_miga == "train"][:n]
    return [c.clip_id for c in clips], [c.label for c in clips]


def write_peer_files(root: Path, n: int) -> dict:
    """The same view tokens as one .npy per clip and modality, and as one pickle of all of them."""
    from migfuse.data_cache.store import TokenCache

    ids, _ = read_ids(root, n)
    cache = TokenCache(root / "cache.zarr")
    npy, pkl = root / f"npy_{n}", root / f"features_{n}.pkl"
    npy.mkdir(exist_ok=True)
    feats: dict[str, dict[str, np.ndarray]] = {i: {} for i in ids}
    for m in MODALITIES:
        g = cache.group(f"views/{m}")
        for s in range(0, len(ids), 2048):
            part = ids[s:s + 2048]
            tokens = g.read_many(part, ["tokens"])["tokens"]
            for clip_id, x in zip(part, tokens):
                np.save(npy / f"{clip_id}_{m}.npy", x)
                feats[clip_id][m] = x.copy()
    with open(pkl, "wb") as f:
        pickle.dump(feats, f, protocol=pickle.HIGHEST_PROTOCOL)
    size = lambda ps: sum(p.stat().st_size for p in ps)  # noqa: E731
    return {"npy_files": 3 * len(ids), "npy_bytes": size(npy.iterdir()), "pickle_bytes": pkl.stat().st_size}


def train_reads(root: Path, variant: str, n: int, epochs: int) -> dict:
    """CMTF epochs reading the tokens the `variant` way; returns load and per-epoch seconds."""
    import torch
    import torch.nn.functional as F

    from migfuse.fuse.heads import make_head

    torch.set_num_threads(1)  # the fuse default (`"threads": 1`)
    ids, labels = read_ids(root, n)
    y = torch.as_tensor(labels)
    t0 = time.perf_counter()
    if variant == "zarr":
        from migfuse.data_cache.store import TokenCache
        from migfuse.fuse.data import load_tokens

        cache = TokenCache(root / "cache.zarr")
        data = load_tokens({m: cache.group(f"views/{m}") for m in MODALITIES}, ids, labels)
        batch_of = data.batch
    else:
        if variant == "pickle":
            with open(root / f"features_{n}.pkl", "rb") as f:
                feats = pickle.load(f)
            get = lambda clip_id, m: feats[clip_id][m]  # noqa: E731
        else:  # a per-sample Dataset over the folder, as a torch DataLoader would call it each step
            folder = root / f"npy_{n}"
            get = lambda clip_id, m: np.load(folder / f"{clip_id}_{m}.npy")  # noqa: E731

        def batch_of(index: torch.Tensor) -> dict[str, torch.Tensor]:
            out = {}
            for m in MODALITIES:
                x = torch.from_numpy(np.stack([get(ids[i], m) for i in index.tolist()])).float()
                out[m], out[f"{m}_mask"] = x, torch.ones(x.shape[:2], dtype=torch.bool)
            return out
    load_s = time.perf_counter() - t0
    shapes = {m: tuple(batch_of(torch.tensor([0]))[m].shape[1:]) for m in MODALITIES}
    torch.manual_seed(0)
    model = make_head("cmtf", shapes, 32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    epoch_s = []
    for epoch in range(epochs):
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(epoch))
        t = time.perf_counter()
        for s in range(0, len(ids), 64):
            idx = order[s:s + 64]
            loss = F.cross_entropy(model(batch_of(idx)), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        epoch_s.append(time.perf_counter() - t)
    return {"variant": variant, "clips": len(ids), "load_seconds": round(load_s, 2),
            "epoch_seconds": [round(x, 2) for x in epoch_s], "final_loss": round(float(loss), 4), "load": load()}


def peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits from a
    parent that was bigger when it forked)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child(args: list[str]) -> dict:
    """Run `peers.py --phase ...` in a fresh process; its JSON result plus its peak RSS."""
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"phase {args} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
def table(ext: dict | None, reads: dict | None, fuse: dict | None) -> list[str]:
    rows = ["| part | migfuse | peer | ratio (> 1: migfuse better) |", "|---|---|---|---|"]
    if ext:
        med = {k: float(np.median(v)) for k, v in ext["rates"].items()}
        for what, label in (("decode", "decode only"), ("+model", "decode + MViTv2-S demo width, batch 4")):
            m, p = med[f"migfuse {what}"], med[f"peer {what}"]
            gop = np.diff(ext["keyframes"]).max() if len(ext["keyframes"]) > 1 else ext["video_frames"]
            rows.append(f"| extraction, {label}, clips/s ({ext['clips']} clips, "
                        f"gaps {ext['gaps'][0]}-{ext['gaps'][1]}, keyframes every {gop} frames) | {m:.2f} | {p:.2f} | "
                        f"**{m / p:.2f}x** |")
    if reads:
        z = reads["zarr"]
        for peer, label in (("npy", "one .npy per clip and modality"), ("pickle", "one pickle of all features")):
            p = reads[peer]
            for what, key in (("load s", "load_seconds"), ("s/epoch (reads inside)", "epoch_median"),
                              (f"s/epoch incl. load over {len(z['epoch_seconds'])} epochs", "per_epoch"),
                              ("peak RSS MB", "peak_rss_mb")):
                # smaller is better: the ratio is peer / migfuse (> 1: migfuse better)
                ratio = f"{p[key] / z[key]:.2f}" if z[key] and p[key] else "-"
                rows.append(f"| reads for CMTF ({z['clips']} clips), {what}, vs {label} | {z[key]} | {p[key]} | "
                            f"**{ratio}** |")
    if fuse:
        c, i = fuse["cmtf"], fuse["interfusion"]
        rows.append(f"| fuse at iMiGUE scale: CMTF default training, whole run ({c['epochs']} epochs, "
                    f"{c['seconds_per_epoch']} s/epoch, peak {c['peak_rss_mb']} MB) | {c['total_seconds']} s | "
                    f"target <= 120 s | {'met' if c['total_seconds'] <= 120 else 'MISSED'} |")
        rows.append(f"| fuse at iMiGUE scale: InterFusion default training ({i['epochs']} epochs, peak "
                    f"{i['peak_rss_mb']} MB) | {i['total_seconds']} s | target <= 60 s | "
                    f"{'met' if i['total_seconds'] <= 60 else 'MISSED'} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 clips, 1 round, 1,000 clips read for 1 epoch, no fuse part")
    ap.add_argument("--root", type=Path, default=Path("/tmp/migfuse_peers_bench"),
                    help="work folder (the iMiGUE-scale synthetic cache is built once and reused)")
    ap.add_argument("--clips-per-video", type=int, default=12)
    ap.add_argument("--size", default="1280x720", help="WxH of the generated video")
    ap.add_argument("--gop", type=int, default=0,
                    help="re-encode the video with a keyframe every GOP frames (0: x264's default, <= 250)")
    ap.add_argument("--gaps", default="5-40", help="MIN-MAX frames between clips (iMiGUE: ~51 clips per video, "
                    "about one per 400 frames: try 200-600)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating migfuse / peer extraction rounds")
    ap.add_argument("--read-clips", type=int, default=12_893, help="training clips for the reads part (<= 12,893)")
    ap.add_argument("--read-epochs", type=int, default=2)
    ap.add_argument("--skip-extraction", action="store_true")
    ap.add_argument("--skip-reads", action="store_true")
    ap.add_argument("--skip-fuse", action="store_true")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.quick:
        args.clips_per_video, args.rounds, args.read_clips, args.read_epochs = 6, 1, 1000, 1
        args.skip_fuse = True
    if args.phase:
        kind, *rest = args.phase.split(":")
        if kind == "extraction":
            width, height = (int(x) for x in args.size.split("x"))
            with tempfile.TemporaryDirectory() as tmp:
                gaps = tuple(int(x) for x in args.gaps.split("-"))
                out = extraction(Path(tmp), args.clips_per_video, args.rounds, width, height, args.gop, gaps)
        elif kind == "peerfiles":
            out = write_peer_files(args.root, args.read_clips)
        else:
            out = train_reads(args.root, rest[0], args.read_clips, args.read_epochs)
        out["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(out))
        return

    fuse_bench = _bench_module("fuse")
    args.root.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load(),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {version('torch')}, "
                                f"av {version('av')}"}
    ext = reads = fuse = None
    if not args.skip_extraction:
        ext = results["extraction"] = child(["--phase", "extraction", "--clips-per-video", str(args.clips_per_video),
                                             "--rounds", str(args.rounds), "--size", args.size, "--gop", str(args.gop),
                                             "--gaps", args.gaps])
        print(f"extraction: {json.dumps(ext)}", file=sys.stderr)
    if not (args.skip_reads and args.skip_fuse) and not (args.root / "cache.zarr").exists():
        results["build"] = fuse_bench.phase("build", args.root, -1)
        print(f"build: {json.dumps(results['build'])}", file=sys.stderr)
    if not args.skip_reads:
        results["peer_files"] = child(["--phase", "peerfiles", "--root", str(args.root),
                                       "--read-clips", str(args.read_clips)])
        reads = results["reads"] = {}
        for variant in ("zarr", "npy", "pickle"):
            r = child(["--phase", f"reads:{variant}", "--root", str(args.root), "--read-clips", str(args.read_clips),
                       "--read-epochs", str(args.read_epochs)])
            r["epoch_median"] = round(float(np.median(r["epoch_seconds"])), 2)
            r["per_epoch"] = round((r["load_seconds"] + sum(r["epoch_seconds"])) / len(r["epoch_seconds"]), 2)
            reads[variant] = r
            print(f"reads {variant}: {json.dumps(r)}", file=sys.stderr)
    if not args.skip_fuse:
        for task in ("mg", "emotion"):  # fuse.py trains into run_<task>: a finished one would only be resumed
            shutil.rmtree(args.root / f"run_{task}", ignore_errors=True)
        fuse = results["fuse"] = {name: fuse_bench.phase(name, args.root, -1) for name in ("cmtf", "interfusion")}
        fuse["load"] = load()
        print(f"fuse: {json.dumps(fuse)}", file=sys.stderr)
    results["load_end"] = load()
    print(f"{results['date']}, {results['machine']}, load average (1/5/15 min) at the start {results['load_start']}, "
          f"at the end {results['load_end']}\n")
    print("\n".join(table(ext, reads, fuse)))
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
