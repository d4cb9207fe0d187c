"""What decodes, not what headers claim: measured video facts, frame 0 at the first displayed picture,
context windows over the decoded length, and failure messages that name the true cause."""
from __future__ import annotations

import io
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from migfuse.datasets.video_measure import VideoMeasure, VideoUnreadable, measure_video
from migfuse.extract.decode import DecodeError, PastEnd, read_frames, stream_clips
from shared_paths import REALWORLD, missing_reason

LEVEL = 6  # picture i is painted grey 6 * i: survives lossy coding, tells the pictures apart


def _picture(i: int, size: tuple[int, int] = (48, 64)) -> av.VideoFrame:
    """Grey 6 * i with a white 8x8 square moved 1 px per picture: no two pictures alike."""
    rgb = np.full((*size, 3), (LEVEL * i) % 252, np.uint8)
    rgb[16:24, i % 56:i % 56 + 8] = 255
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


class _NoSeek(io.RawIOBase):
    """A write-only stream: muxers then cannot go back to write the duration (as MediaRecorder)."""

    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def seekable(self):
        return False

    def write(self, b):
        return self.f.write(b)


def _encode(path: Path, codec: str, n: int = 40, *, rate: int = 25, fmt: str | None = None, seekable: bool = True,
            options: dict | None = None, setup=None) -> Path:
    """`n` pictures (grey 6 * i) encoded with `codec` into `path`."""
    fh = open(path, "wb")
    out = av.open(fh if seekable else _NoSeek(fh), "w", format=fmt or path.suffix[1:].replace("mkv", "matroska"))
    s = out.add_stream(codec, rate=rate, options=options or {})
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    if setup:
        setup(s.codec_context)
    for i in range(n):
        for p in s.encode(_picture(i).reformat(format="yuv420p")):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    fh.close()
    return path


def _served(frames: dict[int, np.ndarray], path: Path) -> dict[int, int]:
    """Annotation index -> which picture (position in display order, as decoded from the start) was served."""
    with av.open(str(path)) as c:
        pictures = [f.to_ndarray(format="rgb24").astype(int) for f in sorted(c.decode(video=0), key=lambda f: f.pts)]
    return {k: int(np.argmin([np.abs(v.astype(int) - p).mean() for p in pictures])) for k, v in frames.items()}


def _b_frames(ctx) -> None:
    ctx.max_b_frames = 2
    ctx.gop_size = 12
    ctx.bit_rate = 4_000_000  # B-pictures with content, not copies of their references


