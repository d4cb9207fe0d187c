"""Decoding: frame indices agree with the annotation's 0-based 25 fps numbering, one pass per video."""
from __future__ import annotations

import pytest
from test_decode_util import read_index, write_corrupt, write_video

from migfuse.extract.decode import DecodeError, probe, read_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # 600 frames, a keyframe every 50: long enough that seeking matters.
    return write_video(tmp_path_factory.mktemp("dec") / "numbered.mp4", 600, gop=50)


def test_numbered_frames_read_back(tmp_path):
    # The helper itself: what the test relies on to identify frames survives h264.
    path = write_video(tmp_path / "v.mp4", 40)
    got = [read_index(f) for _, f in read_frames(path, range(40))]
    assert got == list(range(40))


def test_indices_match_burnt_in_numbers_including_mid_video_seek(video):
    wanted = [0, 1, 7, 49, 50, 51, 333, 334, 512, 599]
    stats = {}
    got = [(i, read_index(f)) for i, f in read_frames(video, wanted, stats=stats, seek_gap=60)]
    assert got == [(i, i) for i in wanted]
    # Gaps longer than seek_gap were jumped by seeking, not decoded through from frame 0.
    assert stats["seeks"] >= 3
    assert stats["decoded"] < 300


def test_seek_into_the_middle_decodes_only_from_the_keyframe_before(video):
    stats = {}
    got = [(i, read_index(f)) for i, f in read_frames(video, [437, 440, 445], stats=stats)]
    assert got == [(437, 437), (440, 440), (445, 445)]
    assert stats["seeks"] == 1
    # keyframe 400 -> frame 445 and the one after it: 47 frames, not 446.
    assert stats["decoded"] <= 60


def test_b_frames_and_seeks_keep_presentation_order(tmp_path):
    path = write_video(tmp_path / "bf.mp4", 300, gop=48, bframes=3)
    wanted = [0, 5, 47, 48, 49, 130, 131, 250, 299]
    got = [(i, read_index(f)) for i, f in read_frames(path, wanted, seek_gap=30)]
    assert got == [(i, i) for i in wanted]


def test_unsorted_duplicate_indices_come_back_sorted_once(video):
    got = [i for i, _ in read_frames(video, [20, 3, 20, 10])]
    assert got == [3, 10, 20]


def test_indices_past_the_end_are_not_yielded(video):
    got = [(i, read_index(f)) for i, f in read_frames(video, [598, 599, 600, 700])]
    assert got == [(598, 598), (599, 599)]


def test_probe_reports_frames_at_25fps(video):
    p = probe(video)
    assert (p.n_frames, p.fps, p.width, p.height) == (600, 25.0, 128, 96)


def test_frame_times_map_by_time_for_other_frame_rates(tmp_path):
    # A 50 fps video: annotation frame f (time f/25 s) is native frame 2f.
    path = write_video(tmp_path / "v50.mp4", 100, fps=50)
    got = [(i, read_index(f)) for i, f in read_frames(path, [0, 10, 49])]
    assert got == [(0, 0), (10, 20), (49, 98)]


def test_missing_and_corrupt_files_raise_open_errors(tmp_path):
    with pytest.raises(DecodeError, match="not found") as e:
        list(read_frames(tmp_path / "nope.mp4", [0]))
    assert e.value.stage == "open"
    bad = write_corrupt(tmp_path / "bad.mp4")
    with pytest.raises(DecodeError, match="cannot open") as e:
        list(read_frames(bad, [0]))
    assert e.value.stage == "open"
    with pytest.raises(DecodeError):
        probe(bad)


def test_truncated_file_fails_cleanly(tmp_path, video):
    # First half of a valid mp4 (index at the end is lost): must be a DecodeError, not a crash.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(DecodeError):
        list(read_frames(cut, [0, 100]))


def test_a_container_with_a_stream_but_no_frame_says_so(tmp_path):
    """An AVI whose header declares a video stream but which holds no frame: FFmpeg's seek fails with
    EPERM, which must not read as a file-permission problem."""
    import av

    path = tmp_path / "empty.avi"
    out = av.open(str(path), "w", format="avi")
    s = out.add_stream("mpeg4", rate=25)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    out.start_encoding()  # writes the header, then no frame at all
    out.close()
    with pytest.raises(DecodeError) as e:
        list(read_frames(path, [0, 5]))
    assert e.value.stage == "open" and "holds no video frame" in str(e.value)
    assert "Permission" not in str(e.value)
