"""Skeletons from the videos end to end on the generated demo dataset, through the CLI: `data pose`
-> `extract skeleton --layout coco-17` (a random 2s-AGCN) -> CMTF with a random tiny Video Swin ->
`fuse predict`. Plumbing, not accuracy: the estimator is a stand-in (`pose_fakes`) or, where the model
helper and transformers are installed, the tiny random real detector + pose model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pose_fakes import FrameContentEstimator
from typer.testing import CliRunner

from migfuse import demo as demo_module
from migfuse.backbones._torchvision import import_torchvision
from migfuse.cli import app
from migfuse.data_cache.store import TokenCache
from migfuse.datasets.manifest import Manifest
from migfuse.datasets.prepare import prepare
from migfuse.fuse.scores import Scores
from migfuse.pose_estimation import run as run_module
from migfuse.synth import generate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def invoke(*args) -> object:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo's dataset (5 videos x 8 clips, seed 0), prepared, and a random tiny Swin and coco-17 AGCN."""
    from migfuse.backbones.agcn import AGCN
    from migfuse.datasets.skeleton_layouts import get_layout

    root = tmp_path_factory.mktemp("e2e_pose")
    generate_dataset(root / "dataset", seed=0, clips_per_video=demo_module.DEMO["clips_per_video"],
                     video_ids=demo_module.DEMO["video_ids"], workers=1, progress=False)
    prepare(root / "dataset", root / "prepared")
    torch.manual_seed(0)
    swin = import_torchvision().models.video.swin_transformer.SwinTransformer3d(
        patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=[8, 7, 7],
        mlp_ratio=2.0, num_classes=5)
    torch.save(swin.state_dict(), root / "swin_tiny.pth")
    torch.save(AGCN(get_layout("coco-17"), base_channels=16).state_dict(), root / "agcn.pt")
    common = ("--precision", "fp32", "--device", "cpu")
    invoke("extract", "video", "--data", root / "prepared", "--cache", root / "video.zarr", "--backbone", "swin3d_t",
           "--checkpoint", root / "swin_tiny.pth", "--workers", "0", "--batch-size", "4", *common)
    return root


@pytest.mark.parametrize("which", ["stand-in", "tiny-real"])
def test_data_pose_then_extract_skeleton_coco17_then_cmtf(world, tmp_path, monkeypatch, which):
    pose_args: tuple = ("--pose-model", tmp_path / "pose", "--detector", tmp_path / "detector")
    if which == "stand-in":
        monkeypatch.setattr(run_module, "load_estimator", lambda *a, **k: FrameContentEstimator())
    else:
        pytest.importorskip("transformers")
        from migfuse.pose_estimation.tiny_models import write_tiny_models

        detector, pose = write_tiny_models(tmp_path)
        pose_args = ("--pose-model", pose, "--detector", detector)
    poses, cache = tmp_path / "poses", tmp_path / "cache.zarr"
    common = ("--precision", "fp32", "--device", "cpu")
    r = invoke("data", "pose", "--data", world / "prepared", "--out", poses, *pose_args, "--device", "cpu",
               "--workers", "1", "--batch-size", "8")
    assert "5 of 5 videos done (coco-17, estimated: " in r.output, r.output
    m = Manifest.load(poses)
    assert {info.skeleton_layout for info in m.videos.values()} == {"coco-17"}
    # the estimated poses join the video tokens of the same clips in one cache
    import shutil

    shutil.copytree(world / "video.zarr", cache)
    invoke("extract", "skeleton", "--data", poses, "--cache", cache, "--backbone", "agcn", "--checkpoint",
           world / "agcn.pt", "--layout", "coco-17", "--length", "32", "--stream", "joint", *common)
    joint = TokenCache(cache).group("joint/agcn")
    assert len(joint.done_ids()) == 40 and joint.provenance["layout"] == "coco-17"
    invoke("cache", "view", cache, "--defaults")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"head": "cmtf", **demo_module.DEMO["cmtf"], "epochs": 2, "threads": 1,
                                  "head_options": {"pose_inputs": ["joint"]}}))
    run = tmp_path / "run"
    invoke("fuse", "train", "--cache", cache, "--data", poses, "--task", "mg", "--config", config, "--out", run,
           *common)
    assert json.loads((run / "config.json").read_text())["run"]["provenance"]["inputs"] == {
        "video": "views/video", "joint": "views/joint"}
    invoke("fuse", "predict", run, "--split", "test", "--out", tmp_path / "test.npz")
    held_out = Scores.load(tmp_path / "test.npz")
    assert len(held_out.ids) == 16 and np.allclose(held_out.scores.sum(1), 1, atol=1e-4)
