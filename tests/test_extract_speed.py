"""What makes extraction fast at scale, checked on the CPU: the run says where its time went, device
defaults (GPU-sized batches, a loader per core), FFmpeg threads shared out among loader workers, the
GPU decoder's adapter (through a stand-in for torchcodec built on PyAV: same frames, same failures,
the fallback), and MTCNN on several rows per call giving the per-row result."""
from __future__ import annotations

import logging
import sys
import time
import types

import numpy as np
import pytest
from test_decode_util import read_index, write_video
from test_runner import ArrayExtractor

from migfuse.extract import decode
from migfuse.extract.decode import DecodeError, PastEnd, stream_clips
from migfuse.extract.decode_gpu import choose_decoder, stream_clips_gpu, stream_video
from migfuse.extract.interface import RunOptions, Sample, WorkItem
from migfuse.extract.loader_pool import decode_threads
from migfuse.extract.report import format_summary
from migfuse.extract.runner import run_extraction, run_extractor
from migfuse.runtime import Runtime
from migfuse.extract.video import resize_crop, resize_crop_tensor


# ------------------------------------------------------------------------------------------------
# where the time went
# ------------------------------------------------------------------------------------------------
class SlowLoader:
    """Each row takes `load_s` to load (a decoder's work)."""

    def __init__(self, load_s: float):
        self.load_s = load_s

    def __call__(self, item: WorkItem):
        for row in item.ids:
            time.sleep(self.load_s)
            yield Sample(row, inputs={"x": np.zeros(3, np.float32)})


class SlowExtractor(ArrayExtractor):
    """ArrayExtractor whose loader takes `load_s` per row and whose forward takes `forward_s` per batch."""

    def __init__(self, load_s: float, forward_s: float):
        super().__init__()
        self.load_s, self.forward_s = load_s, forward_s

    def loader(self):
        return SlowLoader(self.load_s)

    def forward(self, inputs):
        time.sleep(self.forward_s)
        return super().forward(inputs)


def test_the_summary_says_where_the_time_went_when_loading_sets_the_pace(tmp_path):
    s = run_extraction(SlowExtractor(load_s=0.05, forward_s=0.0), tmp_path / "c.zarr", workers=0, batch_size=4)
    rows = s.done + len(s.failed)
    assert set(s.timings) == {"start", "loaders", "forward", "writes"}
    assert s.timings["loaders"] >= 0.05 * rows  # every row's load, in this process
    assert s.timings["forward"] < s.timings["loaders"] / 2
    assert sum(s.timings.values()) <= s.seconds + 1e-3
    assert s.settings == {"batch": 4, "workers": 0, "decode_threads": 0}
    line = next(x for x in format_summary(s).splitlines() if x.startswith("time: "))
    assert f"waiting for loaders {s.timings['loaders']:.1f} s" in line
    assert "; batch 4, 0 loader workers x 0 decode threads" in line


