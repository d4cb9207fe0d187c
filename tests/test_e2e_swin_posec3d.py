"""Video Swin + PoseC3D end to end on the generated demo dataset, through the CLI: `extract video
--backbone swin3d_t`, `extract skeleton --backbone posec3d` (joint and bone), `cache view --defaults`,
CMTF over the Swin video group and the PoseC3D pose groups, `fuse predict`, `export`; the held-out
accuracy is printed beside chance.

Both backbones are RANDOM and small (the architecture is read from the file: a 16-wide Swin with the
published 4 stages, so its tokens keep the (16, 7, 7) grid of 32-frame clips; a 4-wide PoseC3D on
16-frame heatmap volumes), so the test shows the pipeline, not a model: Swin + PoseC3D prints 6/16 (chance
2/16) with PoseC3D's default `pose_grid` views, which keep where on the 8x8 map the motion is (3/16 when
the 64 positions were averaged as if they were joints, `pose_parts`); a random 2s-AGCN already separates
the generated gestures. A second test runs V-JEPA 2 (transformers) +
2s-AGCN the same way, and a third checks that `fuse heads cmtf` lists the pairs the tests run.
"""
from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from migfuse import demo as demo_module
from migfuse.backbones._torchvision import import_torchvision
from migfuse.backbones.registry import create_backbone
from migfuse.cli import app
from migfuse.data_cache.store import TokenCache
from migfuse.datasets.prepare import prepare
from migfuse.fuse.scores import Scores
from migfuse.synth import generate_dataset
from migfuse.synth.pose import MOTIONS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SWIN_WIDTH = 16  # embed_dim of the tiny Swin: last-stage tokens are 8 x 16 = 128 wide


def invoke(*args) -> object:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo's dataset (5 videos x 8 clips, seed 0), prepared, and the two random checkpoints."""
    root = tmp_path_factory.mktemp("e2e")
    generate_dataset(root / "dataset", seed=0, clips_per_video=demo_module.DEMO["clips_per_video"],
                     video_ids=demo_module.DEMO["video_ids"], workers=1, progress=False)
    prepare(root / "dataset", root / "prepared")
    SwinTransformer3d = import_torchvision().models.video.swin_transformer.SwinTransformer3d
    torch.manual_seed(0)
    swin = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=SWIN_WIDTH, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                             window_size=[8, 7, 7], mlp_ratio=2.0, num_classes=5)
    torch.save(swin.state_dict(), root / "swin_tiny.pth")  # torchvision layout, as swin3d_t reads it
    posec3d = create_backbone("posec3d", base_channels=4, stage_blocks=(1, 1, 1), num_class=4)
    for module in posec3d.model.modules():  # statistics that keep the features well above fp16 steps
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.fill_(0.1)
    torch.save({"meta": {"cfg": "val_pipeline = [dict(type='UniformSampleFrames', clip_len=16)]"},
                "state_dict": posec3d.model.state_dict()}, root / "posec3d_tiny.pth")
    return root


def test_swin_and_posec3d_extract_view_train_cmtf_predict_and_export(world, tmp_path):
    prepared, cache = world / "prepared", tmp_path / "cache.zarr"
    common = ("--precision", "fp32", "--device", "cpu")
    invoke("extract", "video", "--data", prepared, "--cache", cache, "--backbone", "swin3d_t",
           "--checkpoint", world / "swin_tiny.pth", "--workers", "0", "--batch-size", "4", *common)
    for stream in ("joint", "bone"):
        invoke("extract", "skeleton", "--data", prepared, "--cache", cache, "--backbone", "posec3d",
               "--checkpoint", world / "posec3d_tiny.pth", "--stream", stream, *common)
    store = TokenCache(cache)
    video = store.group("video/swin3d_t")
    assert len(video.done_ids()) == 40 and video.read("0001_0")["tokens"].shape == (16 * 7 * 7, 8 * SWIN_WIDTH)
    assert video.provenance["token_layout"] == {"class_token": False, "grid": [16, 7, 7]}
    for stream in ("joint", "bone"):
        pose = store.group(f"{stream}/posec3d")
        assert len(pose.done_ids()) == 40
        assert pose.provenance["token_layout"] == {"class_token": False, "grid": [8, 8, 8], "input": "heatmap_volume"}

    # the default views pick the Swin and PoseC3D groups by track: views/video, views/joint, views/bone
    r = invoke("cache", "view", cache, "--defaults")
    for view, group in (("video", "video/swin3d_t"), ("joint", "joint/posec3d"), ("bone", "bone/posec3d")):
        assert TokenCache(cache).group(f"views/{view}").provenance["source"] == group, r.output
    assert TokenCache(cache).group("views/video").arrays["tokens"].shape == (16, 8 * SWIN_WIDTH)
    joint_view = TokenCache(cache).group("views/joint")  # PoseC3D's map: 8 time tokens + 4x4 cells of the 8x8 map
    assert joint_view.provenance["pooling"] == {"name": "pose_grid", "grid": [8, 8], "time_steps": 8, "cells": 4}
    assert joint_view.arrays["tokens"].shape[0] == 8 + 16

    # CMTF with its default inputs (video + joint + bone)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"head": "cmtf", **demo_module.DEMO["cmtf"], "threads": 1}))
    run = tmp_path / "run"
    invoke("fuse", "train", "--cache", cache, "--data", prepared, "--task", "mg", "--config", config,
           "--out", run, *common)
    inputs = json.loads((run / "config.json").read_text())["run"]["provenance"]["inputs"]
    assert inputs == {"video": "views/video", "joint": "views/joint", "bone": "views/bone"}
    scores = tmp_path / "test.npz"
    invoke("fuse", "predict", run, "--split", "test", "--out", scores)
    held_out = Scores.load(scores)
    assert len(held_out.ids) == 16 and np.allclose(held_out.scores.sum(1), 1, atol=1e-4)
    truth = demo_module.held_out_truth(world / "dataset")
    correct, n = demo_module.scores_accuracy(held_out, truth, sorted(truth))
    print("\n" + demo_module.accuracy_line("Video Swin + PoseC3D, CMTF", correct, n, 1 / len(MOTIONS), "clips"))
    assert n == 16
    out = tmp_path / "submission.zip"
    r = invoke("export", "miga2025", scores, "--data", prepared, "--out", out)
    assert "16 rows of split test" in r.output and hashlib.sha256(out.read_bytes()).hexdigest() in r.output
    with zipfile.ZipFile(out) as z:
        rows = z.read("prediction.csv").decode().splitlines()
    assert rows[0] == "Id,Target" and len(rows) == 17


