"""Write a small generated iMiGUE-like dataset in one of the real on-disk layouts.

Each video is a seated figure (320x240, 25 fps, h264) that performs one micro-gesture per clip,
separated by idle stretches, with a few frames where nobody is in view. The matching 137-point
OpenPose skeleton is written in the layout's own format, and the labels where the layout keeps them.

Video ids are REAL iMiGUE ids chosen so that every split has members (MiGA train / validation /
test, emotion train / test, Win and Lose on both sides): `migfuse data prepare` then derives every
split exactly as for the real data, and the subject and Win/Lose of each video are the real ones
(`migfuse.datasets.video_facts`). `ground_truth.json` beside the data lists what was generated.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from migfuse.atomic_write import atomic_path, open_atomic, write_text
from migfuse.datasets import classes
from migfuse.datasets.video_facts import video_facts
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar
from migfuse.synth.pose import FPS, MOTIONS, Action, pose_sequence
from migfuse.synth.render import render_frame

log = logging.getLogger(__name__)

LAYOUTS = ("miga2025", "oulu", "miga2023")

# Real video ids in the order they are used; the first 8 cover every split (see module docstring):
# 26 train/emo-train/Win, 46 train/emo-train/Lose, 1 validation/emo-train/Win, 54 test/emo-test/Lose,
# 71 test/emo-test/Win, 27 train/emo-train/Win, 47 train/emo-train/Lose, 105 test/emo-train/Lose.
VIDEO_IDS = (26, 46, 1, 54, 71, 27, 47, 105, 49, 12, 110, 144, 48, 57, 53, 63)
_SKIN = np.array([224, 180, 150], np.uint8)


def _split_folder(video_id: int) -> str:
    subject, _ = video_facts(video_id)
    return classes.split_miga(video_id, 0, subject)


def _schedule(rng: np.random.Generator, clips: int) -> tuple[list[Action], range, int]:
    """Clip actions, the frames where the person is absent, and the video length."""
    labels = list(rng.permutation(sorted(MOTIONS)))
    labels = [int(labels[i % len(labels)]) for i in range(clips)]
    t = int(rng.integers(15, 25))
    actions, absent = [], range(0)
    for k, label in enumerate(labels):
        length = int(rng.integers(25, 76))  # 1-3 s
        actions.append(Action(label, t, t + length - 1))
        gap = int(rng.integers(12, 22))
        if k == 1:  # one idle stretch with nobody in view: exercises masks downstream
            absent = range(t + length + 3, t + length + 9)
            gap = max(gap, 12)
        t += length + gap
    return actions, absent, t + 10


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _openpose_json(points: np.ndarray) -> dict:
    """One frame of OpenPose 1.3 JSON (empty `people` when nobody is there)."""
    if not points[:, 2].any():
        return {"version": 1.3, "people": []}

    def flat(a: np.ndarray) -> list[float]:
        return [round(float(v), 3) for v in a.reshape(-1)]

    return {"version": 1.3, "people": [{
        "person_id": [-1],
        "pose_keypoints_2d": flat(points[0:25]),
        "face_keypoints_2d": flat(points[25:95]),
        "hand_left_keypoints_2d": flat(points[95:116]),
        "hand_right_keypoints_2d": flat(points[116:137]),
        "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [], "hand_right_keypoints_3d": [],
    }]}


def _write_label_csv(path: Path, actions: list[Action], known: bool) -> None:
    with open_atomic(path, "w", newline="") as f:
        w = csv.writer(f)
        for a in actions:
            # test label files of the challenge carry a placeholder class
            w.writerow([classes.index_to_raw(a.label) if known else 0, a.start, a.end])


def _miga_dirs(root: Path, layout: str, vid4: str, split: str) -> tuple[Path, Path]:
    """(skeleton/label folder, mp4 folder) of one video in a MiGA layout."""
    if layout == "miga2025":
        if split == "test":
            return root / "imigue_data_phase2" / "imigue_skeleton_test" / vid4, root / "imigue_rgb_phase2" / vid4
        sk = "imigue_skeleton_validate" if split == "validation" else "imigue_skeleton_train"
        rgb = "validation_data" if split == "validation" else "train_data"
        return root / "imigue_data_phase1" / "datasets" / sk / vid4, root / "imigue_rgb_phase1" / rgb / vid4
    folder = {"validation": "imigue_skeleton_validate",
              "test": "imigue_skeleton_test"}.get(split, "imigue_skeleton_train")
    return root / folder / vid4, root / folder / vid4


def _write_video(root: Path, layout: str, video_id: int, seed: int, clips_per_video: int) -> tuple[str, dict, list]:
    """Render, encode and write one video with its skeleton and labels.

    Returns (vid4, its ground-truth entry, its rows of the Oulu label table). A top-level function
    so that a process pool can run it: videos are independent (each has its own seeded rng).
    """
    rng = np.random.default_rng([seed, video_id])
    vid4 = f"{video_id:04d}"
    subject, win_lose = video_facts(video_id)
    actions, absent, n_frames = _schedule(rng, clips_per_video)
    points = pose_sequence(n_frames, actions, win=win_lose == "Win", absent=absent, rng=rng)
    background = rng.integers(90, 150, 3).astype(np.uint8)
    shirt = rng.integers(20, 90, 3).astype(np.uint8)
    gain = 1.0 if win_lose == "Win" else 0.85
    frames = np.stack([render_frame(p, background, shirt, _SKIN, gain) for p in points])
    split = _split_folder(video_id)
    entry = {
        "subject": subject, "win_lose": win_lose, "n_frames": n_frames, "split_miga": split,
        "absent_frames": [absent.start, absent.stop - 1],
        "clips": [{"clip_id": f"{vid4}_{k}", "label": a.label, "raw_class": classes.index_to_raw(a.label),
                   "start_frame": a.start, "end_frame": a.end} for k, a in enumerate(actions)],
    }
    oulu_rows = []
    if layout == "oulu":
        _write_mp4(root / "videos" / f"{video_id}.mp4", frames)
        folder = root / "Data" / "skeleton" / "raw" / str(video_id)
        for t, p in enumerate(points):  # hundreds of small files: renamed whole, not synced one by one
            write_text(folder / f"{video_id}_{t:012d}_keypoints.json", json.dumps(_openpose_json(p)), sync=False)
        for k, a in enumerate(actions):
            oulu_rows.append([video_id, k + 1, f"{a.start / FPS:.2f}", a.start, f"{a.end / FPS:.2f}", a.end,
                              classes.index_to_raw(a.label), subject, "M", "synthetic", win_lose])
    else:
        from migfuse.datasets.layouts.skeletons import write_light_hand_csv, write_openpose_xlsx

        skel_dir, mp4_dir = _miga_dirs(root, layout, vid4, split)
        _write_label_csv(skel_dir / f"{vid4}_label.csv", actions, known=split != "test")
        if layout == "miga2025":
            write_openpose_xlsx(skel_dir / f"{vid4}_openpose.xlsx", points)
        else:
            write_light_hand_csv(skel_dir / f"{vid4}_light_hand.csv", points)
        _write_mp4(mp4_dir / f"{vid4}.mp4", frames)
    return vid4, entry, oulu_rows


def generate_dataset(out: str | Path, layout: str = "miga2025", videos: int = 8, seed: int = 0,
                     clips_per_video: int = 8, progress: bool = True, *,
                     video_ids: tuple[int, ...] | None = None, workers: int = 1) -> Path:
    """Write a generated dataset into `out` and return `out`.

    Args:
        layout: "miga2025" (default), "oulu" or "miga2023".
        videos: how many videos (1..16); the first 8 cover every split.
        seed: the same seed gives the same labels, skeletons and decoded frames.
        clips_per_video: micro-gesture clips per video (classes cycle through `MOTIONS`).
        video_ids: real iMiGUE ids to generate instead of the first `videos` of `VIDEO_IDS`
            (e.g. the demo's, which hold out more validation videos).
        workers: processes that render and encode videos at once (the output is the same for any
            number: each video has its own seeded generator).
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    if video_ids is None:
        if not 1 <= videos <= len(VIDEO_IDS):
            raise UserError(f"--videos must be between 1 and {len(VIDEO_IDS)} (got {videos})")
        video_ids = VIDEO_IDS[:videos]
    if clips_per_video < 1:
        raise UserError(f"--clips-per-video must be at least 1 (got {clips_per_video})")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} is not empty: choose a new --out folder "
                        "(generated data is never mixed with other files)")
    root.mkdir(parents=True, exist_ok=True)
    truth: dict = {"layout": layout, "seed": seed, "fps": FPS, "videos": {}}
    oulu_rows = []
    jobs = [(root, layout, int(v), seed, clips_per_video) for v in video_ids]
    bar = progress_bar(total=len(jobs), desc="generating videos", unit="video", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        from migfuse.worker_pool import run_tasks

        results = []
        for r in run_tasks(_write_video, jobs, workers):
            results.append(r)
            bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_write_video(*job))
            bar.update()
    bar.close()
    for vid4, entry, rows in results:  # in video_ids order whatever the pool did
        truth["videos"][vid4] = entry
        oulu_rows += rows
    if layout == "oulu":
        labels = root / "Label" / "labels_20200831.csv"
        with open_atomic(labels, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame", "class",
                        "subject_id", "subject_gender", "subject_nationality", "win_or_lose"])
            w.writerows(oulu_rows)
    write_text(root / "ground_truth.json", json.dumps(truth, indent=1))
    log.info("generated %d videos (%s layout) in %s", len(jobs), layout, root)
    return root
