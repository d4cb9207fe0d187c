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
