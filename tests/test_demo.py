"""`migfuse demo` runs every stage end to end, and its pose-driven models learn the generated gestures."""
from __future__ import annotations

import re
import zipfile

import pytest

from migfuse import demo as demo_module
from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError


def test_demo_runs_every_stage_and_writes_the_submissions(tmp_path, monkeypatch):
    # shrunk: one clip per video, one context window, few epochs
    small = {**demo_module.DEMO, "clips_per_video": 1, "face_frames": 2, "video_batch": 2,
             "cmtf": {**demo_module.DEMO["cmtf"], "epochs": 2}, "interfusion": {**demo_module.DEMO["interfusion"], "epochs": 2},
             "face_batch": 4, "skeleton": {**demo_module.DEMO["skeleton"], "epochs": 1}}
    monkeypatch.setattr(demo_module, "DEMO", small)
    artifacts, summary = demo_module.run_demo(tmp_path / "demo")
    cache = TokenCache(artifacts["token cache (migfuse cache info)"])
    for group in ("video/mvit_v2_s", "context/mvit_v2_s", "joint/agcn", "bone/agcn", "face/swinface",
                  "face_context/swinface"):
        g = cache.group(group)
        assert len(g.done_ids()) == len(g.ids) > 0, group
    with zipfile.ZipFile(artifacts["MiGA 2025 submission"]) as z:
        rows = z.read("prediction.csv").decode().splitlines()
    assert rows[0] == "Id,Target" and len(rows) == 1 + 2  # the 2 generated test videos, one clip each
    assert artifacts["CMTF confusion matrix (validation)"].is_file()
    with zipfile.ZipFile(artifacts["emotion submission"]) as z:
        assert z.namelist() == ["prediction.csv"]
    # every trained model: accuracy, (correct/n), chance; then the stage timings
    text = "\n".join(summary)
    for model, n, unit, chance in (("joint stream", 2, "clips", "12.5%"), ("bone stream", 2, "clips", "12.5%"),
                                   ("CMTF", 2, "clips", "12.5%"), ("InterFusion", 2, "videos", "50.0%")):
        assert re.search(rf"{model}.* \d+\.\d% \(\d/{n} {unit}\)  chance {re.escape(chance)}  95% CI", text), model
    assert summary[-1].startswith("timings: generate ") and "extract video+context" in summary[-1]
    assert "RANDOM MViTv2-S and SwinFace weights" in text
    # a rerun reuses the dataset and the cache (extraction resumes) and trains the heads again
    again, _ = demo_module.run_demo(tmp_path / "demo")
    assert again["MiGA 2025 submission"].read_bytes() == artifacts["MiGA 2025 submission"].read_bytes()


def test_the_demos_skeleton_streams_beat_twice_chance_on_the_held_out_test_videos(tmp_path):
    """The demo's own dataset and skeleton settings (seed 0): 16 held-out clips, chance 1/8."""
    from migfuse.data_cache.prepare import prepare
    from migfuse.extract.skeleton.train import TrainConfig, train_skeleton
    from migfuse.synth import generate_dataset

    dataset = generate_dataset(tmp_path / "dataset", clips_per_video=demo_module.DEMO["clips_per_video"],
                               video_ids=demo_module.DEMO["video_ids"], progress=False, workers=2)
    prepare(dataset, tmp_path / "prepared")
    truth = demo_module.held_out_truth(dataset)
    assert len(truth) == 16 and sorted(truth.values()) == sorted(list(demo_module.MOTIONS) * 2)  # balanced
    config = TrainConfig(**demo_module.DEMO["skeleton"])
    for stream in ("joint", "bone"):
        result = train_skeleton(tmp_path / "prepared", tmp_path / stream, TrainConfig(**{**config.__dict__, "stream": stream}))
        correct, n = demo_module.skeleton_accuracy(tmp_path / "prepared", result.best_checkpoint, config, stream, truth)
        assert n == 16 and correct / n >= 2 / len(demo_module.MOTIONS), (stream, correct)


def test_accuracy_line_gives_accuracy_chance_interval_and_binomial_p():
    line = demo_module.accuracy_line("CMTF (micro-gestures)", 8, 16, 0.125, "clips")
    # Wilson 95% interval of 8/16 is [28%, 72%]; P(X >= 8 | n=16, p=1/8) = 0.0003
    assert line == "  CMTF (micro-gestures)    50.0% (8/16 clips)  chance 12.5%  95% CI [28%, 72%]  p = 0.0003"


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("do not delete")
    with pytest.raises(UserError, match="holds no earlier demo"):
        demo_module.run_demo(tmp_path)


def test_demo_refuses_a_folder_left_by_a_demo_with_other_settings(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "ground_truth.json").write_text('{"videos": {"0026": {"clips": [{}]}}}')
    with pytest.raises(UserError, match="holds a demo made with other settings"):
        demo_module.run_demo(tmp_path)
