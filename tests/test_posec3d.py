"""PoseC3D: the heatmap pipeline and ResNet3dSlowOnly + I3DHead against mmaction2's own outputs (golden
files), checkpoint layouts (mmaction2 1.x, pyskl / mmaction2 0.x, names without ConvModule), the CLI
(`backbone info|run` with a volume or keypoints) and `extract skeleton --backbone posec3d`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from golden import golden_state_dict, load_golden
from migfuse.backbones.pose_heatmaps import (HeatmapConfig, build_volume, clip_keypoints, draw_heatmaps,
                                             draw_heatmaps_torch, flip_heatmaps, sample_frames)
from migfuse.backbones.posec3d import RENAMES, settings_from_cfg
from migfuse.backbones.registry import create_backbone
from migfuse.cli import app
from migfuse.errors import UserError

ATOL = RTOL = 1e-4
MODELS = ["mmaction_posec3d_r50", "mmaction_posec3d_r50_fanin"]
OUTPUTS = ("backbone_features", "pooled", "cls_scores")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _annotation() -> dict:
    _, z = load_golden("mmaction_pose_heatmaps")
    return {"keypoint": z["keypoint"], "keypoint_score": z["keypoint_score"], "img_shape": tuple(z["img_shape"]),
            "total_frames": int(z["total_frames"])}


def _save_mmaction(name: str, path: Path, **meta) -> Path:
    """The golden weights as mmengine's CheckpointHook writes them: {'meta', 'state_dict'}."""
    torch.save({"meta": {"epoch": 240, "mmengine_version": "0.10.7", **meta}, "state_dict": golden_state_dict(name)},
               path)
    return path


