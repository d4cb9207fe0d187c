"""The skeleton track on REAL iMiGUE data: OpenPose output of video 298 and its 56 labelled clips."""
from __future__ import annotations

import csv
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from migfuse.datasets.manifest import Clip, Manifest, VideoInfo, write_skeleton
from migfuse.datasets.openpose import read_openpose_folder
from migfuse.backbones.graphs import get_layout
from migfuse.extract.skeleton.preprocess import PreprocessConfig, bones, clip_frames, joints
from safe_extract import extract_tar

VIDEO = 298
LENGTH = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clips_of_298(imigue_dir: Path) -> list[Clip]:
    with open(imigue_dir / "labels_20200831.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["video_id"]) == VIDEO]
    return [Clip.make(VIDEO, int(r["label_id"]) - 1, int(r["start_frame"]), int(r["end_frame"]),
                      raw_class=int(r["class"]), subject=int(r["subject_id"]), win_lose=r["win_or_lose"])
            for r in rows]


@pytest.fixture(scope="module")
def prepared_298(imigue_dir, tmp_path_factory) -> Path:
    """A PREPARED folder holding the 56 real clips of video 298 and the OpenPose frames they cover."""
    tmp = tmp_path_factory.mktemp("real298")
    clips = _clips_of_298(imigue_dir)
    wanted = set()
    for c in clips:
        wanted.update(range(c.start_frame, c.end_frame + 1))
    frame_re = re.compile(r"_(\d+)_keypoints\.json$")
    with tarfile.open(imigue_dir / "openpose_298.tar.gz") as tf:
        members = [m for m in tf if m.isfile() and (g := frame_re.search(m.name)) and int(g.group(1)) in wanted]
        extract_tar(tf, tmp / "json", members=members)  # not extractall(filter=): needs Python 3.11.4
    array, mask, _ = read_openpose_folder(tmp / "json" / "298", progress=False)
    out = tmp / "prepared"
    info = VideoInfo(f"{VIDEO:04d}", subject=22, win_lose="Win")
    info.skeleton = write_skeleton(out, info.video_id, array, mask)
    info.n_frames = len(array)
    Manifest(clips=clips, videos={info.video_id: info}).save(out)
    return out


def test_fixture_holds_the_56_real_clips(prepared_298):
    m = Manifest.load(prepared_298)
    assert len(m.clips) == 56 and m.clip("0298_0").start_frame == 168 and m.clip("0298_55").end_frame == 20195
    skel, mask = m.skeleton("0298")
    assert skel.shape == (20196, 137, 3) and mask[168:258].all()


def _clip_joints(m: Manifest, clip_id: str, layout: str) -> tuple[np.ndarray, int]:
    skel, mask = m.skeleton("0298")
    c = m.clip(clip_id)
    ci = joints(*clip_frames(skel, mask, c.start_frame, c.end_frame), get_layout(layout),
                PreprocessConfig(layout=layout, length=LENGTH))
    return ci.x[..., 0], ci.person_frames  # (3, L, V)


def test_imigue_layout_on_real_frames_puts_hands_at_the_right_wrists(prepared_298):
    """If the 137-point indices were wrong, hand wrists would not sit on the body wrist of their side."""
    m = Manifest.load(prepared_298)
    lay = get_layout("imigue")
    node = {n: i for i, n in enumerate(lay.nodes)}
    near, swapped, widths = [], [], []
    for cid in m.ids():
        x, person = _clip_joints(m, cid, "imigue")
        if person == 0:
            continue
        seen = lambda n: x[2, :, node[n]] > 0  # noqa: E731
        for side, other in (("l", "r"), ("r", "l")):
            ok = seen(f"{side}_hand_wrist") & seen(f"{side}_wrist") & seen(f"{other}_wrist")
            hand = x[:2, ok, node[f"{side}_hand_wrist"]]
            near.extend(np.linalg.norm(hand - x[:2, ok, node[f"{side}_wrist"]], axis=0))
            swapped.extend(np.linalg.norm(hand - x[:2, ok, node[f"{other}_wrist"]], axis=0))
        both = seen("l_shoulder") & seen("r_shoulder")
        widths.extend(np.linalg.norm(x[:2, both, node["l_shoulder"]] - x[:2, both, node["r_shoulder"]], axis=0))
        assert np.isfinite(x).all()
    assert len(near) > 500
    # Units are shoulder widths: the hand's wrist is within a fifth of one of the body wrist ...
    assert np.median(near) < 0.2, np.median(near)
    # ... and far from the other wrist; the scale is the clip's median shoulder width.
    assert np.median(swapped) > 0.5
    assert 0.8 < np.median(widths) < 1.25


def test_openpose22_fingertips_hang_off_their_wrist(prepared_298):
    m = Manifest.load(prepared_298)
    lay = get_layout("openpose22")
    node = {n: i for i, n in enumerate(lay.nodes)}
    dists = {"r": [], "l": []}
    for cid in m.ids()[:20]:
        x, person = _clip_joints(m, cid, "openpose22")
        for side in dists:
            wrist = node[f"{side}_wrist"]
            tip = node[f"{side}_middle_tip"]
            ok = (x[2, :, wrist] > 0) & (x[2, :, tip] > 0)
            dists[side].extend(np.linalg.norm(x[:2, ok, tip] - x[:2, ok, wrist], axis=0))
    for side, d in dists.items():
        assert len(d) > 50 and 0.05 < np.median(d) < 0.6, (side, np.median(d))


def test_bones_on_real_frames(prepared_298):
    m = Manifest.load(prepared_298)
    lay = get_layout("imigue")
    x = _clip_joints(m, "0298_2", "imigue")[0][..., None]  # (3, L, V, 1)
    b = bones(x, lay)
    node = {n: i for i, n in enumerate(lay.nodes)}
    e, s = node["l_elbow"], node["l_shoulder"]
    both = (x[2, :, e, 0] > 0) & (x[2, :, s, 0] > 0)
    assert both.sum() > LENGTH // 2
    np.testing.assert_array_equal(b[:2, both, e, 0], x[:2, both, e, 0] - x[:2, both, s, 0])
    np.testing.assert_array_equal(b[2, :, e, 0], np.minimum(x[2, :, e, 0], x[2, :, s, 0]))
    assert not b[:, ~both, e].any()  # a bone with a missing end is zero
    assert not b[:2, :, lay.center].any() and b[2, :, lay.center].any()  # root bone: no vector, neck seen
    assert np.isfinite(b).all()


@pytest.fixture(scope="module")
def small_checkpoints(prepared_298, tmp_path_factory) -> dict[str, Path]:
    """A joint checkpoint trained one epoch on the real clips, and a fresh bone one (tiny widths)."""
    from migfuse.finetune.skeleton import TrainConfig, build_model, train_skeleton

    tmp = tmp_path_factory.mktemp("ckpt298")
    cfg = TrainConfig(stream="joint", length=LENGTH, epochs=1, batch_size=16, base_channels=8, lr=0.01)
    res = train_skeleton(prepared_298, tmp / "joint", cfg)
    bone_cfg = TrainConfig(stream="bone", length=LENGTH, base_channels=8)
    torch.manual_seed(0)
    meta = {"migfuse": {"arch": "agcn", "stream": "bone", "layout": "imigue",
                        "preprocess": bone_cfg.preprocess().to_dict()}}
    torch.save({"meta": meta, "state_dict": build_model(bone_cfg).state_dict()}, tmp / "bone.pt")
    return {"joint": res.best_checkpoint, "bone": tmp / "bone.pt", "joint_history": res.history}


def test_training_runs_on_real_clips(small_checkpoints):
    (row,) = small_checkpoints["joint_history"]
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"]) and row["val_top1"] is None  # one video: no val


def test_extract_both_streams_of_the_real_clips(prepared_298, small_checkpoints, tmp_path):
    from migfuse.data_cache.store import DONE, FAILED, TokenCache
    from migfuse.backbones.registry import create_backbone
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions
    from migfuse.extract.skeleton.preprocess import clip_input

    cache = tmp_path / "cache.zarr"
    m = Manifest.load(prepared_298)
    skel, mask = m.skeleton("0298")
    no_person = {c.clip_id for c in m.clips if not mask[c.start_frame:c.end_frame + 1].any()}
    for stream in ("joint", "bone"):
        summary = extract(stream, prepared_298, cache, options=RunOptions(batch_size=16),
                          checkpoint=small_checkpoints[stream])
        assert summary.done == 56 - len(no_person)
        assert {f[0] for f in summary.failed} == no_person
        assert all(f[1] == "skeleton" and "no person detected" in f[2] for f in summary.failed)
        g = TokenCache(cache).group(f"{stream}/agcn")
        status = g.status()
        assert int((status == DONE).sum()) == 56 - len(no_person) and int((status == FAILED).sum()) == len(no_person)
        feats = g.read_many([i for i in m.ids() if i not in no_person], names=["features"])["features"]
        assert feats.shape == (56 - len(no_person), 32, LENGTH // 4, 55) and feats.dtype == np.float16
        assert np.isfinite(feats).all() and feats.any()
        # the cached map is the model's own output for that clip (fp16)
        bb = create_backbone("agcn", small_checkpoints[stream])
        c = m.clip("0298_2")
        x = clip_input(*clip_frames(skel, mask, c.start_frame, c.end_frame), stream,
                       PreprocessConfig(layout="imigue", length=LENGTH)).x
        ref = bb.run(x[None])["l10_features"][0]
        np.testing.assert_allclose(g.read("0298_2")["features"].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        assert g.provenance["stream"] == stream and g.provenance["preprocess"]["length"] == LENGTH
    # rerun: everything is done or failed already, nothing is recomputed (the same --batch-size: it is
    # recorded, as the forward always runs on that many clips)
    again = extract("joint", prepared_298, cache, options=RunOptions(batch_size=16),
                    checkpoint=small_checkpoints["joint"])
    assert again.done == 0 and again.skipped == 56


def test_real_clip_with_the_person_gone_for_a_while_stays_finite(prepared_298):
    """Video 298 has a person in every clip frame, so blank 40 real frames as if the player left."""
    m = Manifest.load(prepared_298)
    skel, mask = m.skeleton("0298")
    c = m.clip("0298_2")  # frames 1279-1480
    frames, fmask = (np.array(a) for a in clip_frames(skel, mask, c.start_frame, c.end_frame))
    frames[100:140] = 0.0
    fmask[100:140] = False
    lay = get_layout("imigue")
    config = PreprocessConfig(length=202)  # one sample per frame: frame i -> index i
    x = joints(frames, fmask, lay, config).x[..., 0]
    full = joints(np.array(skel[c.start_frame:c.end_frame + 1]), None, lay, config).x[..., 0]
    assert np.isfinite(x).all()
    assert not x[2, 100:140].any()  # the gap is flagged unseen ...
    np.testing.assert_array_equal(x[:2, 100:120], np.repeat(x[:2, 99:100], 20, axis=1))  # ... holds frame 99
    np.testing.assert_array_equal(x[:2, 120:140], np.repeat(x[:2, 140:141], 20, axis=1))  # ... then frame 140
    # outside the gap nothing changed but the clip's centre/scale (medians over fewer frames): same shape
    np.testing.assert_array_equal(x[2, :100], full[2, :100])
    missing = frames[:, list(lay.source), 2] < config.min_confidence  # real undetected points (hands)
    assert missing[:100].any() and not x[:, :100][:, missing[:100]].any()  # are exactly zero
