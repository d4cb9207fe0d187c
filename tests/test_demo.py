"""`migfuse demo` runs every stage end to end, and its pose-driven models learn the generated gestures."""
from __future__ import annotations

import json
import re
import zipfile

import pytest

from migfuse import demo as demo_module
from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError
from migfuse.runtime import Precision, Runtime


@pytest.fixture(scope="module")
def narrow_mvit(tmp_path_factory):
    """A random MViTv2-S file of the narrow "demo" width (same token layout, 100x cheaper), written as
    `backbone train video` writes one: the video tokens are random in the demo anyway."""
    import torch

    from migfuse.backbones.mvit import FINETUNE_KIND, build_mvit

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mvit") / "narrow.pt"
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo", "run_id": "test"}},
                "state_dict": build_mvit("demo", 32).state_dict()}, path)
    return path


def test_the_demo_runs_every_stage_and_its_pose_driven_models_beat_twice_chance(tmp_path, narrow_mvit):
    """The demo's own settings and dataset (seed 0): 16 held-out clips, chance 1/8. Only the MViTv2-S
    file differs (narrow and random instead of full and random), to keep the suite fast."""
    artifacts, summary = demo_module.run_demo(tmp_path / "demo", video_checkpoint=narrow_mvit)
    cache = TokenCache(artifacts["token cache (migfuse cache info)"])
    for group in ("video/mvit_v2_s", "context/mvit_v2_s", "joint/agcn", "bone/agcn", "face/swinface",
                  "face_context/swinface"):
        g = cache.group(group)
        assert len(g.done_ids()) == len(g.ids) > 0, group
    truth = demo_module.held_out_truth(tmp_path / "demo" / "dataset")
    assert len(truth) == 16 and sorted(truth.values()) == sorted(list(demo_module.MOTIONS) * 2)  # balanced
    with zipfile.ZipFile(artifacts["MiGA 2025 submission"]) as z:
        rows = z.read("prediction.csv").decode().splitlines()
    assert rows[0] == "Id,Target" and len(rows) == 1 + 16  # the 2 generated test videos, 8 clips each
    assert artifacts["CMTF confusion matrix (validation)"].is_file()
    with zipfile.ZipFile(artifacts["emotion submission"]) as z:
        assert z.namelist() == ["prediction.csv"]
    # every trained model: accuracy (correct/n), chance, interval, p. The pose-driven ones clearly beat
    # chance: at least twice chance (4/16) and binomial p < 0.01 (which takes 6/16)
    text = "\n".join(summary)
    for model, n, unit, chance, pose_driven in (("joint stream", 16, "clips", "12.5%", True),
                                                ("bone stream", 16, "clips", "12.5%", True),
                                                ("CMTF", 16, "clips", "12.5%", True),
                                                ("InterFusion", 2, "videos", "50.0%", False)):
        m = re.search(rf"{model}.* \d+\.\d% \((\d+)/{n} {unit}\)  chance {re.escape(chance)}  95% CI "
                      rf"\[\d+%, \d+%\]  p = (\S+)", text)
        assert m, model
        if pose_driven:
            assert int(m.group(1)) >= 2 * n / 8 and float(m.group(2)) < 0.01, (model, m.group(1), m.group(2))
    assert re.search(r"backbones: MViTv2-S and SwinFace forwards in (fp32|bf16) on cpu; 2s-AGCN joint 50 epochs "
                     r"trained now \(best epoch \d+\), bone 50 epochs trained now \(best epoch \d+\), 2 streams at "
                     r"once$", text, re.M)
    assert summary[-1].startswith("timings: generate ") and "extract video+context" in summary[-1]
    assert "(face tokens come from RANDOM SwinFace weights: " in text  # the narrow MViT file is not called random
    # a rerun reuses the dataset, the skeleton runs and the cache (extraction resumes) and trains the
    # heads again, to the same submission
    again, second = demo_module.run_demo(tmp_path / "demo", video_checkpoint=narrow_mvit)
    assert again["MiGA 2025 submission"].read_bytes() == artifacts["MiGA 2025 submission"].read_bytes()
    assert second[:5] == summary[:5]
    assert re.search(r"2s-AGCN joint reused from \S+ \(best epoch \d+\), bone reused from \S+ \(best epoch \d+\)$",
                     "\n".join(second), re.M)
    # the folder holds tokens of one precision and data of one seed: others are refused up front, in one line
    made = re.search(r"forwards in (fp32|bf16)", text).group(1)
    other = "fp32" if made == "bf16" else "bf16"
    with pytest.raises(UserError, match=rf"holds the demo of --precision {made}: rerun with --precision {made}, or "
                                        rf"choose another --out folder for --precision {other}"):
        demo_module.run_demo(tmp_path / "demo", runtime=Runtime(precision=Precision(other)),
                             video_checkpoint=narrow_mvit)
    with pytest.raises(UserError, match="holds the demo of --seed 0: rerun with --seed 0"):
        demo_module.run_demo(tmp_path / "demo", seed=1, video_checkpoint=narrow_mvit)


