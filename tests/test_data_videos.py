"""Videos as people record them (issue #10 §2): every container under the root, phone rotation decoded
upright, and a PREPARED folder that works where the videos live elsewhere."""
from __future__ import annotations

import csv
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.datasets.manifest import VIDEO_ROOT_ENV, Manifest
from migfuse.datasets.prepare import prepare
from migfuse.errors import UserError
from migfuse.extract.decode import read_frames
from migfuse.datasets.orientation import rotation_degrees, upright, video_rotation
from shared_paths import REALWORLD, missing_reason

HEADER = ("video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,"
          "subject_gender,subject_nationality,win_or_lose\n")
ROTATION_CASE = REALWORLD / "rotation-metadata-ignored"


def _portrait() -> np.ndarray:
    """(96, 64, 3) upright picture: a bright bar at the top and a grey block at the bottom left."""
    img = np.zeros((96, 64, 3), np.uint8)
    img[:16] = 255
    img[72:, :24] = 128
    return img


def _write(path: Path, picture: np.ndarray, n: int = 10, display_ccw: int | None = None) -> Path:
    """An h264/mpeg4 video of ``n`` copies of ``picture``; ``display_ccw`` writes a display matrix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        codec = "libvpx" if path.suffix.lower() == ".webm" else "libx264"
        st = out.add_stream(codec if codec in av.codecs_available else "mpeg4", rate=25)
        st.width, st.height, st.pix_fmt = picture.shape[1], picture.shape[0], "yuv420p"
        if display_ccw is not None:
            st.set_display_rotation(display_ccw)
        for _ in range(n):
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def _phone_mp4(path: Path) -> Path:
    """What phones write (and the shared case builds): a sideways coded picture, and the tkhd matrix
    of the mp4 track set to "rotate 90 degrees clockwise to display"."""
    _write(path, np.rot90(_portrait(), k=1))
    b = bytearray(path.read_bytes())
    i = b.find(b"tkhd")
    off = i + 8 + (20 if b[i + 4] == 0 else 32) + 16
    h = struct.unpack(">I", b[off + 40:off + 44])[0]
    b[off:off + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, h, 0, 1 << 30)
    path.write_bytes(bytes(b))
    return path


def _assert_upright(frame: np.ndarray) -> None:
    assert frame.shape == (96, 64, 3)
    assert frame[:12].mean() > 230 and frame[20:70].mean() < 25          # the bar is at the top
    assert 100 < frame[76:, :20].mean() < 156 and frame[76:, 30:].mean() < 25  # the block bottom left


def test_phone_video_with_a_rotate_90_track_is_decoded_upright(tmp_path):
    path = _phone_mp4(tmp_path / "0045.mp4")
    assert video_rotation(path) == 90
    frames = dict(read_frames(path, [0, 3, 9]))
    assert sorted(frames) == [0, 3, 9]
    for frame in frames.values():
        _assert_upright(frame)


@pytest.mark.parametrize("display_ccw, coded_turns", [(-90, 1), (180, 2), (90, 3), (0, 0)])
def test_every_display_rotation_is_applied_like_ffmpeg_autorotate(tmp_path, display_ccw, coded_turns):
    # the coded picture is the upright one turned counter-clockwise coded_turns times; the display
    # matrix turns it back (PyAV's set_display_rotation takes counter-clockwise degrees)
    path = _write(tmp_path / "v.mkv" if display_ccw == 180 else tmp_path / "v.mp4",
                  np.rot90(_portrait(), k=coded_turns), display_ccw=display_ccw or None)
    assert video_rotation(path) == coded_turns * 90
    (index, frame), = read_frames(path, [4])
    _assert_upright(frame)


def test_rotation_helpers():
    img = np.arange(6).reshape(2, 3, 1)
    assert upright(img, 0) is img
    np.testing.assert_array_equal(upright(img, 90)[:, :, 0], [[3, 0], [4, 1], [5, 2]])  # clockwise
    np.testing.assert_array_equal(upright(upright(img, 90), 270), img)
    np.testing.assert_array_equal(upright(img, 180)[:, :, 0], [[5, 4, 3], [2, 1, 0]])

    class Frame:
        rotation = -90.0

    class Stream:
        metadata = {"rotate": "270"}

    assert (rotation_degrees(Frame()), rotation_degrees(Stream()), rotation_degrees(object())) == (90, 270, 0)


@pytest.mark.skipif(not ROTATION_CASE.is_dir(), reason=missing_reason(ROTATION_CASE, "the real-world cases"))
def test_shared_case_rotation_metadata_ignored(tmp_path):
    subprocess.run([sys.executable, str(ROTATION_CASE / "make_input.py"), str(tmp_path / "root")], check=True,
                   capture_output=True)
    (index, frame), = read_frames(tmp_path / "root" / "0045.mp4", [0])
    assert frame.shape == (96, 64, 3) and frame[:8].mean() > 200
    assert not (frame[:, :8].mean() > 200 or frame[:, -8:].mean() > 200)
    result = prepare(tmp_path / "root", tmp_path / "out", layout="oulu", progress=False)
    assert result.report["rotated_videos"] == {"0045": 90}
    facts = result.report["video_files"]["0045"]
    assert (facts["width"], facts["height"]) == (64, 96)  # the measured size is the upright one


def _labels(root: Path, vids: list[int]) -> None:
    (root / "Label").mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{v},1,0.0,0,0.08,2,5,3,F,X,Win\n" for v in vids)
    (root / "Label" / "labels_20200831.csv").write_text(HEADER + rows)


def test_videos_of_every_container_and_case_anywhere_under_the_root(tmp_path):
    root = tmp_path / "root"
    _labels(root, [1, 2, 3, 4, 5, 6, 7])
    picture = _portrait()
    _write(root / "rgb" / "0001.mp4", picture)
    _write(root / "rgb" / "deep" / "2.AVI", picture)
    _write(root / "rgb" / "0003.mkv", picture)
    _write(root / "0004.MOV", picture)
    _write(root / "rgb" / "0005.webm", picture)
    skeleton = root / "pose" / "0006"          # a video kept inside its OpenPose folder
    skeleton.mkdir(parents=True)
    for t in range(3):
        (skeleton / f"0006_{t:012d}_keypoints.json").write_text('{"people": []}')
    _write(skeleton / "0006.Mp4", picture)
    _write(root / "a" / "0007.mp4", picture)
    _write(root / "b" / "0007.mkv", picture)   # two files for one video: reported, not a silent pick
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    m = Manifest.load(tmp_path / "out")
    found = {v: m.videos[v].video_path.as_posix() for v in m.videos}
    assert found == {"0001": "rgb/0001.mp4", "0002": "rgb/deep/2.AVI", "0003": "rgb/0003.mkv", "0004": "0004.MOV",
                     "0005": "rgb/0005.webm", "0006": "pose/0006/0006.Mp4", "0007": "a/0007.mp4"}
    assert result.report["videos_with_file"] == 7
    dup = next(p for p in result.report["problems"] if p["kind"] == "duplicate_file")
    assert dup["video_id"] == "0007" and dup["path"].endswith("b/0007.mkv") and "two video files" in dup["detail"]
    assert all(m.videos[v].rotation == 0 for v in m.videos)


def test_prepared_folder_works_after_moving_it_and_the_videos(tmp_path, monkeypatch):
    monkeypatch.delenv(VIDEO_ROOT_ENV, raising=False)
    laptop = tmp_path / "laptop"
    _labels(laptop / "data", [45, 46])
    _phone_mp4(laptop / "data" / "rgb" / "0045.mp4")
    _write(laptop / "data" / "rgb" / "0046.mp4", _portrait())
    prepare(laptop / "data", laptop / "prepared", layout="oulu", progress=False)
    with open(laptop / "prepared" / "videos.csv", newline="") as f:
        rows = {r["video_id"]: r for r in csv.DictReader(f)}
    assert rows["0045"]["video_path"] == "rgb/0045.mp4" and rows["0045"]["rotation"] == "90"
    assert rows["0045"]["dataset_root"] == str((laptop / "data").resolve())

    gpu = tmp_path / "gpu"   # both folders move, to different places
    shutil.move(laptop / "data", gpu / "videos" / "imigue")
    shutil.move(laptop / "prepared", gpu / "work" / "prepared")
    m = Manifest.load(gpu / "work" / "prepared")
    with pytest.raises(UserError, match=r"none of the 2 video files of .*is found "
                                        r"\(e.g. video 0045: .*rgb/0045\.mp4\); "
                                        r"pass --video-root DIR \(or set MIGFUSE_VIDEO_ROOT\)"):
        m.video_files()
    paths = m.video_files(video_root=gpu / "videos" / "imigue")
    assert paths == {"0045": str(gpu / "videos" / "imigue" / "rgb" / "0045.mp4"),
                     "0046": str(gpu / "videos" / "imigue" / "rgb" / "0046.mp4")}
    (index, frame), = read_frames(paths["0045"], [2])
    _assert_upright(frame)
    monkeypatch.setenv(VIDEO_ROOT_ENV, str(gpu / "videos" / "imigue"))
    assert m.video_files() == paths
    monkeypatch.delenv(VIDEO_ROOT_ENV)
    (gpu / "videos" / "imigue" / "rgb" / "0046.mp4").unlink()   # one missing file: that video fails, not all
    assert m.video_files(video_root=gpu / "videos" / "imigue")["0046"] == \
        str(gpu / "videos" / "imigue" / "rgb" / "0046.mp4")


def test_old_videos_csv_with_absolute_paths_still_loads(tmp_path):
    video = _write(tmp_path / "v" / "0298.mp4", _portrait())
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "manifest.csv").write_text("clip_id,video_id,k,start_frame,end_frame,label,raw_class,subject,win_lose,"
                                      "split_cs,split_miga,split_emotion\n0298_0,0298,0,0,5,7,8,22,Win,train,train,\n")
    (out / "videos.csv").write_text("video_id,subject,win_lose,split_emotion,video_path,skeleton,n_frames\n"
                                    f"0298,22,Win,,{video},,\n")
    m = Manifest.load(out)
    assert m.videos["0298"].rotation is None and m.videos["0298"].dataset_root is None
    assert m.video_path("0298") == video
    shutil.move(tmp_path / "v", tmp_path / "elsewhere")
    assert m.video_path("0298", video_root=tmp_path / "elsewhere") == tmp_path / "elsewhere" / "0298.mp4"


def test_cli_prepare_says_which_videos_are_rotated(tmp_path):
    from migfuse.cli import app

    _labels(tmp_path / "root", [45])
    _phone_mp4(tmp_path / "root" / "0045.mp4")
    result = CliRunner().invoke(app, ["data", "prepare", "--root", str(tmp_path / "root"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "video 0045 is stored rotated: decoded upright with a 90 degree clockwise turn" in result.output
    assert "1 video files" in result.output
