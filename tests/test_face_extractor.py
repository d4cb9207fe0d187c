"""Face extraction through the runner: masks follow the person, stored features are SwinFace's on the
aligned crops, missing videos are recorded, a rerun resumes."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from migfuse.datasets.manifest import Manifest
from migfuse.datasets.prepare import prepare
from migfuse.data_cache.store import TokenCache
from migfuse.extract.entry import extract
from migfuse.extract.face.extractor import FaceLoader
from migfuse.extract.interface import RunOptions
from migfuse.extract.sampling import ContextSampling
from migfuse.synth import generate_dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("face")
    data = generate_dataset(root / "data", videos=2, clips_per_video=2, progress=False)
    prepare(data, root / "prepared", progress=False)
    torch.set_num_threads(1)
    clip = extract("face", root / "prepared", root / "cache.zarr", options=RunOptions(workers=0), frames=3)
    ctx = extract("face_context", root / "prepared", root / "cache.zarr", options=RunOptions(workers=0),
                  frames=3, context_windows=4)
    return root, data, clip, ctx


def _frame(data, video_id: str, index: int) -> np.ndarray:
    path = next(data.rglob(f"{video_id}.mp4"))
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise IndexError(index)


def test_clip_faces_are_found_and_features_are_swinface_on_the_aligned_crop(demo):
    root, data, clip, _ = demo
    assert clip.ok and clip.done == 4
    g = TokenCache(root / "cache.zarr").group("face/swinface")
    assert g.arrays["features"].shape == (3, 512) and g.arrays["mask"].shape == (3,)
    # the NMS MTCNN ran through is recorded where the group was made (not compared on reopen)
    from migfuse.backbones._torchvision import shim_record

    assert g.info.get("environment", {}).get("mtcnn_nms") == shim_record()
    row = g.read("0026_0")
    assert row["mask"].all()  # the figure is in view during every clip
    # recompute one face frame by hand: detect, align, SwinFace (same seeded random weights)
    m = Manifest.load(root / "prepared")
    c = m.clip("0026_0")
    loader = FaceLoader(paths={}, scope="clip", frames=3, clips={"0026_0": (c.start_frame, c.end_frame)})
    t = int(loader.plan("0026_0", None)[1])
    crops, mask = loader._faces(_frame(data, "0026", t)[None])
    assert mask.tolist() == [True]
    from migfuse.extract.face.align import to_model_input
    from migfuse.backbones.registry import create_backbone

    torch.manual_seed(0)
    model = create_backbone("swinface").model
    with torch.inference_mode():
        feat, logits, _ = model.expression(torch.from_numpy(to_model_input(crops)))
    np.testing.assert_allclose(row["features"][1], feat[0].numpy(), atol=2e-2, rtol=2e-2)  # fp16 storage
    np.testing.assert_allclose(row["logits"][1], logits[0].numpy(), atol=2e-2, rtol=2e-2)


def test_context_windows_mask_frames_without_anyone(demo):
    root, data, _, ctx = demo
    assert ctx.ok and ctx.done == 2
    g = TokenCache(root / "cache.zarr").group("face_context/swinface")
    row = g.read("0026")
    assert row["features"].shape == (4, 3, 512) and row["mask"].shape == (4, 3)
    truth = json.loads((data / "ground_truth.json").read_text())["videos"]["0026"]
    m = Manifest.load(root / "prepared")
    loader = FaceLoader(paths={}, scope="context", frames=3, context=ContextSampling(windows=4))
    plan = loader.plan("0026", m.videos["0026"].n_frames)
    a, b = truth["absent_frames"]
    absent = (plan >= a) & (plan <= b)
    assert (row["mask"] == ~absent).all()
    assert not row["features"][~row["mask"]].any()  # masked entries hold zeros, never a fake face


def test_missing_video_is_recorded_and_rerun_resumes(demo, tmp_path):
    root, data, _, _ = demo
    m = Manifest.load(root / "prepared")
    video = next(data.rglob("0046.mp4"))
    video.rename(tmp_path / "gone.mp4")
    try:
        again = extract("face", root / "prepared", root / "cache.zarr", options=RunOptions(workers=0), frames=3)
        assert again.done == 0 and again.skipped == len(m.clips)  # everything was done: nothing redone
        fresh = extract("face", root / "prepared", tmp_path / "other.zarr", options=RunOptions(workers=0), frames=3)
        failed = {cid: stage for cid, stage, _ in fresh.failed}
        assert failed == {"0046_0": "open", "0046_1": "open"}
        assert fresh.done == 2
    finally:
        (tmp_path / "gone.mp4").rename(video)


@pytest.mark.parametrize("size", [1, 8, 16])
def test_frames_too_small_for_any_face_have_no_face_instead_of_crashing(size):
    """MTCNN builds no image pyramid for a picture smaller than its minimum face (20 px) and fails
    inside (torch.cat of nothing); such frames simply have no face."""
    from migfuse.extract.face.detect import FaceDetector

    faces = FaceDetector().detect(np.full((3, size, size, 3), 128, np.uint8))
    assert len(faces) == 3 and all(len(f) == 0 for f in faces)


def test_a_tiny_video_is_stored_fully_masked_not_failed(tmp_path):
    """../shared/realworld/face-track-tiny-frames-crash: a 16x16 video without a face, both scopes."""
    from migfuse.datasets.manifest import Clip, VideoInfo

    path = tmp_path / "0071.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        for _ in range(30):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 128, np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    Manifest(clips=[Clip.make("0071", 0, 0, 20, raw_class=5)],
             videos={"0071": VideoInfo("0071", video_path=path, n_frames=30)}).save(tmp_path / "prep")
    for track in ("face", "face_context"):
        s = extract(track, tmp_path / "prep", tmp_path / "c.zarr", options=RunOptions(workers=0), frames=2,
                    context_windows=1)
        assert s.ok and s.done == 1, s.failed
        row_id = "0071_0" if track == "face" else "0071"
        row = TokenCache(tmp_path / "c.zarr").group(f"{track}/swinface").read(row_id)
        assert not row["mask"].any()
