"""`stream_clips`, the one decoder of the RGB tracks: requests are served as soon as their frames are
decoded, frames are released after the last request needing them, and a decode error in the middle of
a video fails only the requests not yet served - in the video, context and face tracks alike."""
from __future__ import annotations

import logging
import weakref

import numpy as np
import pytest
from test_decode_util import damage_frame, read_index, write_video
from test_extract_video_util import TinyVideoExtractor

from migfuse.datasets.manifest import Clip, Manifest, VideoInfo
from migfuse.data_cache.store import TokenCache
from migfuse.extract.decode import DecodeError, PastEnd, stream_clips
from migfuse.extract.face.extractor import FaceLoader
from migfuse.extract.interface import WorkItem
from migfuse.extract.runner import run_extraction
from migfuse.extract.sampling import ContextSampling, context_windows, uniform_indices

DAMAGED_AT = 120  # the packet of this frame is zeroed; the frames before it decode


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("stream") / "numbered.mp4", 200, gop=25)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    path = write_video(tmp_path_factory.mktemp("damaged") / "0001.mp4", 200, gop=25)
    return damage_frame(path, DAMAGED_AT)


def numbers(frames: np.ndarray) -> list:
    """The burnt-in frame numbers of an (..., H, W, 3) array, shaped like its leading axes."""
    lead = frames.shape[:-3]
    return np.array([read_index(f) for f in frames.reshape(-1, *frames.shape[-3:])]).reshape(lead).tolist()


def test_each_request_comes_as_soon_as_its_last_frame_is_decoded_shaped_like_its_indices(video):
    seen: list[int] = []  # frames decoded so far, in order

    def note(rgb):
        seen.append(read_index(rgb))
        return rgb

    requests = {"windows": [[50, 52], [54, 56]], "clip": [0, 5, 10, 10], "long": [10, 150], "last": [199]}
    got = []
    for key, frames in stream_clips(video, requests, transform=note):
        got.append((key, numbers(frames), seen[-1]))
    assert got == [("clip", [0, 5, 10, 10], 10),
                   ("windows", [[50, 52], [54, 56]], 56),
                   ("long", [10, 150], 150),
                   ("last", [199], 199)]
    # each needed frame decoded (and transformed) once, even when two requests share it
    assert seen == [0, 5, 10, 50, 52, 54, 56, 150, 199]


def test_frames_are_released_after_the_last_request_needing_them(video):
    alive: list[weakref.ref] = []
    peak = 0

    def track(rgb):
        nonlocal peak
        out = rgb.copy()
        alive.append(weakref.ref(out))
        peak = max(peak, sum(r() is not None for r in alive))
        return out

    clips = {f"c{j}": uniform_indices(20 * j, 20 * j + 15, 8) for j in range(10)}  # 80 frames in all
    held_at_yield = []
    for _, frames in stream_clips(video, clips, transform=track):
        assert frames.shape == (8, 96, 128, 3)
        held_at_yield.append(sum(r() is not None for r in alive))
    assert len(held_at_yield) == 10
    assert held_at_yield == [0] * 10  # a served clip's frames are gone: only the yielded stack remains
    assert peak == 8  # never more than one clip's frames held


def test_a_decode_error_mid_video_fails_only_the_requests_not_yet_served(damaged):
    requests = {"early": [0, 20, 40], "before": [60, 90, 110], "to_the_damage": [100, DAMAGED_AT - 1],
                "across": [110, 125], "after": [150, 190]}
    got = dict(stream_clips(damaged, requests))
    assert list(got) == ["early", "before", "to_the_damage", "across", "after"]  # each request exactly once
    assert numbers(got["early"]) == [0, 20, 40] and numbers(got["before"]) == [60, 90, 110]
    assert numbers(got["to_the_damage"]) == [100, DAMAGED_AT - 1]  # the last sound frame still serves
    for key in ("across", "after"):
        assert isinstance(got[key], DecodeError) and got[key].stage == "decode"
        assert "0001.mp4" in str(got[key]) and "Invalid data" in str(got[key])


def test_requests_past_the_end_fail_with_the_frames_that_never_came(video):
    got = dict(stream_clips(video, {"in": [190, 199], "out": [190, 199, 200, 230]}))
    assert numbers(got["in"]) == [190, 199]
    err = got["out"]
    assert isinstance(err, PastEnd) and err.stage == "decode"
    assert err.missing == [200, 230] and err.n_frames == 200
    assert str(err) == ("frames [200, 230] are past the end of numbered.mp4 (it decodes 200 frames at 25 fps); "
                        "check the labels")