# B-frames and open GOPs of several codecs; mpegts starts its clock at 1.4 s, the webm is written
# as a browser records it (no duration in the header)
CODECS = {
    "h264-b-frames.mp4": dict(codec="libx264", options={"bframes": "3", "g": "10", "preset": "ultrafast",
                                                        "tune": "zerolatency", "x264-params": "bframes=3"}),
    "h264-open-gop.mkv": dict(codec="libx264", options={"x264-params": "bframes=3:keyint=10:open-gop=1"}),
    "hevc-open-gop.mkv": dict(codec="libx265", options={"x265-params": "bframes=3:keyint=10:open-gop=1:log-level=0"}),
    "mpeg4-b-frames.avi": dict(codec="mpeg4", setup=_b_frames),
    "mpeg2-b-frames.ts": dict(codec="mpeg2video", fmt="mpegts", setup=_b_frames),
    "vp9-no-duration.webm": dict(codec="libvpx-vp9", seekable=False),
    "vp8-no-duration.webm": dict(codec="libvpx", seekable=False),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_serves_picture_f_for_frame_f_from_the_first_displayed_picture(tmp_path, name):
    spec = dict(CODECS[name])
    path = _encode(tmp_path / name, spec.pop("codec"), **spec)
    facts = measure_video(path)
    assert (facts.frames, facts.fps, facts.width, facts.height) == (40, 25.0, 64, 48)
    with av.open(str(path)) as c:
        first_pts = min(f.pts for f in c.decode(video=0))
        assert facts.origin == pytest.approx(float(first_pts * c.streams.video[0].time_base))
    wanted = [0, 1, 2, 9, 10, 11, 19, 33, 39]
    assert _served(dict(read_frames(path, wanted)), path) == {i: i for i in wanted}
    # every target on its own, after a seek (seek_gap 0): open-GOP leading pictures included
    assert _served(dict(read_frames(path, [3, 21, 38], seek_gap=0)), path) == {3: 3, 21: 21, 38: 38}
    [(key, err)] = stream_clips(path, {"late": [39, 40]})
    assert isinstance(err, PastEnd) and str(err) == (f"frames [40] are past the end of {name} (it decodes 40 frames "
                                                     "at 25 fps); check the labels")


def _realworld(case: str, tmp_path: Path) -> Path:
    script = REALWORLD / case / "make_input.py"
    if not script.is_file():
        pytest.skip(missing_reason(REALWORLD, "the real-world cases"))
    root = tmp_path / "root"
    argv = sys.argv
    sys.argv = [str(script), str(root)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    return root


def test_shared_case_stream_start_after_first_frame(tmp_path):
    """Frame 24 is first in the file, so FFmpeg's start_time is 0.96 s although pictures 0..23 are shown
    before it: frame f must still be picture f, and frames 20..29 must all come."""
    video = _realworld("stream-start-after-first-frame", tmp_path) / "Video" / "0061.mkv"
    with av.open(str(video)) as c:
        assert c.streams.video[0].start_time == 960  # what made every frame shift by 24
    facts = measure_video(video)
    assert (facts.frames, facts.origin, facts.reorder) == (30, 0.0, 1)
    # pictures are told apart by their grey level 8 * i
    got = {k: int(round(float(v.mean()) / 8)) for k, v in read_frames(video, [0, 1, 5, 29])}
    assert got == {0: 0, 1: 1, 5: 5, 29: 29}
    clip = dict(stream_clips(video, {"0061_1": np.arange(20, 30)}))["0061_1"]
    assert [int(round(float(f.mean()) / 8)) for f in clip] == list(range(20, 30))


def test_shared_case_context_windows_from_header_length(tmp_path):
    """A webm without a duration and a fragmented MP4 whose header says 3900 s each decode 75 frames:
    the context windows of both tracks lie inside those 75 frames and every window is served."""
    from migfuse.extract.face.detect import FrameFaces
    from migfuse.extract.face.extractor import FaceLoader
    from migfuse.extract.interface import WorkItem
    from migfuse.extract.sampling import ContextSampling
    from migfuse.extract.video import ContextLoader

    videos = _realworld("context-windows-from-header-length", tmp_path) / "Video"
    webm, mp4 = videos / "0051.webm", videos / "0052.mp4"
    assert (measure_video(webm).frames, measure_video(webm).header_frames) == (75, None)
    assert (measure_video(mp4).frames, measure_video(mp4).header_frames) == (75, 97500)
    sampling = ContextSampling(windows=2, frames=4)
    assert sampling.indices(75).tolist() == [[12, 16, 20, 24], [50, 54, 58, 62]]  # not near frame 73,000
    loader = ContextLoader(paths={"0051": str(webm), "0052": str(mp4)}, short_side=48, crop=32, sampling=sampling)
    for vid in ("0051", "0052"):
        [sample] = loader(WorkItem(vid, (vid,)))
        assert sample.failure is None, sample.failure
        assert sample.inputs["valid"].tolist() == [True, True] and sample.inputs["frames"].shape == (2, 4, 32, 32, 3)

    class NoFaces:  # the windows are what is checked here, not the detector
        def detect(self, frames):
            return [FrameFaces.empty() for _ in frames]

    face = FaceLoader(paths={"0051": str(webm), "0052": str(mp4)}, scope="context", frames=2, context=sampling)
    face._detector = NoFaces()
    for vid in ("0051", "0052"):
        [sample] = face(WorkItem(vid, (vid,)))
        assert sample.failure is None, sample.failure
        assert sample.inputs["mask"].shape == (2, 2) and not sample.inputs["mask"].any()


def test_the_last_picture_covers_its_own_duration(tmp_path):
    """A 1 fps video of 5 pictures lasts 5 s = 125 annotation frames; its last picture serves 100..124."""
    path = _encode(tmp_path / "slow.mkv", "mpeg4", n=5, rate=1)
    facts = measure_video(path)
    assert (facts.frames, facts.fps, facts.not_25_fps) == (125, 1.0, True)
    assert _served(dict(read_frames(path, [0, 12, 13, 99, 100, 124, 125])), path) == {
        0: 0, 12: 0, 13: 1, 99: 4, 100: 4, 124: 4}
    one = _encode(tmp_path / "one.webm", "libvpx", n=1, seekable=False)
    assert measure_video(one).frames == 1
    assert _served(dict(read_frames(one, [0, 4, 8])), one) == {0: 0}


def _cut_short(tmp_path: Path) -> Path:
    """A 100-frame mkv cut at half its bytes: the header still claims 100 frames."""
    whole = _encode(tmp_path / "whole.mkv", "mpeg4", n=100, setup=lambda ctx: setattr(ctx, "gop_size", 10))
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_cut_short_file_says_so_and_labels_are_blamed_only_past_the_decoded_end(tmp_path):
    cut = _cut_short(tmp_path)
    facts = measure_video(cut)
    assert facts.header_frames == 100 and 30 < facts.frames < 70 and facts.header_disagrees
    n = facts.frames
    served = dict(stream_clips(cut, {"inside": [0, n - 1], "cut": [n - 1, n + 5], "past": [150]}, facts=facts))
    assert served["inside"].shape[0] == 2
    assert str(served["cut"]) == (f"cut.mkv decodes {n} frames at 25 fps, its header claims 100: the file is cut "
                                  "short or damaged; re-download or re-encode it")
    assert str(served["past"]) == f"frames [150] are past the end of cut.mkv (it decodes {n} frames at 25 fps); " \
                                  "check the labels"


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty (0 bytes)"),
    (b"just some text, not a video\n" * 40, "cannot open the file, it is not a readable media file (Invalid data "
                                            "found when processing input)"),
])
def test_unreadable_files_give_their_reason(tmp_path, content, reason):
    path = tmp_path / "0001.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoUnreadable) as e:
        measure_video(path)
    assert str(e.value) == reason
    with pytest.raises(DecodeError) as d:
        list(read_frames(path, [0]))
    assert d.value.stage == "open" and str(d.value) == f"0001.mp4: {reason}"


