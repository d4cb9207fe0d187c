"""`migfuse demo`: the whole pipeline on a generated dataset, in a few minutes on a CPU.

generate -> prepare -> extract (video, context, skeleton joint+bone, face clip+context)
-> views -> CMTF (micro-gestures) + InterFusion (emotion) -> predict -> MiGA 2025 + emotion zips.

Every backbone runs with seeded RANDOM weights (no checkpoint can be downloaded here), except the
skeleton backbone, which the demo trains. So the numbers show that the pipeline runs end to end,
not how well a real model does. Re-running the demo reuses what is already there: the dataset, the
prepared folder and the cache (extraction resumes); the heads are trained again.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from migfuse.errors import UserError

log = logging.getLogger(__name__)

# Small settings that keep the demo to a few minutes on 2 CPU cores.
DEMO = {
    "clips_per_video": 6,
    "context_windows": 2,  # MViT windows per video for the emotion context track
    "face_frames": 4,  # face frames per clip and per context window
    "face_batch": 8,  # SwinFace runs on full (padded) batches: keep them small on a CPU
    "skeleton": {"epochs": 6, "base_channels": 8, "length": 32, "batch_size": 8, "lr": 0.02},
    "fuse_epochs": 8,
}


def _step(name: str):
    log.info("demo: %s", name)
    return time.perf_counter()


def run_demo(out: str | Path, videos: int = 8, seed: int = 0, device: str = "cpu") -> dict[str, Path]:
    """Run every stage on a generated dataset under `out`; return (and log) where each artifact is."""
    from migfuse.data_cache.prepare import prepare
    from migfuse.data_cache.views import default_views
    from migfuse.extract.face.extractor import SCOPES, extract_face
    from migfuse.extract.runner import format_summary
    from migfuse.extract.skeleton.pipeline import train_and_extract
    from migfuse.extract.skeleton.train import TrainConfig
    from migfuse.extract.video import extract_track
    from migfuse.fuse.evaluate import evaluate
    from migfuse.fuse.export import export_scores
    from migfuse.fuse.predict import predict
    from migfuse.fuse.train import train
    from migfuse.synth import generate_dataset

    out = Path(out)
    check_out_folder(out)
    dataset, prepared, cache = out / "dataset", out / "prepared", out / "cache.zarr"
    runs = out / "runs"
    timings: dict[str, float] = {}

    t = _step("generate the dataset")
    if (dataset / "ground_truth.json").is_file():
        log.info("demo: reusing the generated dataset in %s", dataset)
    else:
        if dataset.exists():
            shutil.rmtree(dataset)  # an interrupted generation: start it again
        generate_dataset(dataset, videos=videos, seed=seed, clips_per_video=DEMO["clips_per_video"])
    timings["generate"] = time.perf_counter() - t

    t = _step("prepare the manifest")
    prepare(dataset, prepared)
    timings["prepare"] = time.perf_counter() - t

    log.warning("demo: MViTv2-S and SwinFace run with RANDOM weights (no checkpoint); the skeleton backbone is trained")
    summaries = []
    t = _step("extract video tokens (MViTv2-S)")
    summaries.append(extract_track("video", prepared, cache, device=device, workers=1))
    t2 = _step("extract context tokens (MViTv2-S)")
    summaries.append(extract_track("context", prepared, cache, device=device, workers=1,
                                   context_windows=DEMO["context_windows"]))
    timings["extract video+context"] = time.perf_counter() - t

    t = _step("train the skeleton backbone and extract joint and bone features (2s-AGCN)")
    skeleton = train_and_extract(prepared, cache, runs / "skeleton", TrainConfig(device=device, **DEMO["skeleton"]))
    summaries += [run.extract for run in skeleton.values()]
    timings["skeleton train+extract"] = time.perf_counter() - t

    t = _step("extract face tokens (MTCNN + SwinFace)")
    for scope in SCOPES:  # clip -> face, context -> face_context (the track table's face tracks)
        summaries.append(extract_face(prepared, cache, scope=scope, device=device, frames=DEMO["face_frames"],
                                      context_windows=DEMO["context_windows"], batch_size=DEMO["face_batch"]))
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
    config = {"epochs": DEMO["fuse_epochs"]}
    train(cache, prepared, "mg", runs / "cmtf", head="cmtf", config=config)
    train(cache, prepared, "emotion", runs / "interfusion", head="interfusion", config=config)
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
    log.info("demo: CMTF validation top-1 %.1f%%; InterFusion test accuracy %.1f%% (random video and face "
             "weights: this shows the pipeline, not a model)", 100 * metrics["top1"], 100 * emotion["accuracy"])
    log.info("demo: timings %s", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return artifacts


def check_out_folder(out: Path) -> None:
    """Refuse an --out folder that holds something other than an earlier demo."""
    if out.exists() and any(out.iterdir()) and not (out / "dataset").exists():
        raise UserError(f"{out} is not empty and holds no earlier demo: choose another --out folder")
