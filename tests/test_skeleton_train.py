"""Preprocessing rules, training (learning, resume, errors) and extraction failures on generated skeletons."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.backbones.graphs import get_layout
from migfuse.extract.skeleton.preprocess import PreprocessConfig, joints, sample_indices
from migfuse.synth.skeletons import make_toy_dataset
from migfuse.finetune.skeleton import DEFAULTS, TrainConfig, build_model, train_skeleton
from migfuse.training.recipe import class_weights


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- preprocessing ----------------------------------------------------------------------------------
def _body(t: int) -> np.ndarray:
    """t frames of a still body: neck (100, 200), shoulders 50 px apart, everything else missing."""
    s = np.zeros((t, 137, 3), np.float32)
    s[:, 1] = (100, 200, 0.9)
    s[:, 2] = (75, 200, 0.8)
    s[:, 5] = (125, 200, 0.7)
    return s


def test_normalisation_centres_on_the_neck_and_scales_by_shoulder_width():
    lay = get_layout("imigue")
    x = joints(_body(10), None, lay, PreprocessConfig(length=5)).x[..., 0]  # (3, 5, 55)
    node = {n: i for i, n in enumerate(lay.nodes)}
    np.testing.assert_allclose(x[:, :, node["neck"]].T, [[0, 0, 0.9]] * 5, rtol=1e-6)
    np.testing.assert_allclose(x[:, :, node["r_shoulder"]].T, [[-0.5, 0, 0.8]] * 5, rtol=1e-6)
    np.testing.assert_allclose(x[:, :, node["l_shoulder"]].T, [[0.5, 0, 0.7]] * 5, rtol=1e-6)
    assert not x[:, :, node["l_hand_wrist"]].any()  # missing points are exactly 0 (confidence 0 too)


def test_missing_frames_hold_the_nearest_pose_with_zero_confidence_and_never_nan():
    lay = get_layout("imigue")
    s = _body(8)
    s[:, 1, 0] += np.arange(8) * 10  # the neck moves right 10 px a frame
    s[2:5] = 0.0  # no person in frames 2-4
    s[6, 3] = np.nan  # a corrupt value
    mask = np.ones(8, bool)
    mask[7] = False  # the reader found no person in frame 7
    ci = joints(s, mask, lay, PreprocessConfig(length=8))
    neck = ci.x[:, :, 1, 0]  # (3, 8)
    assert ci.person_frames == 4 and ci.frames == 8 and np.isfinite(ci.x).all()
    # frames 2, 3 copy frame 1 (ties go to the earlier frame), frame 4 copies 5, frame 7 copies 6
    np.testing.assert_array_equal(neck[0, [2, 3, 4, 7]], neck[0, [1, 1, 5, 6]])
    np.testing.assert_array_equal(neck[2], np.float32([0.9, 0.9, 0, 0, 0, 0.9, 0.9, 0]))
    empty = joints(np.zeros((5, 137, 3), np.float32), None, lay, PreprocessConfig(length=4))
    assert empty.person_frames == 0 and not empty.x.any() and empty.x.shape == (3, 4, 55, 1)


def test_resampling_takes_the_middle_of_equal_segments():
    np.testing.assert_array_equal(sample_indices(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(sample_indices(3, 6), [0, 0, 1, 1, 2, 2])
    rnd = sample_indices(100, 4, np.random.default_rng(0))
    assert all(25 * i <= r < 25 * (i + 1) for i, r in enumerate(rnd))


def test_reference_layout_without_openpose_points_is_refused():
    with pytest.raises(UserError, match="layout 'ntu-25' cannot be read from iMiGUE's 137 OpenPose points"):
        joints(_body(3), None, get_layout("ntu-25"), PreprocessConfig(layout="ntu-25"))


def test_class_weights_favour_rare_classes():
    w = class_weights(np.array([0] * 16 + [1] * 4 + [31] * 1), 32, power=0.5).numpy()  # the skeleton's power
    np.testing.assert_allclose(w[[0, 1, 31]] / w[0], [1.0, 2.0, 4.0])
    assert w[2] == 0 and np.isclose(w[[0, 1, 31]].mean(), 1.0)


def test_each_default_is_written_once_in_train_config():
    assert DEFAULTS == dataclasses.asdict(TrainConfig())
    assert DEFAULTS["balance"] == "loss" and "device" not in DEFAULTS and "precision" not in DEFAULTS


# ----- training ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), classes=4, videos=6, clips_per_video=12, seed=0).root


def test_short_cpu_training_beats_chance_on_held_out_videos(toy, tmp_path):
    """4 classes (chance 25%); 24 clips of 2 unseen videos. The bar is 50%: by chance, 12 or more of 24
    right has probability < 0.001, and the classes differ only by motion (body size and place vary)."""
    cfg = TrainConfig(epochs=6, base_channels=8, length=24, batch_size=8, lr=0.02)
    res = train_skeleton(toy, tmp_path / "run", cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert res.best_top1 == max(r["val_top1"] for r in rows) >= 0.5, rows
    assert rows[res.best_epoch - 1]["val_top5"] == 1.0  # only 4 classes are ever trained
    meta = torch.load(res.best_checkpoint, weights_only=True)["meta"]["migfuse"]
    assert meta["epoch"] == res.best_epoch and meta["layout"] == "imigue" and meta["stream"] == "joint"
    assert meta["split"] == "split_miga train / validation" and meta["train_clips"] == 48 and meta["val_clips"] == 24
    assert meta["preprocess"]["length"] == 24 and meta["seed"] == 0


def test_resume_continues_exactly_where_it_stopped(toy, tmp_path, monkeypatch):
    import migfuse.finetune.skeleton as train_module

    cfg = dict(base_channels=4, length=16, batch_size=16, lr=0.02, stream="bone", arch="aagcn", balance="sampler")
    real_epoch, calls = train_module._epoch, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # train + val per epoch: the 5th call is epoch 3's training
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    monkeypatch.setattr(train_module, "_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=3, **cfg))
    monkeypatch.setattr(train_module, "_epoch", real_epoch)
    assert len(rows("a")) == 2
    resumed = train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=3, **cfg))
    straight = train_skeleton(toy, tmp_path / "b", TrainConfig(epochs=3, **cfg))
    assert resumed.epochs_run == 1 and straight.epochs_run == 3
    assert rows("a") == rows("b") and len(rows("a")) == 3
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same command again has nothing left to do; more --epochs extend the run
    assert train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=3, **cfg)).epochs_run == 0
    assert train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=4, **cfg)).epochs_run == 1
    assert [r["epoch"] for r in rows("a")] == [1, 2, 3, 4]
    with pytest.raises(UserError) as e:
        train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=4, **{**cfg, "lr": 0.1}))
    assert "\n" not in str(e.value) and "holds a run with other settings (lr=0.02, not 0.1)" in str(e.value)
    assert train_skeleton(toy, tmp_path / "a", TrainConfig(epochs=1, **{**cfg, "lr": 0.1}), overwrite=True
                          ).epochs_run == 1


def test_a_run_folder_written_before_device_and_precision_became_options_resumes(toy, tmp_path, caplog):
    """config.json of an earlier release: "device" and "precision" among the settings, balance "weights"
    (also in the provenance). The run resumes on the runtime it is given, and records that runtime."""
    cfg = dict(base_channels=4, length=16, batch_size=16, lr=0.02)
    train_skeleton(toy, tmp_path / "r", TrainConfig(epochs=1, **cfg))
    path = tmp_path / "r" / "config.json"
    doc = json.loads(path.read_text())
    assert doc["run"]["provenance"]["compute"] == {"device": "cpu", "precision": "fp32"}
    doc.update(device="auto", precision="auto", balance="weights")
    doc["run"]["provenance"]["balance"] = "weights"
    del doc["run"]["provenance"]["compute"]
    path.write_text(json.dumps(doc))
    res = train_skeleton(toy, tmp_path / "r", TrainConfig(epochs=2, **cfg))
    assert res.epochs_run == 1 and [h["epoch"] for h in res.history] == [1, 2]
    assert sum("earlier release" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1
    doc = json.loads(path.read_text())
    assert "device" not in doc and doc["balance"] == "loss"
    assert doc["run"]["provenance"]["compute"] == {"device": "cpu", "precision": "fp32"}


def test_an_old_balance_word_in_a_settings_file_is_read_and_an_unknown_one_refused(tmp_path):
    from migfuse.finetune.skeleton import resolve_config

    (tmp_path / "sk.json").write_text('{"balance": "weights", "device": "cuda"}')
    assert resolve_config(tmp_path / "sk.json").balance == "loss"
    with pytest.raises(UserError, match="balance must be one of loss, sampler, none, not 'oversample'"):
        resolve_config(sets=["balance=oversample"])
    with pytest.raises(UserError, match="--precision fp16: the trainers run in fp32 or bf16"):
        from migfuse.runtime import Precision, Runtime

        train_skeleton(tmp_path, tmp_path / "run", TrainConfig(), runtime=Runtime(precision=Precision.FP16))


def test_bad_settings_are_one_line_errors(toy, tmp_path):
    with pytest.raises(UserError, match="unknown --stream 'joints': choose joint or bone"):
        train_skeleton(toy, tmp_path, TrainConfig(stream="joints"))
    with pytest.raises(UserError, match="layout 'ntu-25' cannot be read"):
        train_skeleton(toy, tmp_path, TrainConfig(layout="ntu-25"))
    with pytest.raises(UserError, match="no PREPARED folder at"):
        train_skeleton(tmp_path / "nothing", tmp_path, TrainConfig())


# ----- extraction failures -----------------------------------------------------------------------------
def test_extraction_records_missing_skeletons_and_absent_people(toy, tmp_path):
    from migfuse.data_cache.store import TokenCache
    from migfuse.extract.entry import extract

    m = Manifest.load(toy)
    m.videos["9001"].skeleton = ""  # like videos 347/348: an empty skeleton file
    skel, mask = (np.array(a) for a in m.skeleton("9000"))
    c0 = m.clip("9000_0")
    mask[c0.start_frame:c0.end_frame + 1] = False  # nobody detected during clip 9000_0
    m.clip("9000_1").end_frame = m.clip("9000_1").start_frame = len(skel) + 5  # past the end of the file
    m.save(tmp_path / "prep")
    shutil.copytree(toy / "skeletons", tmp_path / "prep" / "skeletons")
    np.save(tmp_path / "prep" / "skeletons" / "9000.mask.npy", mask)
    cfg = TrainConfig(stream="bone", base_channels=4, length=16)
    meta = {"migfuse": {"arch": "agcn", "stream": "bone", "layout": "imigue", "preprocess": cfg.preprocess().to_dict()}}
    torch.save({"meta": meta, "state_dict": build_model(cfg).state_dict()}, tmp_path / "bone.pt")
    with pytest.raises(UserError, match="trained on the bone stream; pass --stream bone"):
        extract("joint", tmp_path / "prep", tmp_path / "c.zarr", checkpoint=tmp_path / "bone.pt")
    with pytest.raises(UserError, match=r"was trained with layout imigue: drop --layout"):
        extract("bone", tmp_path / "prep", tmp_path / "c.zarr", checkpoint=tmp_path / "bone.pt", layout="openpose22")
    with pytest.raises(UserError, match="was trained on 16-frame clips; drop --length"):
        extract("bone", tmp_path / "prep", tmp_path / "c.zarr", checkpoint=tmp_path / "bone.pt", length=64)
    s = extract("bone", tmp_path / "prep", tmp_path / "c.zarr", checkpoint=tmp_path / "bone.pt")
    failed = {f[0]: f for f in s.failed}
    assert s.done == 72 - 12 - 2 and len(failed) == 14
    assert "no person detected in frames" in failed["9000_0"][2]
    assert "runs past the" in failed["9000_1"][2]
    assert all("video 9001 has no skeleton" in failed[f"9001_{k}"][2] for k in range(12))
    g = TokenCache(tmp_path / "c.zarr").group("bone/agcn")
    assert len(g.failures()) == 14
    feats = g.read_many(g.done_ids(), names=["features"])["features"]
    assert feats.shape == (58, 16, 4, 55) and np.isfinite(feats).all()


def test_init_from_a_two_person_mmaction_coco_checkpoint(tmp_path, golden_dir):
    """--init: backbone weights copied, data_bn reduced to person 0, the 60-class head left fresh."""
    from golden import golden_state_dict

    from migfuse.finetune.skeleton import load_init

    sd = golden_state_dict("mmaction_agcn_coco2d")
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "coco.pth")
    model = build_model(TrainConfig(arch="aagcn", layout="coco-17"))
    fresh_fc = model.cls_head.fc.weight.clone()
    left = load_init(model, tmp_path / "coco.pth")
    got = model.state_dict()
    assert torch.equal(got["backbone.gcn.7.tcn.conv.weight"], sd["backbone.gcn.7.tcn.conv.weight"])
    assert torch.equal(got["backbone.data_bn.running_mean"], sd["backbone.data_bn.running_mean"][:51])
    assert torch.equal(model.cls_head.fc.weight, fresh_fc) and set(left) == {"cls_head.fc.weight", "cls_head.fc.bias"}
    with pytest.raises(UserError, match="does not fit --arch/--layout"):
        load_init(build_model(TrainConfig(arch="agcn", layout="coco-17")), tmp_path / "coco.pth")


def test_train_and_extract_both_streams(tmp_path):
    from migfuse.data_cache.store import TokenCache
    from migfuse.finetune.skeleton_streams import train_and_extract

    small = make_toy_dataset(tmp_path / "toy", videos=3, clips_per_video=4, val_videos=1).root
    runs = train_and_extract(small, tmp_path / "c.zarr", tmp_path / "runs",
                             TrainConfig(epochs=1, base_channels=4, length=16, batch_size=16))
    assert set(runs) == {"joint", "bone"} and all(r.extract.done == 12 for r in runs.values())
    assert runs["bone"].train.best_checkpoint == tmp_path / "runs" / "bone" / "best.pt"
    cache = TokenCache(tmp_path / "c.zarr")
    assert {"joint/agcn", "bone/agcn"} <= set(cache.group_names())
    j = cache.group("joint/agcn").read("9000_3")["features"]
    b = cache.group("bone/agcn").read("9000_3")["features"]
    assert j.shape == b.shape == (16, 4, 55) and not np.array_equal(j, b)


def test_streams_trained_in_two_processes_equal_one_process_and_errors_come_back(tmp_path):
    import dataclasses

    from migfuse.finetune.skeleton_streams import train_and_extract

    small = make_toy_dataset(tmp_path / "toy", videos=3, clips_per_video=4, val_videos=1).root
    config = TrainConfig(epochs=2, base_channels=4, length=16, batch_size=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes on a 2-core machine
    try:
        one = train_and_extract(small, tmp_path / "c1.zarr", tmp_path / "one", config)
    finally:
        torch.set_num_threads(threads)
    two = train_and_extract(small, tmp_path / "c2.zarr", tmp_path / "two", config, processes=2)
    for stream in ("joint", "bone"):
        assert [h["train_loss"] for h in two[stream].train.history] == \
            pytest.approx([h["train_loss"] for h in one[stream].train.history], rel=1e-5)
        a = torch.load(one[stream].train.best_checkpoint, weights_only=False)["state_dict"]
        b = torch.load(two[stream].train.best_checkpoint, weights_only=False)["state_dict"]
        for k in a:
            torch.testing.assert_close(b[k], a[k], msg=f"{stream} {k}")
    with pytest.raises(UserError, match="unknown --arch 'gcn'"):  # raised in a worker, one line here
        train_and_extract(small, tmp_path / "c3.zarr", tmp_path / "three", dataclasses.replace(config, arch="gcn"),
                          processes=2)


def test_cli_train_then_extract(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    small = make_toy_dataset(tmp_path / "toy", videos=2, clips_per_video=3, val_videos=1).root
    runner = CliRunner()
    res = runner.invoke(app, ["backbone", "train", "skeleton", "--data", str(small), "--out", str(tmp_path / "run"),
                              "--stream", "bone", "--epochs", "1", "--base-channels", "4", "--length", "16"])
    assert res.exit_code == 0, res.output
    assert "best epoch 1: top-1 " in res.output and str(tmp_path / "run" / "best.pt") in res.output
    args = ["extract", "skeleton", "--data", str(small), "--cache", str(tmp_path / "c.zarr"),
            "--checkpoint", str(tmp_path / "run" / "best.pt")]
    res = runner.invoke(app, args + ["--stream", "joint"])
    assert res.exit_code == 2 and "error: " in res.output and "trained on the bone stream" in res.output
    res = runner.invoke(app, args + ["--stream", "bone"])
    assert res.exit_code == 0, res.output
    assert "bone/agcn shard 0/1: 6 rows, 6 written now, 0 skipped (done or failed earlier), 0 failed" in res.output


def test_a_planted_last_pt_is_refused_in_one_line_and_never_run(tmp_path):
    """The shared folder's realworld/security_repro.sh, the trainer's part: resuming must not unpickle code."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from migfuse.cli import app

    small = make_toy_dataset(tmp_path / "toy", videos=2, clips_per_video=3, val_videos=1).root
    plant = """
import os, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, (f"echo pwned > {sys.argv[2]}",))
torch.save({"format": "migfuse-checkpoint/1", "state_dict": {}, "meta": Evil()}, sys.argv[1])
"""
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    run.mkdir()
    subprocess.run([sys.executable, "-c", plant, str(run / "last.pt"), str(marker)], check=True)
    args = ["backbone", "train", "skeleton", "--data", str(small), "--out", str(run), "--epochs", "1",
            "--base-channels", "4", "--length", "16"]
    runner = CliRunner()
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"error: {run} holds last.pt but no config.json of a migfuse run" in r.output
    # the same with a real run's config.json beside it: the weights-only loader refuses it
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    subprocess.run([sys.executable, "-c", plant, str(run / "last.pt"), str(marker)], check=True)
    r = runner.invoke(app, args + ["--epochs", "2"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "last.pt holds objects other than tensors and plain values" in r.output
    assert not marker.exists()


def test_cli_settings_from_a_toml_config_and_set_and_a_typed_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    small = make_toy_dataset(tmp_path / "toy", videos=2, clips_per_video=3, val_videos=1).root
    cfg = tmp_path / "sk.toml"
    cfg.write_text('stream = "bone"\nbase_channels = 4\nlength = 16\nepochs = 1\n')
    r = CliRunner().invoke(app, ["backbone", "train", "skeleton", "--data", str(small), "--out", str(tmp_path / "run"),
                                 "--config", str(cfg), "--set", "weight_decay=0.001", "--lr", "0.05"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["run"]["trainer"] == "skeleton" and doc["run"]["provenance"]["stream"] == "bone"
    assert {k: doc[k] for k in ("stream", "base_channels", "weight_decay", "lr", "epochs")} == \
        {"stream": "bone", "base_channels": 4, "weight_decay": 0.001, "lr": 0.05, "epochs": 1}
    for name in ("metrics.csv", "curves.png", "train.log", "best.pt", "last.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    cfg.write_text('lr = "fast"\n')
    r = CliRunner().invoke(app, ["backbone", "train", "skeleton", "--data", str(small), "--config", str(cfg)])
    assert r.exit_code == 2 and r.output == f"error: {cfg}: lr must be a number (like the default 0.1), not 'fast'\n"
