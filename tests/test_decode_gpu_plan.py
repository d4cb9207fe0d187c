"""`--decoder gpu` places frames by the measured facts as the PyAV path does (torchcodec faked here:
it is not installed on the CPU test machine; the plan, not the decoder, is under test)."""
import sys
import types

import pytest

from migfuse.datasets.video_measure import VideoMeasure
from migfuse.extract.decode import PastEnd
from migfuse.extract.decode_gpu import stream_clips_gpu

torch = pytest.importorskip("torch")


class _OneFpsDecoder:
    """A 5-picture 1 fps video: picture p plays from p to p + 1 s; each frame's pixels hold its picture number."""

    def __init__(self, path, **kwargs):
        self.metadata = types.SimpleNamespace(average_fps=1.0, begin_stream_seconds=0.0, end_stream_seconds=5.0,
                                              rotation=0)

    def get_frames_played_at(self, seconds):
        assert all(0 <= s < 5.0 for s in seconds), seconds  # torchcodec refuses times past its end
        pictures = torch.tensor([int(s) for s in seconds], dtype=torch.uint8)
        return types.SimpleNamespace(data=pictures.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone())


@pytest.fixture
def fake_torchcodec(monkeypatch):
    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = _OneFpsDecoder
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)


def test_the_last_picture_covers_its_second_and_past_the_measured_end_names_the_frames(tmp_path, fake_torchcodec):
    video = tmp_path / "0001.mp4"
    video.write_bytes(b"x")
    facts = VideoMeasure(frames=125, origin=0.0, fps=1.0, width=2, height=2, header_frames=125)
    out = dict(stream_clips_gpu(video, {"a": [0, 60, 124], "b": [120, 125]}, device="cpu", facts=facts))
    assert out["a"][:, 0, 0, 0].tolist() == [0, 2, 4]  # frame 124 (4.96 s) is the last picture's, not past
    assert isinstance(out["b"], PastEnd) and out["b"].missing == [125]


class _CountingDecoder(_OneFpsDecoder):
    """`_OneFpsDecoder` that records each call's pictures and fails on pictures from 3 on (damage)."""

    calls: list[list[int]] = []

    def get_frames_played_at(self, seconds):
        _CountingDecoder.calls.append([int(s) for s in seconds])
        if any(s >= 3 for s in seconds):
            raise RuntimeError("corrupt data at 3 s")
        return super().get_frames_played_at(seconds)


def test_one_decode_serves_every_view_and_a_decode_failure_fails_every_view_of_its_chunk(
        tmp_path, fake_torchcodec, monkeypatch):
    monkeypatch.setattr(sys.modules["torchcodec.decoders"], "VideoDecoder", _CountingDecoder)
    _CountingDecoder.calls.clear()
    video = tmp_path / "0001.mp4"
    video.write_bytes(b"x")
    facts = VideoMeasure(frames=125, origin=0.0, fps=1.0, width=2, height=2, header_frames=125)
    seen = []

    def plus_100(x):  # a view: records the pictures it was given, returns (N, h, w, 3)
        seen.append(x[:, 0, 0, 0].tolist())
        return (x + 100).permute(0, 2, 3, 1)

    requests = {"a": [0, 25], "b": [50], "c": [75], "d": [75, 100]}
    transforms = {"a": plus_100, "b": None, "c": plus_100, "d": None}
    out = dict(stream_clips_gpu(video, requests, device="cpu", facts=facts, chunk=2, transforms=transforms))
    assert _CountingDecoder.calls == [[0, 1, 2], [3, 4]]  # each chunk's pictures decoded once for both views
    assert seen == [[0, 1]]  # the view made of its own requests' pictures only
    assert out["a"][:, 0, 0, 0].tolist() == [100, 101] and out["a"].shape == (2, 2, 2, 3)
    assert out["b"][:, 0, 0, 0].tolist() == [2] and out["b"].shape == (1, 2, 2, 3)  # full frame, as decoded
    assert out["c"] is out["d"]  # one failure for every view of the damaged chunk
    assert (out["c"].stage, str(out["c"])) == ("decode", "0001.mp4: RuntimeError: corrupt data at 3 s")