# ----- heatmaps ------------------------------------------------------------------------------------
def test_frame_sampling_and_keypoint_steps_match_mmaction2():
    _, z = load_golden("mmaction_pose_heatmaps")
    inds, kp, score = clip_keypoints(_annotation(), HeatmapConfig())
    assert inds.dtype == np.int32 and np.array_equal(inds, z["frame_inds"])
    assert np.array_equal(sample_frames(100, 48, num_clips=10), z["frame_inds_test10"])
    np.testing.assert_allclose(kp, z["keypoint_final"], atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(score, z["keypoint_score_final"])


@pytest.mark.parametrize("limb, key", [(False, "imgs_kp"), (True, "imgs_limb")])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_heatmap_volumes_match_mmaction2(limb, key, device):
    _, z = load_golden("mmaction_pose_heatmaps")
    volume = build_volume(_annotation(), HeatmapConfig(limb=limb), device=device)
    assert volume.shape == (1, 17, 48, 64, 64) and volume.dtype == np.float32
    assert np.abs(volume - z[key]).max() < ATOL


def _hard_keypoints(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two clips, two persons: points off the map, on its edges, zero / tiny scores, limbs under a pixel."""
    rng = np.random.default_rng(seed)
    kp = rng.uniform(-6, 70, (2, 2, 6, 17, 2)).astype(np.float32)
    kp[0, 0, :, 1] = kp[0, 0, :, 0] + 0.3  # limb 0 (0-1) shorter than one pixel
    kp[1, 1, 2] = 0.0
    score = rng.uniform(0, 1, kp.shape[:-1]).astype(np.float32)
    score[..., 3] = 0.0
    score[..., 4] = 5e-5  # below GeneratePoseTarget's eps: drawn nowhere
    return kp, score


@pytest.mark.parametrize("limb", [False, True])
def test_numpy_and_torch_heatmaps_are_the_same_volumes(limb):
    kp, score = _hard_keypoints(1)
    a = draw_heatmaps(kp, score, (64, 64), limb=limb)
    b = draw_heatmaps_torch(torch.from_numpy(kp), torch.from_numpy(score), (64, 64), limb=limb).numpy()
    assert a.shape == b.shape == (2, 6, 17, 64, 64)
    assert np.abs(a - b).max() < 1e-5
    assert a.max() > 0.5
    if not limb:  # keypoints 3 and 4 score 0 and 5e-5: below eps, drawn nowhere
        assert not a[..., 3, :, :].any() and not a[..., 4, :, :].any()
    # batched over clips = one clip at a time
    assert np.array_equal(a[1], draw_heatmaps(kp[1], score[1], (64, 64), limb=limb))


def test_flipped_copy_swaps_left_and_right():
    kp, score = _hard_keypoints(2)
    maps = draw_heatmaps(kp[0], score[0], (64, 64))
    flipped = flip_heatmaps(maps, limb=False)
    assert np.array_equal(flipped[:, 1], maps[:, 2, :, ::-1]) and np.array_equal(flipped[:, 0], maps[:, 0, :, ::-1])
    double = build_volume(_annotation(), HeatmapConfig(double=True))
    assert double.shape == (2, 17, 48, 64, 64) and np.array_equal(double[1, 5], double[0, 6, :, :, ::-1])


def test_frame_sampling_of_short_clips():
    short = sample_frames(20, 48)
    assert np.array_equal(short, np.arange(48) % 20)
    middle = sample_frames(60, 48)  # 12 frames skipped, the rest kept in order
    assert len(np.unique(middle)) == 48 and np.all(np.diff(middle) > 0) and middle.max() < 60
    with pytest.raises(UserError, match="at least one frame"):
        sample_frames(0, 48)


# ----- the network ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("posec3d")
    runs = {}
    for name in MODELS:
        _, arrays = load_golden(name)
        bb = create_backbone("posec3d", _save_mmaction(name, tmp / f"{name}.pth"))
        runs[name] = (bb.run(arrays["input"]), arrays, bb)
    return runs


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_outputs_match_mmaction2(golden_runs, name, output):
    out, arrays, _ = golden_runs[name]
    assert out[output].shape == arrays[output].shape
    np.testing.assert_allclose(out[output], arrays[output], atol=ATOL, rtol=RTOL)


def test_architecture_is_read_from_the_file(golden_runs):
    _, _, bb = golden_runs["mmaction_posec3d_r50"]
    a = bb.model.arch
    assert (a.in_channels, a.base_channels, a.stage_blocks, a.num_classes) == (17, 32, (4, 6, 3), 60)
    assert a.inflate == (0, 1, 1) and a.feature_shape(48, 56, 56) == (512, 24, 7, 7)
    assert bb.key_report.summary() == "260 keys matched"


def _pyskl_file(path: Path, sd: dict, config: str) -> Path:
    """As pyskl / mmaction2 0.x (mmcv 1.x runner) save: meta with the config text, optimizer state."""
    torch.save({"meta": {"mmcv_version": "1.5.0", "config": config, "epoch": 24},
                "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.2}]}}, path)
    return path


def test_pyskl_and_plain_name_files_give_the_same_outputs(golden_runs, tmp_path):
    out, arrays, _ = golden_runs["mmaction_posec3d_r50_fanin"]
    sd = golden_state_dict("mmaction_posec3d_r50_fanin")
    pyskl = _pyskl_file(tmp_path / "pyskl.pth", {"module." + k: v for k, v in sd.items()},
                        "model = dict(type='Recognizer3D', backbone=dict(type='ResNet3dSlowOnly', in_channels=17, "
                        "base_channels=32, num_stages=3, out_indices=(2, ), stage_blocks=(4, 6, 3), "
                        "conv1_stride=(1, 1), pool1_stride=(1, 1), inflate=(0, 1, 1), spatial_strides=(2, 2, 2), "
                        "temporal_strides=(1, 1, 2)), cls_head=dict(type='I3DHead', in_channels=512, num_classes=60))")
    assert np.array_equal(create_backbone("posec3d", pyskl).run(arrays["input"])["backbone_features"],
                          out["backbone_features"])
    # pyskl writes the stem strides as (temporal, spatial) pairs
    assert settings_from_cfg({"config": "backbone=dict(conv1_stride=(1, 1), pool1_stride=(1, 2))"}) == {
        "conv1_stride_t": 1, "conv1_stride_s": 1, "pool1_stride_t": 1, "pool1_stride_s": 2}

    def plain(key: str) -> str:  # mmaction2's names -> names without mmcv's ConvModule
        for new, old in (("backbone.conv1.conv.weight", "backbone.conv1.weight"),
                         ("backbone.conv1.bn.", "backbone.bn1.")):
            key = key.replace(new, old)
        for k in "123":
            key = key.replace(f".conv{k}.conv.weight", f".conv{k}.weight").replace(f".conv{k}.bn.", f".bn{k}.")
        return key.replace("downsample.conv.", "downsample.0.").replace("downsample.bn.", "downsample.1.")

    renamed = {plain(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert "backbone.layer2.0.bn1.running_var" in renamed and "backbone.layer2.0.downsample.0.weight" in renamed
    path = tmp_path / "plain.pth"
    torch.save(renamed, path)
    bb = create_backbone("posec3d", path)
    assert any("ConvModule names" in n for n in bb.key_report.notes) and len(RENAMES) == 7
    assert np.array_equal(bb.run(arrays["input"])["backbone_features"], out["backbone_features"])


def test_strides_and_clip_length_come_from_the_files_config(tmp_path):
    torch.manual_seed(0)
    small = create_backbone("posec3d", base_channels=4, stage_blocks=(1, 2), num_class=5, in_channels=17)
    cfg = ("model = dict(backbone=dict(spatial_strides=(2, 1), temporal_strides=(1, 1), conv1_stride_s=2))\n"
           "val_pipeline = [dict(type='UniformSampleFrames', clip_len=32), dict(type='GeneratePoseTarget', "
           "sigma=0.7, with_kp=False, with_limb=True)]")
    assert settings_from_cfg({"cfg": cfg}) == {"spatial_strides": (2, 1), "temporal_strides": (1, 1),
                                               "conv1_stride_s": 2, "sigma": 0.7, "with_limb": True, "clip_len": 32}
    path = tmp_path / "small.pth"
    torch.save({"meta": {"cfg": cfg}, "state_dict": small.model.state_dict()}, path)
    bb = create_backbone("posec3d", path)
    assert bb.model.arch.stage_blocks == (1, 2) and bb.heatmap.limb and bb.heatmap.clip_len == 32
    out = bb.run(np.zeros((1, 17, 8, 32, 32), np.float32))
    # 2 stages: mmaction2's ResNet3dSlowOnly defaults where the config is silent (max-pool stride 2)
    assert bb.model.arch.pool1_stride_s == 2 and bb.model.arch.conv1_stride_s == 2
    assert out["backbone_features"].shape == (1, 32, 8, 4, 4) == (1,) + bb.model.arch.feature_shape(8, 32, 32)
    assert out["cls_scores"].shape == (1, 5)


def test_wrong_checkpoints_are_one_line_errors(tmp_path):
    agcn = tmp_path / "agcn.pth"
    torch.save({"meta": {}, "state_dict": golden_state_dict("mmaction_agcn_coco2d")}, agcn)
    with pytest.raises(UserError, match=r"agcn.pth is not a PoseC3D \(ResNet3dSlowOnly \+ I3DHead\) checkpoint: no "
                                        r"backbone.conv1.conv.weight"):
        create_backbone("posec3d", agcn)
    sd = golden_state_dict("mmaction_posec3d_r50")
    sd["backbone.layer3.2.conv3.conv.weight"] = sd["backbone.layer3.2.conv3.conv.weight"][:, :64]
    del sd["backbone.layer1.0.downsample.bn.running_var"]
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "cut.pth")
    with pytest.raises(UserError) as e:
        create_backbone("posec3d", tmp_path / "cut.pth")
    msg = str(e.value)
    assert "\n" not in msg and "does not fit posec3d" in msg
    assert "1 missing: backbone.layer1.0.downsample.bn.running_var" in msg
    assert "backbone.layer3.2.conv3.conv.weight: file (512, 64, 1, 1, 1) vs model (512, 128, 1, 1, 1)" in msg
    with pytest.raises(UserError, match="posec3d input must be a \\(N, C=17, T, H, W\\) heatmap volume"):
        create_backbone("posec3d", base_channels=4, stage_blocks=(1,)).run(np.zeros((1, 3, 8, 32, 32), np.float32))


# ----- CLI -----------------------------------------------------------------------------------------
def _run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_backbone_info_and_run_on_a_volume(tmp_path):
    _, arrays = load_golden("mmaction_posec3d_r50_fanin")
    ckpt = _save_mmaction("mmaction_posec3d_r50_fanin", tmp_path / "p.pth")
    np.save(tmp_path / "x.npy", arrays["input"])
    res = _run("backbone", "info", "posec3d", "--checkpoint", ckpt)
    assert res.exit_code == 0, res.output
    assert "260 keys matched" in res.output and "extracts:    joint, bone" in res.output
    res = _run("backbone", "run", "posec3d", "--checkpoint", ckpt, "--input", tmp_path / "x.npy",
               "--out", tmp_path / "y.npz", "--precision", "fp32")
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "y.npz") as z:
        assert sorted(z.files) == sorted(OUTPUTS) and "heatmaps" not in z.files
        for k in OUTPUTS:
            np.testing.assert_allclose(z[k], arrays[k], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("limb, key", [(False, "imgs_kp"), (True, "imgs_limb")])
def test_backbone_run_on_keypoints_writes_the_volume_it_built(tmp_path, limb, key):
    _, z = load_golden("mmaction_pose_heatmaps")
    np.savez(tmp_path / "ann.npz", **{k: np.asarray(v) for k, v in _annotation().items()})
    torch.manual_seed(0)
    small = create_backbone("posec3d", base_channels=4, stage_blocks=(1, 1, 1))
    torch.save({"meta": {}, "state_dict": small.model.state_dict()}, tmp_path / "s.pth")
    res = _run("backbone", "run", "posec3d", "--checkpoint", tmp_path / "s.pth", "--input", tmp_path / "ann.npz",
               "--out", tmp_path / "y.npz", "--precision", "fp32", *(["--limb"] if limb else []))
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "y.npz") as out:
        assert np.abs(out["heatmaps"] - z[key]).max() < ATOL
        assert np.array_equal(out["backbone_features"], small.run(out["heatmaps"])["backbone_features"])


def test_backbone_run_refuses_bad_keypoint_files_in_one_line(tmp_path):
    ann = _annotation()
    np.savez(tmp_path / "no_shape.npz", keypoint=ann["keypoint"], keypoint_score=ann["keypoint_score"])
    np.savez(tmp_path / "short.npz", **{**ann, "keypoint_score": ann["keypoint_score"][:, :10]})
    np.savez(tmp_path / "v18.npz", **{**ann, "keypoint": np.zeros((1, 100, 18, 2), np.float32),
                                      "keypoint_score": np.ones((1, 100, 18), np.float32)})
    for bad, text in (("no_shape.npz", "no_shape.npz lacks img_shape: give mmaction2's annotation fields"),
                      ("v18.npz", "v18.npz: keypoint has 18 joints; this posec3d model draws 17 keypoint channels"),
                      ("short.npz", "short.npz: keypoint_score must be (M, T, V) = (1, 100, 17), got (1, 10, 17)")):
        res = _run("backbone", "run", "posec3d", "--input", tmp_path / bad, "--out", tmp_path / "y.npz")
        assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output
        assert len([line for line in res.output.splitlines() if line.startswith("error")]) == 1
    assert not (tmp_path / "y.npz").exists()
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 4, 8, 8), np.float32))
    res = _run("backbone", "run", "aagcn", "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npz", "--limb")
    assert res.exit_code == 2 and "--limb is for backbones that draw heatmaps (posec3d), not aagcn" in res.output


# ----- extraction ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """3 generated videos x 4 clips and a tiny PoseC3D file (16-frame clips, from its config text)."""
    from migfuse.synth.skeletons import make_toy_dataset

    root = tmp_path_factory.mktemp("posec3d_extract")
    make_toy_dataset(root / "prep", classes=4, videos=3, clips_per_video=4, val_videos=1, seed=0)
    torch.manual_seed(0)
    small = create_backbone("posec3d", base_channels=4, stage_blocks=(1, 1, 1), num_class=4)
    for module in small.model.modules():  # statistics that keep the features well above fp16 steps
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.fill_(0.1)
    torch.save({"meta": {"cfg": "val_pipeline = [dict(type='UniformSampleFrames', clip_len=16)]"},
                "state_dict": small.model.state_dict()}, root / "tiny.pth")
    return root


@pytest.mark.parametrize("stream", ["joint", "bone"])
def test_extract_skeleton_with_posec3d_writes_the_backbone_features(toy, tmp_path, stream):
    from migfuse.data_cache.cache import TokenCache
    from migfuse.datasets.manifest import Manifest
    from migfuse.datasets.skeleton_layouts import get_layout

    cache = tmp_path / "c.zarr"
    res = _run("extract", "skeleton", "--data", toy / "prep", "--cache", cache, "--backbone", "posec3d",
               "--checkpoint", toy / "tiny.pth", "--stream", stream, "--precision", "fp32")
    assert res.exit_code == 0, res.output
    group = TokenCache(cache).group(f"{stream}/posec3d")
    m = Manifest.load(toy / "prep")
    assert len(group.done_ids()) == len(m.clips) == 12
    assert group.provenance["heatmaps"]["channels"] == ("limbs" if stream == "bone" else "keypoints")
    # one clip by hand: COCO-17 points of the prepared skeleton -> mmaction2's pipeline -> the network
    clip = m.clips[5]
    skel, mask = m.skeleton(clip.video_id)
    points = np.asarray(skel[clip.start_frame:clip.end_frame + 1][:, list(get_layout("coco-17").source)])
    points = points * np.asarray(mask[clip.start_frame:clip.end_frame + 1])[:, None, None]
    facts = m.videos[clip.video_id].measured
    ann = {"keypoint": points[None, ..., :2], "keypoint_score": points[None, ..., 2],
           "img_shape": (facts.height, facts.width) if facts else (720, 1280), "total_frames": len(points)}
    bb = create_backbone("posec3d", toy / "tiny.pth")
    volume = build_volume(ann, HeatmapConfig(clip_len=16, limb=stream == "bone"))
    expected = bb.run(volume)["backbone_features"][0]
    row = group.read(clip.clip_id)["features"]
    assert row.shape == (64, 8, 64) and row.dtype == np.float16
    assert volume.max() > 0.5 and np.abs(expected).max() > 1
    np.testing.assert_allclose(row.astype(np.float32), expected.reshape(64, 8, 64), atol=1e-3, rtol=2e-3)


def test_extract_skeleton_posec3d_refuses_agcn_options_in_one_line(toy, tmp_path):
    res = _run("extract", "skeleton", "--data", toy / "prep", "--cache", tmp_path / "c.zarr", "--backbone", "posec3d",
               "--checkpoint", toy / "tiny.pth", "--length", "32")
    assert res.exit_code == 2 and "--layout and --length are for agcn/aagcn" in res.output
    assert not (tmp_path / "c.zarr").exists()


def test_extract_refuses_a_limb_model_on_the_joint_stream(toy, tmp_path):
    sd = torch.load(toy / "tiny.pth", weights_only=True)["state_dict"]
    torch.save({"meta": {"cfg": "dict(type='GeneratePoseTarget', with_kp=False, with_limb=True)"}, "state_dict": sd},
               tmp_path / "limb.pth")
    res = _run("extract", "skeleton", "--data", toy / "prep", "--cache", tmp_path / "c.zarr", "--backbone", "posec3d",
               "--checkpoint", tmp_path / "limb.pth", "--stream", "joint")
    assert res.exit_code == 2 and "limb.pth is a limb model: pass --stream bone" in res.output
    assert not (tmp_path / "c.zarr").exists()


def test_posec3d_joint_and_bone_groups_feed_the_pose_head(toy, tmp_path):
    cache = tmp_path / "c.zarr"
    for stream in ("joint", "bone"):
        res = _run("extract", "skeleton", "--data", toy / "prep", "--cache", cache, "--backbone", "posec3d",
                   "--checkpoint", toy / "tiny.pth", "--stream", stream, "--precision", "fp32")
        assert res.exit_code == 0, res.output
    res = _run("cache", "view", cache, "--defaults")
    assert res.exit_code == 0 and "joint          -> views/joint" in res.output and "views/bone" in res.output
    res = _run("fuse", "train", "--cache", cache, "--data", toy / "prep", "--task", "mg", "--out", tmp_path / "run",
               "--head", "pose", "--epochs", "1", "--precision", "fp32")
    assert res.exit_code == 0, res.output
    assert "best epoch 1" in res.output and (tmp_path / "run" / "best.pt").is_file()


def test_the_extraction_loader_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import migfuse.extract.skeleton.heatmap_extractor, migfuse.backbones.pose_heatmaps; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_a_config_saved_beside_a_file_without_one_gives_the_strides_read_as_text(tmp_path):
    torch.manual_seed(0)
    small = create_backbone("posec3d", base_channels=4, stage_blocks=(1, 1, 1), num_class=5)
    path = tmp_path / "slowonly_r50_toy-keypoint_20220815-38db104b.pth"
    torch.save({"meta": {}, "state_dict": small.model.state_dict()}, path)  # weights only: no config text
    assert create_backbone("posec3d", path).model.arch.spatial_strides == (2, 2, 2)  # the PoseC3D defaults
    beside = tmp_path / "slowonly_r50_toy-keypoint.py"  # the model zoo name without its date-hash suffix
    beside.write_text("raise SystemExit('a config beside a checkpoint must never run')\n"
                      "model = dict(backbone=dict(type='ResNet3dSlowOnly', spatial_strides=(1, 2, 2), "
                      "temporal_strides=(1, 1, 1)))\nval_pipeline = [dict(type='UniformSampleFrames', clip_len=16)]\n")
    bb = create_backbone("posec3d", path)
    assert bb.model.arch.spatial_strides == (1, 2, 2) and bb.model.arch.temporal_strides == (1, 1, 1)
    assert bb.heatmap.clip_len == 16 and bb.provenance()["config_beside_checkpoint"] == beside.name
    assert bb.run(np.zeros((1, 17, 16, 64, 64), np.float32))["backbone_features"].shape == (1, 64, 16, 16, 16)
    assert f"read from the config beside it, {beside.name}: clip_len=16, spatial_strides=(1, 2, 2), " \
           "temporal_strides=(1, 1, 1)" in bb.key_report.notes
    # the file's own config text wins over a config beside it
    torch.save({"meta": {"cfg": "spatial_strides=(2, 2, 1)"}, "state_dict": small.model.state_dict()}, path)
    own = create_backbone("posec3d", path)
    assert own.model.arch.spatial_strides == (2, 2, 1) and "config_beside_checkpoint" not in own.provenance()