def test_the_summary_says_where_the_time_went_when_the_model_sets_the_pace(tmp_path):
    s = run_extraction(SlowExtractor(load_s=0.0, forward_s=0.3), tmp_path / "c.zarr", workers=1, batch_size=4)
    batches = -(-(s.done) // 4)
    assert s.timings["forward"] >= 0.3 * batches
    assert s.timings["forward"] > s.timings["loaders"]
    share = round(100 * s.timings["forward"] / s.seconds)
    assert f"({share} % of the run)" in format_summary(s)
    assert s.settings["workers"] == 1 and s.settings["decode_threads"] == decode_threads(1)


# ------------------------------------------------------------------------------------------------
# device defaults and threads
# ------------------------------------------------------------------------------------------------
def test_batch_and_workers_default_by_device(monkeypatch):
    from migfuse.extract import interface

    ex = ArrayExtractor()
    assert (ex.default_batch("cpu"), ex.default_batch("cuda:1")) == (8, 32)
    monkeypatch.setattr(interface, "usable_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (ex.default_workers("cpu"), ex.default_workers("cuda")) == (2, 15)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun ranks share the node's cores
    assert ex.default_workers("cuda:3") == 3


def test_each_track_keeps_its_cpu_defaults_and_gets_gpu_sized_batches():
    from migfuse.extract.face.extractor import FaceExtractor
    from migfuse.extract.skeleton.extractor import SkeletonExtractor
    from migfuse.extract.video import VideoExtractor

    class Clips:
        clips, videos = [], {}

    video, context = VideoExtractor(Clips(), "video"), VideoExtractor(Clips(), "context")
    face = FaceExtractor(Clips(), "clip")
    assert [video.default_batch("cpu"), context.default_batch("cpu"), face.default_batch("cpu")] == [4, 8, 32]
    assert [video.default_batch("cuda"), context.default_batch("cuda"), face.default_batch("cuda")] == [32, 32, 256]
    assert (video.cpu_workers, face.cpu_workers, SkeletonExtractor.cpu_workers) == (2, 1, 0)
    assert (SkeletonExtractor.cpu_batch, SkeletonExtractor.gpu_batch) == (64, 256)


def test_unset_batch_is_the_device_default_and_recorded(tmp_path):
    from migfuse.data_cache.store import TokenCache

    s = run_extractor(ArrayExtractor(), tmp_path / "c.zarr", Runtime.resolve(device="cpu", precision="fp32"),
                      RunOptions())
    assert s.settings["batch"] == 8 and s.settings["workers"] == 2
    assert TokenCache(tmp_path / "c.zarr").group("test/array").provenance["compute"]["forward_batch"] == 8


def test_decode_threads_share_the_cores_among_the_workers():
    assert [decode_threads(w, cpus=16) for w in (1, 2, 4, 15, 32)] == [16, 8, 4, 1, 1]
    assert decode_threads(2, cpus=2) == 1


class ThreadsLoader:
    """Reports the FFmpeg thread count its worker process was given."""

    def __call__(self, item: WorkItem):
        for row in item.ids:
            yield Sample(row, inputs={"x": np.full(3, decode._THREADS, np.float32)})


class ThreadsExtractor(ArrayExtractor):
    def loader(self):
        return ThreadsLoader()


def test_loader_workers_open_videos_with_their_share_of_threads(tmp_path):
    s = run_extraction(ThreadsExtractor(), tmp_path / "c.zarr", workers=2, batch_size=2)
    from migfuse.data_cache.store import TokenCache

    g = TokenCache(tmp_path / "c.zarr").group("test/array")
    seen = {float(g.read(i)["y"][0]) / 2 for i in g.done_ids()}
    assert seen == {float(decode_threads(2))} and s.settings["decode_threads"] == decode_threads(2)


def test_an_opened_video_uses_the_thread_count_set(tmp_path):
    path = write_video(tmp_path / "v.mp4", 10)
    try:
        decode.set_threads(3)
        container, stream = decode._open(path)
        assert stream.thread_count == 3
        container.close()
    finally:
        decode.set_threads(0)
    container, stream = decode._open(path)
    assert stream.thread_count == 0  # FFmpeg's own choice, as before
    container.close()


# ------------------------------------------------------------------------------------------------
# the GPU decoder's adapter, through a stand-in for torchcodec
# ------------------------------------------------------------------------------------------------
class FakeFrameBatch:
    def __init__(self, data):
        self.data = data


class FakeVideoDecoder:
    """torchcodec's `VideoDecoder` contract, decoded with PyAV on the CPU: `get_frames_played_at(s)`
    gives the frame with pts <= s < next pts, and refuses times outside [begin, end)."""

    opened: list = []

    def __init__(self, source, *, device="cpu", seek_mode="exact", dimension_order="NCHW"):
        import av
        import torch

        FakeVideoDecoder.opened.append(device)
        with av.open(str(source)) as c:
            s = c.streams.video[0]
            frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
            rate = float(s.average_rate)
        frames.sort(key=lambda x: x[0])
        self.pts = np.array([t for t, _ in frames])
        self.frames = torch.from_numpy(np.stack([a for _, a in frames])).permute(0, 3, 1, 2)
        self.metadata = types.SimpleNamespace(average_fps=rate, begin_stream_seconds=self.pts[0],
                                              end_stream_seconds=self.pts[-1] + 1 / rate)

    def get_frames_played_at(self, seconds):
        idx = []
        for s in seconds:
            if not self.metadata.begin_stream_seconds <= s < self.metadata.end_stream_seconds:
                raise IndexError(f"no frame is played at {s}")
            idx.append(int(np.searchsorted(self.pts, s, side="right") - 1))
        return FakeFrameBatch(self.frames[idx])


@pytest.fixture
def fake_torchcodec(monkeypatch):
    module = types.ModuleType("torchcodec")
    module.decoders = types.ModuleType("torchcodec.decoders")
    module.decoders.VideoDecoder = FakeVideoDecoder
    monkeypatch.setitem(sys.modules, "torchcodec", module)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", module.decoders)
    FakeVideoDecoder.opened = []
    return module


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("gpu") / "numbered.mp4", 120, gop=25, bframes=2)


def test_gpu_adapter_serves_the_frames_the_cpu_decoder_serves(numbered, fake_torchcodec):
    requests = {"a": np.array([3, 5, 5, 9]), "b": np.arange(40, 56).reshape(2, 8), "c": np.array([0, 119])}
    cpu = dict(stream_clips(numbered, requests))
    gpu = dict(stream_clips_gpu(numbered, requests, device="cpu", chunk=2))
    assert gpu.keys() == cpu.keys()
    for key in requests:
        assert gpu[key].shape == cpu[key].shape == requests[key].shape + (96, 128, 3)
        np.testing.assert_array_equal(gpu[key], cpu[key])
    assert [read_index(f) for f in gpu["a"]] == [3, 5, 5, 9]


def test_gpu_adapter_resizes_on_the_device_as_the_cpu_path(numbered, fake_torchcodec):
    requests = {"a": np.arange(10, 26)}
    cpu = dict(stream_clips(numbered, requests, transform=lambda rgb: resize_crop(rgb, 112, 96)))
    gpu = dict(stream_clips_gpu(numbered, requests, device="cpu",
                                transform=lambda x: resize_crop_tensor(x, 112, 96).permute(0, 2, 3, 1)))
    assert gpu["a"].shape == (16, 96, 96, 3)
    np.testing.assert_array_equal(gpu["a"], cpu["a"])


def test_gpu_adapter_fails_requests_past_the_end_like_the_cpu_decoder(numbered, fake_torchcodec):
    requests = {"ok": np.array([100, 119]), "late": np.array([110, 119, 120, 150])}
    gpu = dict(stream_clips_gpu(numbered, requests, device="cpu"))
    cpu = dict(stream_clips(numbered, requests))
    assert isinstance(gpu["late"], PastEnd) and isinstance(cpu["late"], PastEnd)
    assert gpu["late"].missing == cpu["late"].missing == [120, 150]
    assert str(gpu["late"]) == str(cpu["late"])
    np.testing.assert_array_equal(gpu["ok"], cpu["ok"])


def test_gpu_adapter_fails_every_request_of_a_missing_file(tmp_path, fake_torchcodec):
    out = dict(stream_clips_gpu(tmp_path / "none.mp4", {"a": [1], "b": [2]}, device="cpu"))
    assert all(isinstance(e, DecodeError) and e.stage == "open" for e in out.values())
    assert "video file not found" in str(out["a"])


def test_a_video_torchcodec_cannot_open_is_decoded_with_pyav(numbered, fake_torchcodec, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported codec for NVDEC")

    monkeypatch.setattr(fake_torchcodec.decoders, "VideoDecoder", refuse)
    requests = {"a": np.array([1, 2, 3])}
    out = dict(stream_video(numbered, requests, decoder="gpu", device="cpu"))
    np.testing.assert_array_equal(out["a"], dict(stream_clips(numbered, requests))["a"])


def test_stream_video_uses_the_gpu_adapter_when_told(numbered, fake_torchcodec):
    out = dict(stream_video(numbered, {"a": np.array([7])}, decoder="gpu", device="cuda:5"))
    assert FakeVideoDecoder.opened == ["cuda:5"] and read_index(out["a"][0]) == 7
    FakeVideoDecoder.opened = []
    dict(stream_video(numbered, {"a": np.array([7])}, decoder="cpu", device="cuda:5"))
    assert FakeVideoDecoder.opened == []


def test_asking_for_gpu_decoding_where_it_cannot_run_falls_back_in_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="migfuse.extract.decode_gpu"):
        assert choose_decoder("gpu", "cpu") == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        "--decoder gpu: the extraction runs on cpu, not on a GPU; decoding on the CPU with PyAV instead"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="migfuse.extract.decode_gpu"):
        assert choose_decoder("gpu", "cuda") == "cpu"  # this torch has no CUDA
    (message,) = [r.getMessage() for r in caplog.records]
    assert "has no CUDA device" in message and message.endswith("decoding on the CPU with PyAV instead")
    assert choose_decoder("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError):
        choose_decoder("nvdec", "cuda")


def test_the_video_track_asks_for_the_decoder_it_was_given(monkeypatch):
    import test_extract_video_util  # noqa: F401 - registers the `tiny` backbone
    from migfuse.extract import video
    from migfuse.runtime import Runtime

    asked = []
    monkeypatch.setattr(video, "choose_decoder", lambda requested, device: asked.append((requested, device)) or "gpu")

    class Clips:
        clips, videos = [], {}

        def video_files(self, root=None):
            return {}

        def video_measures(self):
            return {}

    ex = video.VideoExtractor(Clips(), "video", backbone="tiny", decoder="gpu")
    ex.runtime = Runtime("cuda:2")
    loader = ex.loader()
    assert asked == [("gpu", "cuda:2")] and (loader.decoder, loader.device) == ("gpu", "cuda:2")


# ------------------------------------------------------------------------------------------------
# MTCNN on several rows at once (what the GPU path does) gives the per-row result
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces_video(tmp_path_factory):
    from migfuse.datasets.manifest import Manifest
    from migfuse.datasets.prepare import prepare
    from migfuse.synth import generate_dataset

    root = tmp_path_factory.mktemp("faces")
    data = generate_dataset(root / "data", videos=1, clips_per_video=3, progress=False)
    prepare(data, root / "prepared", progress=False)
    return Manifest.load(root / "prepared")


def test_detecting_several_rows_per_call_gives_the_per_row_faces(faces_video):
    import torch

    from migfuse.extract.face.extractor import FaceExtractor

    torch.set_num_threads(1)
    ex = FaceExtractor(faces_video, "clip", frames=3)
    per_row = ex.loader()
    assert per_row.detect_frames == 1 and per_row.detector_device == "cpu"  # the CPU behaviour
    gathered = FaceExtractor(faces_video, "clip", frames=3).loader()
    gathered.detect_frames = 64  # as on a GPU: all clips of the video in one MTCNN call
    item = ex.work_items(ex.ids())[0]
    a = {s.id: s.inputs for s in per_row(item)}
    b = {s.id: s.inputs for s in gathered(item)}
    assert a.keys() == b.keys() == set(item.ids) and len(a) == 3
    for row in a:
        np.testing.assert_array_equal(a[row]["mask"], b[row]["mask"])
        assert a[row]["mask"].any()
        diff = np.abs(a[row]["crops"].astype(int) - b[row]["crops"].astype(int))
        assert diff.mean() < 1.0  # same faces; a batched pyramid may move a landmark by a fraction of a pixel


# ------------------------------------------------------------------------------------------------
# pre-roll: frames no other frame refers to are not decoded, and the frames served do not change
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bframes(tmp_path_factory):
    """Keyframes every 250 frames (x264's default) and 3 B-frames: clips far from keyframes."""
    return write_video(tmp_path_factory.mktemp("bframes") / "b.mp4", 1000, gop=250, bframes=3)


def _served(path, indices, **kwargs):
    stats: dict = {}
    got = [(i, read_index(f)) for i, f in decode.read_frames(path, indices, stats=stats, **kwargs)]
    return got, stats


def test_skipping_unreferenced_frames_serves_the_same_frames_and_decodes_fewer(bframes):
    rng = np.random.default_rng(0)
    for _ in range(3):
        indices = sorted(set(rng.integers(0, 1010, 24).tolist()))
        plain, plain_stats = _served(bframes, indices, skip_nonref=False)
        fast, fast_stats = _served(bframes, indices)
        assert fast == plain
        assert [i for i, n in fast if i != n] == []  # each index is its own numbered frame
        assert [i for i, _ in fast] == [i for i in indices if i < 1000]  # 1000+ are past the end
        assert fast_stats["decoded"] < 0.9 * plain_stats["decoded"]
        assert fast_stats["redone"] == 0


def test_one_decode_thread_skips_with_a_narrower_margin_and_serves_the_same_frames(bframes, monkeypatch):
    indices = [5, 300, 301, 302, 640, 700, 910]
    plain, _ = _served(bframes, indices, skip_nonref=False)
    wide, wide_stats = _served(bframes, indices)  # FFmpeg's threads: the wide margin
    margins = {}
    for threads in (0, 1, 2, 64):
        monkeypatch.setattr(decode, "_THREADS", threads)
        margins[threads] = decode.skip_margin_frames()
    assert margins == {0: 32, 1: 8, 2: 9, 64: 32}  # FFmpeg's choice of threads keeps the wide margin
    monkeypatch.setattr(decode, "_THREADS", 1)
    narrow, narrow_stats = _served(bframes, indices)
    assert narrow == wide == plain == [(i, i) for i in indices]
    assert narrow_stats["decoded"] < wide_stats["decoded"] and narrow_stats["redone"] == 0


def test_frames_skipped_too_near_a_target_are_decoded_again(bframes, monkeypatch):
    """With no margin the decoder's delay leaves frames near a target undecoded: the check sees the
    hole and decodes that stretch again without skipping, so the frames served stay right."""
    monkeypatch.setattr(decode, "SKIP_MARGIN_FRAMES", 0)
    indices = [5, 300, 301, 302, 640, 910]
    fast, stats = _served(bframes, indices)
    assert fast == [(i, i) for i in indices]
    assert stats["redone"] >= 1
