"""`migfuse backbone train video`: MViTv2-S fine-tuning on generated clips with a planted colour signal.

The demo width (4 narrow blocks, same 393-token grid) keeps each run to seconds per epoch on the CPU;
the code paths (loader, augmentation, optimiser groups, run folder, DDP, checkpoint loading,
extraction) are the full model's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_video_train_util import make_colour_dataset
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.finetune import video as vt
from migfuse.finetune import video_data as vd
from migfuse.backbones.checkpoints import sha256_file
from migfuse.backbones.mvit import PREPROCESSING, MViTBackbone, build_mvit, checkpoint_facts, forward_tokens
from migfuse.backbones.video_input import normalise_clips

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
FAST = ["width=demo", "workers=0", "drop_path=0", "head_dropout=0", "label_smoothing=0", "warmup_epochs=0.5",
        "lr=3e-3", "color_jitter=0.1"]


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    """A demo-width 'Kinetics' base checkpoint in torchvision's format (400 classes)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("base") / "mvit_demo_k400.pth"
    torch.save(build_mvit("demo", 400).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory, base_file):
    """A 2-epoch fine-tuning run on 12 training clips of 4 colour classes, validated on 8."""
    root = tmp_path_factory.mktemp("planted")
    prepared = make_colour_dataset(root, videos=5, clips_per_video=4, val_videos=2)
    summary = vt.fine_tune_video(prepared, root / "run", base_file,
                                 sets=FAST + ["epochs=2", "batch_size=4", "target_batch=4"])
    return prepared, root / "run", summary


def test_fine_tuning_lowers_the_loss_and_beats_chance_on_a_planted_signal(planted, base_file):
    prepared, run, summary = planted
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["val_loss"] < history[0]["val_loss"]
    assert summary["best"]["val_top1"] >= 0.5  # chance is 0.25 on 4 classes
    assert (summary["n_train"], summary["n_validation"]) == (12, 8)
    assert summary["validation_source"] == "split_miga train / validation"
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]["migfuse"]
    assert meta["kind"] == "mvit_v2_s fine-tuned" and meta["width"] == "demo" and meta["num_classes"] == 32
    assert meta["base_checkpoint_sha256"] == sha256_file(base_file)
    assert meta["run_id"].startswith(str(run.resolve()) + "@") and meta["epoch"] == summary["best"]["epoch"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_best_pt_holds_plain_torchvision_weights_with_a_32_class_head(planted):
    _, run, _ = planted
    sd = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith(("module.", "mvit.")) for k in sd)
    assert set(sd) == set(build_mvit("demo", 32).state_dict())
    assert tuple(sd["head.1.weight"].shape) == (32, 128)


def test_the_fine_tuned_checkpoint_extracts_video_and_context_tokens(planted, tmp_path, base_file):
    from migfuse.data_cache.store import TokenCache
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    prepared, run, _ = planted
    manifest = Manifest.load(prepared)
    clips = [c.clip_id for c in manifest.clips if c.video_id == "0005"][:2]
    cache = tmp_path / "c.zarr"
    one = RunOptions(workers=0)
    assert extract("video", prepared, cache, options=one, checkpoint=run / "best.pt", row_ids=clips).ok
    assert extract("context", prepared, cache, options=one, checkpoint=run / "best.pt", context_windows=2,
                   row_ids=["0005"]).ok
    video, context = TokenCache(cache).group("video/mvit_v2_s"), TokenCache(cache).group("context/mvit_v2_s")
    tokens = video.read_many(clips)["tokens"]
    assert tokens.shape == (2, 393, 128) and context.read("0005")["tokens"].shape == (2, 393, 128)
    fine = video.provenance["fine_tuned"]
    assert fine["base_checkpoint_sha256"] == sha256_file(base_file)
    assert fine["run_id"].startswith(str(run.resolve())) and fine["width"] == "demo"
    assert video.provenance["checkpoint_sha256"] == sha256_file(run / "best.pt")
    # the same tokens as the fine-tuned model on the training code's validation input
    bb = MViTBackbone()
    bb.load(run / "best.pt")
    ds = vd.VideoClipDataset(manifest, clips)
    frames = torch.from_numpy(np.stack([ds[i][0] for i in range(2)]))
    expected, _ = forward_tokens(bb.model.eval(), normalise_clips(frames, PREPROCESSING["mean"],
                                                                  PREPROCESSING["std"]))
    np.testing.assert_allclose(tokens.astype(np.float32), expected.detach().numpy(), rtol=2e-3, atol=2e-3)