def test_a_file_without_a_video_stream_says_so(tmp_path):
    path = tmp_path / "sound.mkv"
    out = av.open(str(path), "w")
    s = out.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
    for p in s.encode(frame):
        out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    with pytest.raises(VideoUnreadable, match=r"^the file has no video stream$"):
        measure_video(path)


def test_measured_facts_round_trip_through_videos_csv_and_old_files_load_without_them(tmp_path):
    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo

    facts = VideoMeasure(frames=75, origin=0.96, fps=29.97, width=720, height=1280, header_frames=97500,
                         reorder=1, rotation=90)
    m = Manifest(clips=[Clip.make("0298", 0, 1, 5, raw_class=8, subject=22)],
                 videos={"0298": VideoInfo("0298", subject=22, rotation=90, measured=facts),
                         "0001": VideoInfo("0001", unreadable="the file is empty (0 bytes)")})
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back.videos["0298"].measured == facts
    assert (back.videos["0001"].measured, back.videos["0001"].unreadable) == (None, "the file is empty (0 bytes)")
    assert back.video_measures() == {"0298": facts, "0001": None}
    # a videos.csv of an older version (no measure columns) loads: extraction measures the video itself
    lines = (tmp_path / "videos.csv").read_text().splitlines()
    keep = lines[0].split(",").index("dataset_root") + 1
    (tmp_path / "videos.csv").write_text("\n".join(",".join(line.split(",")[:keep]) for line in lines) + "\n")
    assert Manifest.load(tmp_path).video_measures() == {"0298": None, "0001": None}


