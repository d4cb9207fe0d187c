"""`--preset paper`: the pinned settings, refusals of conflicting options, and pooled vectors in the cache."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError
from migfuse.extract.presets import PRESETS, apply_preset
from migfuse.extract.sampling import ClipSampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JOINT_FILE = "2s-agcn_8xb16-joint-u100-80e_ntu60-xsub-keypoint-2d_20221222-4c0ed77e.pth"


def test_paper_preset_pins_the_published_choices():
    video = apply_preset("paper", "video", None, {"backbone": "mvit_v2_s", "frames": None, "windows": 1,
                                                  "decoder": "cpu"})
    assert {k: video[k] for k in ("backbone", "frames", "windows", "pool", "decoder")} == {
        "backbone": "mvit_v2_s", "frames": 16, "windows": 1, "pool": "cls", "decoder": "cpu"}
    record = video["preset"]
    assert (record["name"], record["version"], record["published_weights"]) == ("paper", 1, "mvit_v2_s-ae3be167.pth")
    assert record["weights_as_published"] is False  # no checkpoint: random weights are not the published ones
    # 16 frames spread evenly over the clip: the centre of each of 16 equal segments, one window
    assert ClipSampling(frames=video["frames"], max_windows=video["windows"]).windows(0, 159).tolist() == \
        [list(range(5, 160, 10))]
    for stream in ("joint", "bone"):
        skel = apply_preset("paper", stream, None, {"backbone": None, "layout": None, "length": None})
        assert {k: skel[k] for k in ("backbone", "layout", "length", "pool")} == {
            "backbone": "aagcn", "layout": "coco-17", "length": 100, "pool": "mean"}
    assert apply_preset("paper", "joint", Path("ckpt") / JOINT_FILE, {})["preset"]["weights_as_published"]
    bone = PRESETS["paper"].tracks["bone"]
    assert bone.is_published("2s-agcn_8xb16-bone-u100-80e_ntu60-xsub-keypoint-2d_20221222-0123abcd.pth")
    assert not bone.is_published(JOINT_FILE)
    assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize("args, message", [
    (["video", "--preset", "paper", "--frames", "32"],
     "--preset paper pins --frames 16 (the seed paper's published extraction); drop --frames 32, or drop "
     "--preset paper to choose your own settings"),
    (["video", "--preset", "paper", "--windows", "4"], "--preset paper pins --windows 1"),
    (["video", "--preset", "paper", "--backbone", "videomae"], "--preset paper pins --backbone mvit_v2_s"),
    (["skeleton", "--preset", "paper", "--layout", "imigue"], "--preset paper pins --layout coco-17"),
    (["skeleton", "--preset", "paper", "--length", "64"], "drop --length 64, or drop --preset paper"),
    (["skeleton", "--preset", "paper", "--backbone", "posec3d"], "--preset paper pins --backbone aagcn"),
    (["skeleton", "--preset", "paper"], f"--preset paper needs --checkpoint: the joint-stream file {JOINT_FILE}"),
])
def test_conflicting_options_are_refused_in_one_line_before_anything_is_written(tmp_path, args, message):
    from migfuse.synth.skeletons import make_toy_dataset

    data = tmp_path / "prepared"
    make_toy_dataset(data, videos=1, clips_per_video=1, val_videos=0)
    cache = tmp_path / "cache.zarr"
    result = CliRunner().invoke(app, ["extract", *args, "--data", str(data), "--cache", str(cache)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output and not cache.exists()


def test_unknown_preset_and_uncovered_track_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["extract", "video", "--preset", "paper2", "--data", str(tmp_path),
                                      "--cache", str(tmp_path / "c.zarr")])
    assert result.exit_code == 2 and "'paper2' is not one of paper" in result.output
    with pytest.raises(UserError, match="^--preset paper covers the video, joint, bone tracks, not context: drop "
                                        "--preset for context$"):
        apply_preset("paper", "context", None, {})


def test_video_preset_stores_the_class_token_of_each_clip(tmp_path, caplog):
    """A random narrow MViTv2-S (the demo's width): the preset group holds token 0 of the full group."""
    from test_extract_video_util import make_dataset

    from migfuse.backbones.mvit import FINETUNE_KIND, build_mvit
    from migfuse.data_cache.views import make_view

    torch.manual_seed(0)
    ckpt = tmp_path / "narrow.pt"
    torch.save({"meta": {"migfuse": {"kind": FINETUNE_KIND, "width": "demo", "run_id": "test"}},
                "state_dict": build_mvit("demo", 32).state_dict()}, ckpt)
    data = make_dataset(tmp_path, good={"0001": (48, [(0, 30), (8, 47)])})
    cache = tmp_path / "cache.zarr"
    common = ["extract", "video", "--data", str(data), "--cache", str(cache), "--checkpoint", str(ckpt),
              "--workers", "0", "--batch-size", "2", "--precision", "fp32", "--only-available"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, [*common, "--preset", "paper"])
    assert "2 written now" in result.output, result.output
    assert "narrow.pt is not the published file the recipe names (mvit_v2_s-ae3be167.pth" in caplog.text
    assert CliRunner().invoke(app, common).output.count("2 written now") == 1
    store = TokenCache(cache)
    pooled, full = store.group("video/mvit_v2_s-paper"), store.group("video/mvit_v2_s")
    for clip in ("0001_0", "0001_1"):
        vector = pooled.read(clip)["tokens"]
        assert vector.shape == (1, full.read(clip)["tokens"].shape[-1]) and vector.dtype == np.float16
        np.testing.assert_array_equal(vector, full.read(clip)["tokens"][:1])
    prov = pooled.provenance
    assert prov["preset"]["name"] == "paper" and prov["preset"]["version"] == 1
    assert prov["preset"]["weights_as_published"] is False and prov["pooling"]["name"] == "cls"
    assert prov["sampling"]["frames"] == 16 and prov["sampling"]["max_windows"] == 1
    assert prov["default_pooling"] == "raw" and "preset" not in full.provenance
    assert prov["tokens"].startswith("one vector per clip: the class token") and "8x7x7" in full.provenance["tokens"]
    view = make_view(store, "paper_video", "video/mvit_v2_s-paper")  # the views keep the one vector
    assert view.read("0001_0")["tokens"].shape == (1, vector.shape[-1])


def _mmaction_agcn_file(path: Path) -> Path:
    """A random mmaction2 2s-AGCN COCO-17 checkpoint (2 persons, 60 classes), saved as mmengine does."""
    from migfuse.backbones.aagcn import RecognizerGCN
    from migfuse.backbones.graphs import get_layout

    torch.manual_seed(1)
    model = RecognizerGCN(get_layout("coco-17"), num_class=60, num_person=2)
    torch.save({"meta": {"epoch": 80}, "state_dict": model.state_dict()}, path)
    return path


def test_skeleton_preset_stores_the_vector_gcnhead_classifies(tmp_path):
    from migfuse.backbones.registry import create_backbone
    from migfuse.datasets.manifest import Manifest
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions
    from migfuse.extract.skeleton.preprocess import PreprocessConfig, clip_frames, clip_input
    from migfuse.synth.skeletons import make_toy_dataset

    data = tmp_path / "prepared"
    make_toy_dataset(data, videos=1, clips_per_video=3, val_videos=0)
    m = Manifest.load(data)
    files = {"joint": _mmaction_agcn_file(tmp_path / "own_joint.pth"),
             "bone": _mmaction_agcn_file(tmp_path / "2s-agcn_8xb16-bone-u100-80e_ntu60-xsub-keypoint-2d.pth")}
    cache = tmp_path / "cache.zarr"
    for stream, ckpt in files.items():
        summary = extract(stream, data, cache, options=RunOptions(batch_size=4), checkpoint=ckpt, preset="paper",
                          backbone=None, layout=None, length=None)
        assert summary.done == 3 and summary.ok
        g = TokenCache(cache).group(f"{stream}/aagcn-paper")
        prov = g.provenance
        assert prov["layout"] == "coco-17" and prov["preprocess"]["length"] == 100 and prov["pooling"]["name"] == "mean"
        assert prov["preset"]["weights_as_published"] is (stream == "bone")
        bb = create_backbone("aagcn", ckpt, layout="coco-17")
        skel, mask = m.skeleton(m.clips[1].video_id)
        c = m.clips[1]
        x = clip_input(*clip_frames(skel, mask, c.start_frame, c.end_frame), stream,
                       PreprocessConfig(layout="coco-17", length=100)).x[None]
        x = torch.from_numpy(np.concatenate([x, np.zeros_like(x)], axis=-1))  # FormatGCNInput's padded person
        vector = g.read(c.clip_id)["features"]
        assert vector.shape == (256, 1, 1) and vector.dtype == np.float16
        with torch.no_grad():  # the stored vector is what mmaction2's GCNHead feeds its fc
            logits = bb.model.cls_head.fc(torch.from_numpy(vector[:, 0, 0].astype(np.float32)))
            np.testing.assert_allclose(logits.numpy(), bb.model(x)[0].numpy(), atol=2e-2, rtol=2e-2)


def test_a_migfuse_trained_checkpoint_with_the_preset_names_the_preset_not_layout(tmp_path):
    import torch

    from migfuse.extract.entry import extract
    from migfuse.finetune.skeleton import TrainConfig, build_model
    from migfuse.synth.skeletons import make_toy_dataset

    data = tmp_path / "prepared"
    make_toy_dataset(data, videos=1, clips_per_video=2, val_videos=0)
    cfg = TrainConfig(stream="joint", base_channels=4, length=16)
    ckpt = tmp_path / "best.pt"
    torch.save({"meta": {"migfuse": {"arch": "agcn", "stream": "joint", "layout": "imigue",
                                     "preprocess": cfg.preprocess().to_dict()}},
                "state_dict": build_model(cfg).state_dict()}, ckpt)
    with pytest.raises(UserError) as e:
        extract("joint", data, tmp_path / "c.zarr", checkpoint=ckpt, preset="paper", backbone=None, layout=None,
                length=None)
    assert str(e.value).startswith(f"{ckpt} was trained with layout imigue: --preset paper pins layout coco-17: "
                                   "drop --preset (it is for the published file 2s-agcn_8xb16-joint-u100")
    assert not (tmp_path / "c.zarr").exists()