def test_validation_input_is_exactly_what_extract_video_feeds_the_model(planted):
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone

    from migfuse.extract.interface import WorkItem
    from migfuse.extract.video import VideoExtractor

    prepared, _, _ = planted
    manifest = Manifest.load(prepared)
    seen = []

    ex = VideoExtractor(manifest, "video", backbone="tiny")  # registered in test_extract_video_util
    ex.setup()
    ex.model = lambda x: seen.append(x.clone()) or x[:, :1, :1, :1, :1]
    sample = next(iter(ex.loader()(WorkItem("0002", ("0002_1",)))))
    ex._tokens(sample.inputs["frames"])
    frames, label = vd.VideoClipDataset(manifest, ["0002_1"])[0]
    assert label == manifest.clip("0002_1").label
    # the validation input of fine-tuning (`evaluate`), bit for bit
    assert torch.equal(normalise_clips(torch.from_numpy(frames)[None], PREPROCESSING["mean"], PREPROCESSING["std"]),
                       seen[0])


def test_a_run_killed_during_epoch_2_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    prepared = make_colour_dataset(tmp_path, videos=3, clips_per_video=2, val_videos=1)
    sets = FAST + ["epochs=2", "batch_size=2", "target_batch=4"]
    whole = vt.fine_tune_video(prepared, tmp_path / "whole", sets=sets)

    original = vd.VideoClipDataset.__getitem__
    calls = {"n": 0}

    def dies_in_epoch_2(self, i):
        calls["n"] += 1
        if calls["n"] > 4 + 2 + 3:  # epoch 1: 4 training + 2 validation clips; then 3 clips into epoch 2
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(vd.VideoClipDataset, "__getitem__", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        vt.fine_tune_video(prepared, tmp_path / "killed", sets=sets)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(vd.VideoClipDataset, "__getitem__", original)
    resumed = vt.fine_tune_video(prepared, tmp_path / "killed", sets=sets)
    assert resumed["epochs_run"] == 1
    keys = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1")
    assert [h[k] for h in resumed["history"] for k in keys] == pytest.approx(
        [h[k] for h in whole["history"] for k in keys])
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_two_process_gloo_torchrun_run_trains_and_writes_one_checkpoint(tmp_path):
    prepared = make_colour_dataset(tmp_path, videos=3, clips_per_video=2, val_videos=1)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "migfuse.cli", "backbone", "train", "video", "--data", str(prepared), "--out", str(out),
           "--epochs", "1", "--batch-size", "1", "--device", "cpu", "--precision", "fp32"] + [
               a for s in FAST for a in ("--set", s)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best epoch 1") == 1  # printed by rank 0 only
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["epoch"] == 1
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]["migfuse"]
    assert meta["world_size"] == 2 and meta["train_clips"] == 4
    assert checkpoint_facts(out / "best.pt")["embed_dim"] == 128


def test_layer_wise_lr_decay_follows_torchvision_mvit_names():
    model = build_mvit("full", 32)
    groups = vt.param_groups(model, lr=1.0, layer_decay=0.5, weight_decay=0.05)
    by_name = {n: g for g in groups for n in g["names"]}
    assert sum(len(g["names"]) for g in groups) == len(list(model.parameters()))
    assert by_name["head.1.weight"]["lr"] == 1.0 and by_name["norm.weight"]["lr"] == 1.0
    assert by_name["blocks.15.mlp.0.weight"]["lr"] == 0.5
    assert by_name["blocks.0.attn.qkv.weight"]["lr"] == 0.5 ** 16
    assert by_name["conv_proj.weight"]["lr"] == 0.5 ** 17 == by_name["pos_encoding.class_token"]["lr"]
    for name in ("norm.weight", "blocks.3.attn.qkv.bias", "pos_encoding.class_token", "blocks.0.attn.rel_pos_h"):
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ("blocks.3.attn.qkv.weight", "conv_proj.weight", "head.1.weight"):
        assert by_name[name]["weight_decay"] == 0.05, name
    assert groups[0]["layer"] == 17  # the head's group first: metrics.jsonl's lr is the peak lr