def test_an_unreadable_file_fails_every_request_at_open(tmp_path):
    got = list(stream_clips(tmp_path / "nope.mp4", {"a": [0], "b": [5]}))
    assert [k for k, _ in got] == ["a", "b"]
    assert all(isinstance(e, DecodeError) and e.stage == "open" and "not found" in str(e) for _, e in got)


def test_empty_or_negative_requests_are_caller_bugs(video):
    with pytest.raises(ValueError, match="no frame indices"):
        list(stream_clips(video, {"a": []}))
    with pytest.raises(ValueError, match="negative frame index -1"):
        list(stream_clips(video, {"a": [-1, 3]}))


# ------------------------------------------------------------------------------------------------
# the three RGB tracks on a video damaged in the middle
# ------------------------------------------------------------------------------------------------
CLIPS = [(0, 40), (60, 100), (150, 190)]  # before, before, after the damage


@pytest.fixture(scope="module")
def damaged_manifest(damaged):
    clips = [Clip.make("0001", k, s, e, raw_class=1 + k) for k, (s, e) in enumerate(CLIPS)]
    return Manifest(clips=clips, videos={"0001": VideoInfo("0001", video_path=damaged, n_frames=200)})


def test_video_track_keeps_the_clips_before_the_damage(damaged_manifest, tmp_path):
    s = run_extraction(TinyVideoExtractor(damaged_manifest, "video"), tmp_path / "v.zarr", workers=0, batch_size=2)
    assert s.done == 2
    assert [(r, stage) for r, stage, _ in s.failed] == [("0001_2", "decode")]
    assert "clip 0001_2 (frames 150..190): 0001.mp4: InvalidDataError" in s.failed[0][2]
    g = TokenCache(tmp_path / "v.zarr").group("video/tiny")
    assert sorted(g.done_ids()) == ["0001_0", "0001_1"]


def test_context_track_keeps_the_windows_before_the_damage(damaged_manifest, tmp_path):
    ex = TinyVideoExtractor(damaged_manifest, "context", context_sampling=ContextSampling(windows=4))
    s = run_extraction(ex, tmp_path / "c.zarr", workers=0, batch_size=4)
    assert s.ok and s.done == 1
    windows = context_windows(200, k=4)
    assert windows.max(axis=1).tolist() == [60, 104, 154, 199]  # two windows end before the damage
    row = TokenCache(tmp_path / "c.zarr").group("context/tiny").read("0001")
    assert row["valid"].tolist() == [True, True, False, False]
    assert row["tokens"][:2].any() and not row["tokens"][2:].any()


def test_face_track_keeps_the_clips_before_the_damage(damaged, caplog):
    clips = {f"0001_{k}": c for k, c in enumerate(CLIPS)}
    loader = FaceLoader(paths={"0001": str(damaged)}, scope="clip", frames=3, clips=clips)
    samples = {s.id: s for s in loader(WorkItem("0001", tuple(clips)))}
    assert list(samples) == ["0001_0", "0001_1", "0001_2"]
    for row in ("0001_0", "0001_1"):  # decoded and searched for faces (numbered frames show none)
        assert samples[row].failure is None and samples[row].inputs["mask"].tolist() == [False] * 3
    fail = samples["0001_2"].failure
    assert fail.stage == "decode" and fail.message.startswith("clip 0001_2 (frames 150..190): "
                                                              "0001.mp4: InvalidDataError")

    # face_context: the windows after the damage stay masked, the row is kept and the loss logged
    ctx = FaceLoader(paths={"0001": str(damaged)}, scope="context", frames=2, context=ContextSampling(windows=4))
    with caplog.at_level(logging.WARNING):
        (sample,) = ctx(WorkItem("0001", ("0001",)))
    assert sample.failure is None and sample.inputs["mask"].shape == (4, 2)
    assert "face context of video 0001: 2 of 4 windows decoded, the rest masked" in caplog.text


def test_face_clip_past_the_end_names_its_frames_and_the_video_length(video):
    loader = FaceLoader(paths={"v": str(video)}, scope="clip", frames=2, clips={"v_0": (0, 20), "v_1": (180, 230)})
    samples = {s.id: s for s in loader(WorkItem("v", ("v_0", "v_1")))}
    assert samples["v_0"].failure is None
    assert samples["v_1"].failure.stage == "decode"
    assert samples["v_1"].failure.message == ("clip v_1 (frames 180..230): frames [218] are past the end of "
                                              "numbered.mp4 (it decodes 200 frames at 25 fps); check the labels")