def test_accuracy_line_gives_accuracy_chance_interval_and_binomial_p():
    line = demo_module.accuracy_line("CMTF (micro-gestures)", 8, 16, 0.125, "clips")
    # Wilson 95% interval of 8/16 is [28%, 72%]; P(X >= 8 | n=16, p=1/8) = 0.0003
    assert line == "  CMTF (micro-gestures)    50.0% (8/16 clips)  chance 12.5%  95% CI [28%, 72%]  p = 0.0003"


def test_demo_refuses_a_folder_that_is_not_a_demo_and_deletes_nothing(tmp_path):
    (tmp_path / "mine.txt").write_text("do not delete")
    with pytest.raises(UserError, match=r"is not empty and holds no demo \(no demo.json\): "
                                        r"choose another --out folder"):
        demo_module.run_demo(tmp_path)
    # a folder of the user's that happens to have a dataset/ (the demo's own subfolder name)
    (tmp_path / "mine.txt").unlink()
    (tmp_path / "dataset" / "my_videos").mkdir(parents=True)
    (tmp_path / "dataset" / "my_videos" / "important.txt").write_text("precious")
    with pytest.raises(UserError, match="is not empty and holds no demo"):
        demo_module.run_demo(tmp_path)
    assert (tmp_path / "dataset" / "my_videos" / "important.txt").read_text() == "precious"


def test_demo_refuses_a_folder_left_by_an_older_migfuse_or_other_settings(tmp_path):
    (tmp_path / "old" / "dataset").mkdir(parents=True)  # before demo.json existed
    (tmp_path / "old" / "dataset" / "ground_truth.json").write_text('{"videos": {"0026": {"clips": [{}]}}}')
    with pytest.raises(UserError, match=r"holds no demo made by this migfuse version \(no demo.json\): choose another"):
        demo_module.run_demo(tmp_path / "old")
    (tmp_path / "other").mkdir()
    record = {"seed": 0, "precision": "fp32", "video_checkpoint": None,  # run_demo's default runtime: CPU, fp32
              "settings": {**demo_module.DEMO, "clips_per_video": 3}}
    (tmp_path / "other" / "demo.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="holds a demo made with other settings"):
        demo_module.run_demo(tmp_path / "other")
    record.update(seed=1, precision="fp8")  # two mismatches: both named at once
    (tmp_path / "other" / "demo.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"holds the demo of --seed 1 --precision fp8: rerun with --seed 1 --precision "
                                        r"fp8, or choose another --out folder for --seed 0 --precision"):
        demo_module.run_demo(tmp_path / "other")
    for damaged in ("", "[1, 2]", "{not json"):
        (tmp_path / "other" / "demo.json").write_text(damaged)
        with pytest.raises(UserError, match=r"demo.json is damaged \(not the JSON record of a demo\): delete"):
            demo_module.run_demo(tmp_path / "other")


def test_demo_input_errors_are_one_line_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    (tmp_path / "a_file").write_text("x")
    for args, message in ((["--out", str(tmp_path / "a_file")], "a file is in the way: name a folder"),
                          (["--out", str(tmp_path / "a_file" / "sub")], "cannot create the demo folder"),
                          (["--out", str(tmp_path / "d"), "--device", "tpu"], "--device 'tpu' is not auto, cpu"),
                          (["--out", str(tmp_path / "d"), "--precision", "fp8"],
                           "Invalid value for '--precision': 'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'"),
                          (["--out", str(tmp_path / "d"), "--seed", "-1"], "--seed -1: the seed must be 0 or more"),
                          (["--out", str(tmp_path / "d"), "--device", ""], "--device '' is not auto, cpu")):
        r = CliRunner().invoke(app, ["demo", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output  # one line, no usage block, no traceback
    assert not (tmp_path / "d").exists()  # refused before the demo folder was made