def test_augmentation_keeps_left_and_right_unless_hflip_is_on():
    frames = torch.zeros(1, 4, 32, 32, 3, dtype=torch.uint8)
    frames[..., :16, :] = 255  # the left half is white
    def left_minus_right(aug, seed):
        x = aug(frames, torch.Generator().manual_seed(seed))
        return float(x[..., :16].mean() - x[..., 16:].mean())
    plain = vd.Augment(crop_scale=(0.5, 1.0), color_jitter=0.3)
    assert all(left_minus_right(plain, s) > 0 for s in range(20))
    flipping = vd.Augment(crop_scale=(0.5, 1.0), color_jitter=0.3, hflip=True)
    assert any(left_minus_right(flipping, s) < 0 for s in range(20))
    x1, x2 = plain(frames, torch.Generator().manual_seed(3)), plain(frames, torch.Generator().manual_seed(3))
    assert x1.shape == (1, 3, 4, 32, 32) and torch.equal(x1, x2)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_its_floor():
    from migfuse.training.recipe import warmup_cosine

    f = [warmup_cosine(s, total=10, warmup=2, min_ratio=0.1) for s in range(11)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert f[6] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


def test_epoch_order_splits_one_order_across_ranks_and_balances_classes():
    labels = np.array([0] * 90 + [1] * 10)
    r0, r1 = (vd.epoch_order(labels, "none", 0, 1, rank, 2) for rank in (0, 1))
    assert sorted(r0 + r1) == list(range(100)) and len(r0) == len(r1) == 50
    assert vd.epoch_order(labels, "none", 0, 1) != vd.epoch_order(labels, "none", 0, 2)
    drawn = labels[vd.epoch_order(labels, "sampler", 0, 1)]
    assert 30 <= int((drawn == 1).sum()) <= 70  # about half, not a tenth
    odd = vd.epoch_order(np.arange(5) % 2, "none", 0, 1, 1, 2)
    assert len(odd) == 3  # padded so every rank takes the same number of steps


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="width must be one of full, demo, not 'huge'"):
        vt.resolve(sets=["width=huge"])
    with pytest.raises(UserError, match="lr must be a number"):
        vt.resolve(sets=["lr=fast"])
    with pytest.raises(UserError, match=r"crop_scale must be \[low, high\]"):
        vt.resolve(sets=["crop_scale=[0.5]"])
    with pytest.raises(UserError, match="unknown setting 'hflips'"):
        vt.resolve(sets=["hflips=true"])
    assert vt.resolve(sets=["hflip=true"], flags={"epochs": 3})["hflip"] is True
    with pytest.raises(UserError, match="balance must be one of loss, sampler, none, not 'oops'"):
        vt.resolve(sets=["balance=oops"])


def test_settings_of_an_earlier_release_are_read_in_todays_words_with_one_warning(caplog):
    cfg = vt.resolve(sets=["balance=weights", "device=cuda", "precision=bf16"])
    assert cfg["balance"] == "loss" and "device" not in cfg and "precision" not in cfg
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["settings of an earlier release: --set: device and precision are command options now "
                        "(--device / --precision); the value there is not used; --set: balance 'weights' is now "
                        "called 'loss'"]


def test_a_run_folder_with_device_and_precision_settings_resumes(planted, tmp_path, base_file):
    """A run folder of an earlier release (device, precision among its settings) is resumed, not refused."""
    import shutil

    prepared, run, _ = planted
    old = tmp_path / "run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns(".lock"))
    doc = json.loads((old / "config.json").read_text())
    assert doc["run"]["provenance"]["compute"] == {"device": "cpu", "precision": "fp32"}
    doc.update(device="auto", precision="auto")
    (old / "config.json").write_text(json.dumps(doc))
    again = vt.fine_tune_video(prepared, old, base_file, sets=FAST + ["epochs=2", "batch_size=4", "target_batch=4"])
    assert again["epochs_run"] == 0 and [h["epoch"] for h in again["history"]] == [1, 2]  # finished: nothing to do
    assert "device" not in json.loads((old / "config.json").read_text())


def test_fp16_is_refused_in_one_line_before_any_work(tmp_path):
    from migfuse.runtime import Precision, Runtime

    with pytest.raises(UserError, match="--precision fp16: the trainers run in fp32 or bf16"):
        vt.fine_tune_video(tmp_path, tmp_path / "run", runtime=Runtime(precision=Precision.FP16))


def test_a_ddp_prefixed_fine_tuned_file_loads_and_a_width_mismatch_is_named(tmp_path, base_file):
    from migfuse.backbones.mvit import FINETUNE_KIND

    model = build_mvit("demo", 32)
    path = tmp_path / "ddp_best.pt"
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo", "run_id": "r1"}},
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    bb = MViTBackbone()  # full width: the file's width wins
    bb.load(path)
    assert bb.width == "demo" and bb.num_classes == 32 and bb.fine_tune["run_id"] == "r1"
    torch.testing.assert_close(bb.model.state_dict()["head.1.weight"], model.state_dict()["head.1.weight"])
    with pytest.raises(UserError, match="is not a torchvision mvit_v2_s"):
        MViTBackbone().load(base_file)  # a demo-width plain file does not fit the full model


def test_cli_show_config_prints_resolved_settings_and_rejects_bad_ones(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    r = CliRunner().invoke(app, ["backbone", "train", "video", "--data", str(tmp_path), "--show-config",
                                 "--set", "width=demo", "--epochs", "3"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    assert cfg["width"] == "demo" and cfg["epochs"] == 3 and cfg["hflip"] is False and cfg["layer_decay"] == 0.75
    r = CliRunner().invoke(app, ["backbone", "train", "video", "--data", str(tmp_path), "--set", "balance=oops"])
    assert r.exit_code == 2 and "balance must be one of loss, sampler, none" in r.output
