"""`migfuse demo`: the whole pipeline on a generated dataset, in a few minutes on a CPU.

generate -> prepare -> extract (video, context, skeleton joint+bone, face clip+context)
-> views -> CMTF (micro-gestures) + InterFusion (emotion) -> predict -> MiGA 2025 + emotion zips.

Every backbone runs with seeded RANDOM weights (no checkpoint can be downloaded here), except the
skeleton backbone, which the demo trains. So the numbers show that the pipeline runs end to end,
not how well a real model does. Re-running the demo reuses what is already there: the dataset, the
prepared folder and the cache (extraction resumes); the heads are trained again.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from migfuse.atomic_write import is_leftover, write_text
from migfuse.errors import UserError
from migfuse.runtime import Precision, Runtime
from migfuse.synth.pose import MOTIONS

log = logging.getLogger(__name__)

# Settings that keep the demo within 3 minutes on 2 CPU cores (benchmarks/demo.py). MViTv2-S forwards
# dominate (1.5 s per clip in fp32, 0.6 s in bf16 on 2 Xeon cores with AMX), one per clip and one
# per context window: 5 videos x 8 clips + 5 windows = 45. Eight clips per video show each of the 8
# generated gestures once, so every split is balanced. Real iMiGUE ids, chosen for their splits:
# MiGA train 26 (Win), 46 (Lose); validation 1 (Win, picks the best epoch); test 54 (Lose), 71 (Win):
# the held-out split, scored against the generated ground truth, which no training step sees.
# Emotion: train 26, 46, 1; test 54, 71.
DEMO = {
    "video_ids": (26, 46, 1, 54, 71),
    "clips_per_video": 8,
    "context_windows": 1,  # MViT windows per video for the emotion context track
    "video_batch": 5,  # MViT inputs per forward (always full, zero-padded): 40 clips = 8 x 5, 5 windows = 1 x 5
    "face_frames": 2,  # face frames per clip and per context window
    "face_batch": 10,  # SwinFace runs on full (padded) batches: 40 x 2 clip faces, 5 x 2 window faces
    "generate_workers": 2,
    # 16 training clips, 8 validation clips. lr 0.02 for 50 epochs: the bone stream reached only 2-6
    # of the 16 held-out clips at lr 0.05-0.1 for 30 epochs, and 10/16 with this (seeds 0 and 1).
    "skeleton": {"epochs": 50, "base_channels": 8, "length": 32, "batch_size": 8, "lr": 0.02},
    "skeleton_processes": 2,  # joint and bone train at once, one process (and core) each
    # small batches so that each epoch takes several steps, and no early stop (patience = epochs)
    "cmtf": {"epochs": 40, "batch_size": 8, "patience": 40, "lr": 3e-3},
    "interfusion": {"epochs": 30, "batch_size": 4, "patience": 30},
}
DEMO_RECORD = "demo.json"  # in --out: the seed, precision and settings the folder's demo was made with


def _step(name: str):
    log.info("demo: %s", name)
    return time.perf_counter()


def run_demo(out: str | Path, seed: int = 0, runtime: Runtime | None = None,
             video_checkpoint: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Run every stage on a generated dataset under `out`.

    Args:
        runtime: where the models run (`Runtime.resolve`; None: the CPU in fp32). Its precision is
            that of the MViTv2-S and SwinFace forwards ("auto" resolves to bf16 on a GPU that
            supports it and on a CPU with Intel AMX, where it was measured 1.5x faster for the whole
            demo, benchmarks/RESULTS.md "demo"); the small skeleton and head trainings of the demo
            run in fp32, so that their recorded accuracies reproduce.
        video_checkpoint: an MViTv2-S file for the video and context tracks (None: seeded random
            weights; the tests pass a random narrow "demo" width file, which is 100x cheaper).
    Returns (where each artifact is, the summary lines: each trained model's held-out accuracy
    beside chance with n, then how the backbones ran and the stage timings in seconds).
    """
    from migfuse.data_cache.tracks import tracks_with_layout
    from migfuse.data_cache.views import default_views
    from migfuse.datasets.prepare import prepare
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions
    from migfuse.extract.report import format_summary
    from migfuse.finetune.skeleton import TrainConfig
    from migfuse.finetune.skeleton_streams import train_and_extract
    from migfuse.fuse.evaluate import evaluate
    from migfuse.fuse.export import export_scores
    from migfuse.fuse.predict import predict
    from migfuse.fuse.train import train
    from migfuse.synth import generate_dataset

    out = Path(out)
    if seed < 0:
        raise UserError(f"--seed {seed}: the seed must be 0 or more")
    runtime = runtime or Runtime()
    precision, device = str(runtime.precision), runtime.device
    open_out_folder(out, {"seed": seed, "precision": precision, "settings": json.loads(json.dumps(DEMO)),
                          "video_checkpoint": str(video_checkpoint) if video_checkpoint else None})
    log.info("demo: device %s, MViTv2-S and SwinFace in %s", device, precision)
    fp32 = replace(runtime, precision=Precision.FP32)  # the demo's small trainings (see the docstring)
    dataset, prepared, cache = out / "dataset", out / "prepared", out / "cache.zarr"
    runs = out / "runs"
    timings: dict[str, float] = {}

    t = _step("generate the dataset")
    if (dataset / "ground_truth.json").is_file():
        log.info("demo: reusing the generated dataset in %s", dataset)
    else:
        if dataset.exists():
            shutil.rmtree(dataset)  # an interrupted generation (the folder is the demo's: demo.json): start again
        generate_dataset(dataset, seed=seed, clips_per_video=DEMO["clips_per_video"], video_ids=DEMO["video_ids"],
                         workers=DEMO["generate_workers"])
    timings["generate"] = time.perf_counter() - t

    t = _step("prepare the manifest")
    prepare(dataset, prepared)
    timings["prepare"] = time.perf_counter() - t

    random = "SwinFace" if video_checkpoint else "MViTv2-S and SwinFace"
    log.warning("demo: %s run with RANDOM weights (no checkpoint); the skeleton backbone is trained", random)
    summaries = []
    t = time.perf_counter()
    # one loader worker: it decodes while the main process runs the model on both cores
    for track in tracks_with_layout("video_tokens", "context_tokens"):  # video (per clip), context (per video)
        _step(f"extract {track} tokens (MViTv2-S, {precision})")
        summaries.append(extract(track, prepared, cache, runtime, RunOptions(workers=1, batch_size=DEMO["video_batch"]),
                                 checkpoint=video_checkpoint, context_windows=DEMO["context_windows"]))
    timings["extract video+context"] = time.perf_counter() - t

    t = _step(f"train 2s-AGCN on the joint and bone streams ({DEMO['skeleton']['epochs']} epochs each, "
              f"{DEMO['skeleton_processes']} at once; -v logs every epoch), then extract their features")
    # a finished run with the same settings is reused, so its features in the cache stay valid
    skeleton_config = TrainConfig(**DEMO["skeleton"])  # on `fp32`: the demo's device, in fp32
    with _epoch_lines_only_when_verbose():
        skeleton = train_and_extract(prepared, cache, runs / "skeleton", skeleton_config,
                                     processes=DEMO["skeleton_processes"], runtime=fp32)
    summaries += [run.extract for run in skeleton.values()]
    timings["skeleton train+extract"] = time.perf_counter() - t

    t = _step(f"extract face tokens (MTCNN + SwinFace, {precision})")
    for track in tracks_with_layout("face_frames"):  # face (per clip), face_context (per context window)
        summaries.append(extract(track, prepared, cache, runtime, RunOptions(batch_size=DEMO["face_batch"]),
                                 frames=DEMO["face_frames"], context_windows=DEMO["context_windows"]))
    timings["extract face"] = time.perf_counter() - t
    for s in summaries:
        if s.failed:
            log.info("demo: %s", format_summary(s))

    t = _step("derive pooled views")
    default_views(cache)
    timings["views"] = time.perf_counter() - t

    t = _step("train CMTF (micro-gestures) and InterFusion (emotion)")
    for name in ("cmtf", "interfusion"):
        if (runs / name).exists():
            shutil.rmtree(runs / name)  # heads train in seconds: always train them again
    with _epoch_lines_only_when_verbose():  # the progress bars show the epochs
        train(cache, prepared, "mg", runs / "cmtf", head="cmtf", config=dict(DEMO["cmtf"]), runtime=fp32)
        train(cache, prepared, "emotion", runs / "interfusion", head="interfusion",
              config=dict(DEMO["interfusion"]), runtime=fp32)
    metrics = evaluate(runs / "cmtf", split="validation")
    emotion = evaluate(runs / "interfusion", split="test")
    mg_scores = predict(runs / "cmtf", "test", out=runs / "cmtf" / "test_scores.npz")
    emo_scores = predict(runs / "interfusion", "test", out=runs / "interfusion" / "test_scores.npz")
    timings["fuse"] = time.perf_counter() - t

    t = _step("export submission files")
    mg_zip = export_scores(mg_scores, prepared, fmt="miga2025", out=out / "prediction.zip")
    emo_zip = export_scores(emo_scores, prepared, fmt="emotion", out=out / "emotion.zip")
    timings["export"] = time.perf_counter() - t

    artifacts = {
        "generated dataset": dataset,
        "prepared manifest": prepared / "manifest.csv",
        "token cache (migfuse cache info)": cache,
        "skeleton backbones": runs / "skeleton",
        "CMTF run": runs / "cmtf",
        "CMTF confusion matrix (validation)": Path(metrics["files"]["confusion"]),
        "InterFusion run": runs / "interfusion",
        "MiGA 2025 submission": mg_zip.path,
        "emotion submission": emo_zip.path,
    }
    truth = held_out_truth(dataset)
    pose_ids = sorted(truth)
    results = [
        ("2s-AGCN joint stream", skeleton_accuracy(prepared, skeleton["joint"].train.best_checkpoint, skeleton_config,
                                                   "joint", truth), 1 / len(MOTIONS), "clips"),
        ("2s-AGCN bone stream", skeleton_accuracy(prepared, skeleton["bone"].train.best_checkpoint, skeleton_config,
                                                  "bone", truth), 1 / len(MOTIONS), "clips"),
        ("CMTF (micro-gestures)", scores_accuracy(mg_scores, truth, pose_ids), 1 / len(MOTIONS), "clips"),
        ("InterFusion (emotion)", (round(emotion["accuracy"] * emotion["n"]), int(emotion["n"])), 0.5, "videos"),
    ]
    lines = [f"held-out accuracy (MiGA test split, {len(pose_ids)} clips of {len(pose_ids) // DEMO['clips_per_video']} "
             f"videos, scored against the generated ground truth; chance = uniform guess among the "
             f"{len(MOTIONS)} generated gestures or Win/Lose; p = binomial P(>= correct | chance)):"]
    lines += [accuracy_line(name, correct, n, chance, unit) for name, (correct, n), chance, unit in results]
    tokens = "face tokens come from RANDOM SwinFace weights" if video_checkpoint else \
        "video and face tokens come from RANDOM MViTv2-S and SwinFace weights"
    lines.append(f"({tokens}: they carry no learned meaning; CMTF learns from its pose tracks; InterFusion, trained "
                 "on 3 videos (one held out to pick the epoch), shows the pipeline, not a model)")
    streams = []
    for name, run in skeleton.items():
        r = run.train
        streams.append(f"{name} {r.epochs_run} epochs trained now (best epoch {r.best_epoch})" if r.epochs_run
                       else f"{name} reused from {r.out} (best epoch {r.best_epoch})")
    at_once = sum(1 for run in skeleton.values() if run.train.epochs_run) > 1 and DEMO["skeleton_processes"] > 1
    lines.append(f"backbones: MViTv2-S and SwinFace forwards in {precision} on {device}; 2s-AGCN "
                 + ", ".join(streams) + (f", {DEMO['skeleton_processes']} streams at once" if at_once else ""))
    lines.append("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return artifacts, lines


def _epoch_lines_only_when_verbose() -> contextlib.AbstractContextManager:
    """Hide the trainers' per-epoch log lines (~170 in the demo) unless -v asked for debug output."""
    verbose = logging.getLogger("migfuse").getEffectiveLevel() <= logging.DEBUG
    return contextlib.nullcontext() if verbose else _logger_level("migfuse.training.loop", logging.WARNING)


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def held_out_truth(dataset: Path) -> dict[str, int]:
    """Generated label (0..31) of each clip of the MiGA test split, from `ground_truth.json`."""
    truth = json.loads((dataset / "ground_truth.json").read_text())
    return {c["clip_id"]: int(c["label"]) for v in truth["videos"].values() if v["split_miga"] == "test"
            for c in v["clips"]}


def skeleton_accuracy(prepared: Path, checkpoint: Path, config, stream: str, truth: dict[str, int]) -> tuple[int, int]:
    """(correct, n) of a trained skeleton backbone's classifier on the clips of `truth`."""
    import numpy as np
    import torch

    from migfuse.datasets.manifest import Manifest
    from migfuse.backbones.agcn import unwrap_state_dict
    from migfuse.checkpoint_file import read_checkpoint
    from migfuse.finetune.skeleton_data import VideoSkeletons
    from migfuse.finetune.skeleton import build_model

    manifest = Manifest.load(prepared)
    model = build_model(config)
    state, _ = unwrap_state_dict(read_checkpoint(checkpoint), checkpoint)  # the demo's own file: weights-only
    model.load_state_dict(state)
    model.eval()
    videos, pre = VideoSkeletons(manifest), config.preprocess()
    ids = sorted(truth)
    x = torch.from_numpy(np.stack([videos.input(manifest.clip(i), stream, pre).x for i in ids]))
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    return int(sum(int(p) == truth[i] for p, i in zip(predicted, ids))), len(ids)


def scores_accuracy(scores, truth: dict[str, int], ids: list[str]) -> tuple[int, int]:
    """(correct, n) of micro-gesture `scores` (fuse.predict) on the clips `ids` of `truth`."""
    import numpy as np

    from migfuse.datasets import classes

    names = list(scores.classes)
    row = {i: k for k, i in enumerate(scores.ids)}
    correct = sum(classes.CLASS_NAMES.index(names[int(np.argmax(scores.scores[row[i]]))]) == truth[i] for i in ids)
    return int(correct), len(ids)


def accuracy_line(name: str, correct: int, n: int, chance: float, unit: str) -> str:
    """'NAME  acc % (k/n UNIT)  chance c %  95% CI [lo, hi] %  p = ...' (Wilson interval, exact binomial tail)."""
    from math import comb, sqrt

    acc = correct / n if n else 0.0
    z = 1.96
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    p = sum(comb(n, k) * chance ** k * (1 - chance) ** (n - k) for k in range(correct, n + 1))
    return (f"  {name:<23} {acc:6.1%} ({correct}/{n} {unit})  chance {chance:.1%}  "
            f"95% CI [{max(0.0, centre - half):.0%}, {min(1.0, centre + half):.0%}]  p = {p:.2g}")


def open_out_folder(out: Path, record: dict) -> None:
    """Make `out` the demo's folder, or check that it holds the same demo.

    `record` ({"seed", "precision", "settings": DEMO, "video_checkpoint"}) is written to
    `out/demo.json` on first use. The dataset, cache and runs in the folder were made with it, so a
    rerun must match it: it then reuses them and resumes what was interrupted.

    Raises UserError (one line): `out` is a file or cannot be created; it holds other files (an
    unrelated folder, or a demo of an older migfuse); or a demo of another seed, precision or
    settings.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder (it is created if missing)")
    marker = out / DEMO_RECORD
    if marker.is_file():
        try:
            made = json.loads(marker.read_text())
        except (ValueError, UnicodeDecodeError):
            made = None
        if not isinstance(made, dict):
            raise UserError(f"{marker} is damaged (not the JSON record of a demo): delete {out} or choose another "
                            "--out folder") from None
        differ = [key for key in ("seed", "precision") if made.get(key) != record[key]]
        if differ:
            held = " ".join(f"--{key} {made.get(key)}" for key in differ)
            asked = " ".join(f"--{key} {record[key]}" for key in differ)
            raise UserError(f"{out} holds the demo of {held}: rerun with {held}, or choose another --out folder "
                            f"for {asked}")
        if made != record:
            raise UserError(f"{out} holds a demo made with other settings (another migfuse version): choose another "
                            f"--out folder or delete {out}")
        return
    if out.exists() and any(not is_leftover(p.name) for p in out.iterdir()):
        older = (out / "dataset" / "ground_truth.json").is_file()  # what a demo before demo.json left
        raise UserError(f"{out} is not empty and holds no demo{' made by this migfuse version' if older else ''} "
                        f"(no {DEMO_RECORD}): choose another --out folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the demo folder {out} ({e.strerror}): choose another --out folder") from None
    write_text(marker, json.dumps(record, indent=1) + "\n")