def test_prepare_reports_every_video_as_it_decodes_and_the_console_totals_match(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app
    from migfuse.datasets.manifest import Manifest
    from migfuse.datasets.prepare import prepare

    root = tmp_path / "root"
    (root / "Label").mkdir(parents=True)
    (root / "Video").mkdir()
    rows = ["video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,subject_gender,"
            "subject_nationality,win_or_lose"]
    rows += [f"{vid},1,0.0,0,1.0,{end},5,3,F,X,Win" for vid, end in
             [(1, 10), (2, 10), (3, 10), (4, 10), (5, 10), (6, 39)]]
    (root / "Label" / "labels_20200831.csv").write_text("\n".join(rows) + "\n")
    _encode(root / "Video" / "0001.mp4", "libx264", options={"bframes": "2"})
    (root / "Video" / "0002.mp4").write_bytes(b"")
    (root / "Video" / "0003.mp4").write_text("not a video\n" * 50)
    cut = _cut_short(tmp_path)
    cut.rename(root / "Video" / "0004.mkv")
    _encode(root / "Video" / "0005.mkv", "mpeg4", n=30, rate=30)
    _encode(root / "Video" / "0006.webm", "libvpx", n=30, seekable=False)  # clip 0..39 ends after 30 frames
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    n_cut = measure_video(root / "Video" / "0004.mkv").frames
    report = result.report
    assert report["video_files"] == {
        "0001": {"decoded_frames": 40, "width": 64, "height": 48},
        "0002": {"unreadable": "the file is empty (0 bytes)"},
        "0003": {"unreadable": "cannot open the file, it is not a readable media file (Invalid data found when "
                               "processing input)"},
        "0004": {"decoded_frames": n_cut, "width": 64, "height": 48, "header_frames": 100},
        "0005": {"decoded_frames": 25, "width": 64, "height": 48, "fps": 30.0},
        "0006": {"decoded_frames": 30, "width": 64, "height": 48, "header_frames": None},
    }
    assert report["video_file_totals"] == {"measured": 4, "unreadable": 2, "header_differs": 2, "not_25_fps": 1}
    kinds = {(p["kind"], p.get("video_id")) for p in report["problems"]}
    assert {("unreadable_video", "0002"), ("unreadable_video", "0003"), ("header_length_differs", "0004"),
            ("header_length_differs", "0006"), ("not_25_fps", "0005"), ("clip_past_video_end", None)} <= kinds
    past = next(p for p in report["problems"] if p["kind"] == "clip_past_video_end")
    assert past["clip_ids"] == ["0006_0"]
    m = Manifest.load(tmp_path / "out")
    assert m.videos["0001"].measured.frames == 40 and m.videos["0002"].unreadable == "the file is empty (0 bytes)"
    cli = CliRunner().invoke(app, ["data", "prepare", "--root", str(root), "--out", str(tmp_path / "o2"),
                                   "--dataset-layout", "oulu"])
    assert cli.exit_code == 0, cli.output
    assert ("video files: 4 decode, 2 unreadable, 2 with a header length that differs from what decodes, "
            "1 not at 25 fps") in cli.output
    assert "problem unreadable_video (video 0002): 0002.mp4: the file is empty (0 bytes)" in cli.output
    assert "Traceback" not in cli.output


def test_export_pyskl_writes_each_videos_measured_size(tmp_path):
    import pickle

    from migfuse.datasets.manifest import Clip, Manifest, VideoInfo, write_skeleton
    from migfuse.datasets.pyskl import export_pyskl

    m = Manifest(clips=[Clip.make("0298", 0, 0, 3, raw_class=8, subject=22),
                        Clip.make("0054", 0, 0, 3, raw_class=8, subject=22)],
                 videos={"0298": VideoInfo("0298", subject=22, measured=VideoMeasure(
                     frames=10, origin=0.0, fps=25.0, width=1920, height=1080)), "0054": VideoInfo("0054", subject=22)})
    points = np.ones((10, 137, 3), np.float32)
    for vid in ("0298", "0054"):
        m.videos[vid].skeleton = write_skeleton(tmp_path, vid, points)
    m.save(tmp_path)
    export_pyskl(tmp_path, tmp_path / "out.pkl")
    with open(tmp_path / "out.pkl", "rb") as f:
        shapes = {a["frame_dir"]: (a["img_shape"], a["original_shape"]) for a in pickle.load(f)["annotations"]}
    assert shapes == {"0298_0": ((1080, 1920), (1080, 1920)), "0054_0": ((720, 1280), (720, 1280))}
    export_pyskl(tmp_path, tmp_path / "given.pkl", img_shape=(480, 640))
    with open(tmp_path / "given.pkl", "rb") as f:
        assert {a["img_shape"] for a in pickle.load(f)["annotations"]} == {(480, 640)}


def test_past_end_messages_name_the_true_cause():
    from migfuse.extract.decode import past_end_message

    sound = VideoMeasure(frames=75, origin=0.0, fps=25.0, width=64, height=48, header_frames=75)
    assert past_end_message("a.mp4", [75, 76, 77, 78], sound) == (
        "frames [75, 76, 77]... are past the end of a.mp4 (it decodes 75 frames at 25 fps); check the labels")
    short = VideoMeasure(frames=75, origin=0.0, fps=25.0, width=64, height=48, header_frames=500)
    assert past_end_message("a.mp4", [80], short) == (
        "a.mp4 decodes 75 frames at 25 fps, its header claims 500: the file is cut short or damaged; "
        "re-download or re-encode it")
    assert past_end_message("a.mp4", [600], short).endswith("(it decodes 75 frames at 25 fps); check the labels")
    assert past_end_message("a.mp4", [40, 41], sound) == (
        "a.mp4 stops decoding before frame 40 although it was measured to reach frame 74: the file is damaged "
        "or was changed since `data prepare`; re-download or re-encode it and run `migfuse data prepare` again")


def test_a_picture_size_change_fails_only_the_requests_that_span_it(tmp_path):
    """Two MPEG-TS recordings of different sizes joined byte by byte (as `cat` joins them)."""
    def segment(path: Path, w: int, h: int, first: int) -> bytes:
        out = av.open(str(path), "w", format="mpegts")
        s = out.add_stream("mpeg2video", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 6 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = first + i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
        out.close()
        return path.read_bytes()

    joined = tmp_path / "joined.ts"
    joined.write_bytes(segment(tmp_path / "a.ts", 64, 48, 0) + segment(tmp_path / "b.ts", 32, 32, 20))
    got = dict(stream_clips(joined, {"before": [0, 5], "across": [15, 25], "after": [30, 35]}))
    assert got["before"].shape == (2, 48, 64, 3) and got["after"].shape == (2, 32, 32, 3)
    assert str(got["across"]) == "joined.ts: the picture size changes within the video (64x48 -> 32x32 pixels); " \
                                 "re-encode it"


def test_prepare_blames_a_cut_short_file_not_the_labels_as_extraction_does(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app
    from migfuse.datasets.prepare import prepare

    cut = _cut_short(tmp_path)
    n = measure_video(cut).frames
    root = tmp_path / "root"
    (root / "Label").mkdir(parents=True)
    (root / "Video").mkdir()
    cut.rename(root / "Video" / "0004.mkv")
    rows = ["video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,subject_gender,"
            "subject_nationality,win_or_lose"]
    rows += [f"4,{k},0.0,{start},1.0,{end},5,3,F,X,Win" for k, (start, end) in
             enumerate([(0, 10), (n - 1, n + 5), (n + 10, 99), (150, 160)], start=1)]
    (root / "Label" / "labels_20200831.csv").write_text("\n".join(rows) + "\n")
    report = prepare(root, tmp_path / "out", layout="oulu", progress=False).report
    problems = {p["kind"]: p for p in report["problems"]}
    assert problems["clip_in_cut_short_video"]["clip_ids"] == ["0004_1", "0004_2"]
    assert problems["clip_in_cut_short_video"]["detail"] == (
        "clips ending after the last frame their video decodes, within the length its header claims: 2, in videos "
        f"0004 (first: 0004.mkv decodes {n} frames at 25 fps, its header claims 100): the file is cut short or "
        "damaged; re-download or re-encode it")
    assert problems["clip_past_video_end"]["clip_ids"] == ["0004_3"]  # starts past the header's 100 frames too
    cli = CliRunner().invoke(app, ["data", "prepare", "--root", str(root), "--out", str(tmp_path / "o2"),
                                   "--dataset-layout", "oulu"])
    assert cli.exit_code == 0, cli.output
    line = next(x for x in cli.output.splitlines() if "clip_in_cut_short_video" in x)
    assert line.endswith("the file is cut short or damaged; re-download or re-encode it")
    assert "Traceback" not in cli.output