def test_vjepa2_and_2s_agcn_extract_view_train_cmtf_and_export(world, tmp_path):
    """A transformers video ViT (V-JEPA 2, a tiny random local folder) on the video side and a random
    2s-AGCN (a published-layout file, COCO-17) on the pose side, joint stream only."""
    tf = pytest.importorskip("transformers")
    from migfuse.backbones.agcn import AGCN
    from migfuse.datasets.skeleton_layouts import get_layout

    torch.manual_seed(0)
    folder = tmp_path / "vjepa2"
    tf.VJEPA2Model(tf.VJEPA2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=16,
                                   tubelet_size=2, crop_size=32, frames_per_clip=4, pred_hidden_size=16,
                                   pred_num_hidden_layers=1, pred_num_attention_heads=2,
                                   num_pooler_layers=1)).save_pretrained(folder)
    (folder / "video_preprocessor_config.json").write_text(
        json.dumps({"video_processor_type": "VJEPA2VideoProcessor", "crop_size": 32}))
    torch.save(AGCN(get_layout("coco-17"), base_channels=64).state_dict(), tmp_path / "agcn.pt")
    prepared, cache = world / "prepared", tmp_path / "cache.zarr"
    common = ("--precision", "fp32", "--device", "cpu")
    invoke("extract", "video", "--data", prepared, "--cache", cache, "--backbone", "vjepa2", "--checkpoint", folder,
           "--workers", "0", "--batch-size", "8", *common)
    invoke("extract", "skeleton", "--data", prepared, "--cache", cache, "--backbone", "agcn", "--checkpoint",
           tmp_path / "agcn.pt", "--layout", "coco-17", "--length", "32", "--stream", "joint", *common)
    r = invoke("cache", "view", cache, "--defaults")
    for view, group in (("video", "video/vjepa2"), ("joint", "joint/agcn")):
        assert TokenCache(cache).group(f"views/{view}").provenance["source"] == group, r.output
    # V-JEPA 2's patch tokens (4 frames / tubelet 2, 32 / patch 16 twice: a (2, 2, 2) grid, no class
    # token) pool to one token per time step, as the extraction's token layout says
    assert TokenCache(cache).group("video/vjepa2").provenance["token_layout"] == {"class_token": False,
                                                                                "grid": [2, 2, 2]}
    view = TokenCache(cache).group("views/video")
    assert view.provenance["pooling"] == {"name": "video_time", "class_token": False, "grid": 4}
    assert view.arrays["tokens"].shape == (2, 32)
    from migfuse.data_cache.views import layout_params

    # and its context windows pool to the mean patch, not to a first patch taken for a class token
    assert layout_params("context_cls_mean", TokenCache(cache).group("video/vjepa2").provenance) == {
        "class_token": False}
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"head": "cmtf", **demo_module.DEMO["cmtf"], "threads": 1,
                                  "head_options": {"pose_inputs": ["joint"]}}))
    run = tmp_path / "run"
    invoke("fuse", "train", "--cache", cache, "--data", prepared, "--task", "mg", "--config", config,
           "--out", run, *common)
    inputs = json.loads((run / "config.json").read_text())["run"]["provenance"]["inputs"]
    assert inputs == {"video": "views/video", "joint": "views/joint"}
    scores = tmp_path / "test.npz"
    invoke("fuse", "predict", run, "--split", "test", "--out", scores)
    truth = demo_module.held_out_truth(world / "dataset")
    correct, n = demo_module.scores_accuracy(Scores.load(scores), truth, sorted(truth))
    print("\n" + demo_module.accuracy_line("V-JEPA 2 + 2s-AGCN joint, CMTF", correct, n, 1 / len(MOTIONS), "clips"))
    assert n == 16
    r = invoke("export", "miga2025", scores, "--data", prepared, "--out", tmp_path / "submission.zip")
    assert "16 rows of split test" in r.output


def test_fuse_heads_lists_the_pairs_these_tests_ran_through_cmtf():
    from pathlib import Path

    from migfuse.fuse.heads.cmtf import TRIED_PAIRS

    r = CliRunner().invoke(app, ["fuse", "heads", "cmtf"])
    assert r.exit_code == 0 and json.loads(r.stdout)["head"] == "cmtf", r.output
    listed = [line for line in r.stderr.splitlines() if line.startswith("#   tried end to end: ")]
    assert listed[1] == ("#   tried end to end: Video Swin (video/swin3d_t) + PoseC3D joint + bone (joint/posec3d, "
                         "bone/posec3d)  [tests/test_e2e_swin_posec3d.py]")
    assert len(listed) == len(TRIED_PAIRS) == 4
    root = Path(__file__).resolve().parents[1]
    for video, _, test in TRIED_PAIRS:  # each pair names a test that exists and runs CMTF
        text = (root / test).read_text()
        assert "cmtf" in text.lower() and "submission" in text, (video, test)
