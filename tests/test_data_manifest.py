"""Manifest: build by hand, save, load, query, skeleton memory maps, user errors."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.datasets.manifest import Clip, Manifest, VideoInfo, write_skeleton
from migfuse.errors import UserError


def _small(tmp_path):
    clips = [Clip.make("0298", 0, 10, 50, raw_class=8, subject=22, win_lose="Win"),
             Clip.make(298, 1, 60, 80, raw_class=99, subject=22, win_lose="Win"),
             Clip.make(9, 0, 0, 5, raw_class=None, subject=1, win_lose="Lose")]
    m = Manifest(clips=clips, videos={"0298": VideoInfo("0298", subject=22, win_lose="Win",
                                                        video_path=tmp_path / "0298.mp4")})
    points = np.arange(100 * 137 * 3, dtype=np.float32).reshape(100, 137, 3)
    mask = np.arange(100) % 3 != 0
    m.videos["0298"].skeleton = write_skeleton(tmp_path, "0298", points, mask)
    m.videos["0298"].n_frames = 100
    m.save(tmp_path)
    return m, points, mask


def test_round_trip_and_queries(tmp_path):
    m, points, mask = _small(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded.clips == m.clips
    assert loaded.videos == m.videos  # video 0009 got its row from its clip
    c = loaded.clip("0298_1")
    assert (c.label, c.raw_class, c.split_cs, c.split_miga, c.n_frames) == (31, 99, "train", "train", 21)
    unknown = loaded.clip("0009_0")
    assert (unknown.label, unknown.split_cs, unknown.split_miga,
            unknown.split_emotion) == (None, "test", "test", "test")
    assert loaded.ids() == ["0298_0", "0298_1", "0009_0"]
    assert loaded.ids("test", scheme="split_cs") == ["0009_0"]
    assert loaded.video_ids() == ["0009", "0298"]
    assert loaded.video_ids("test") == ["0009"]
    assert loaded.video_ids("train", scheme="split_miga") == ["0298"]
    assert [c.k for c in loaded.clips_of_video(298)] == [0, 1]
    array, got_mask = loaded.skeleton("298")
    assert isinstance(array, np.memmap) and array.dtype == np.float32
    np.testing.assert_array_equal(array, points)
    np.testing.assert_array_equal(got_mask, mask)


def test_errors(tmp_path):
    with pytest.raises(UserError, match=r"no manifest.csv in .*data prepare"):
        Manifest.load(tmp_path)
    # the usual mix-ups get their own fix: a file, the cache given as --data, a folder not there
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile is a file, not a PREPARED folder"):
        Manifest.load(tmp_path / "afile")
    (tmp_path / "c.zarr").mkdir()
    with pytest.raises(UserError, match=r"c.zarr is a token cache, not a PREPARED folder: did you swap --cache and"):
        Manifest.load(tmp_path / "c.zarr")
    with pytest.raises(UserError, match=r"no PREPARED folder at .*nothing: run `migfuse data prepare"):
        Manifest.load(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"no PREPARED folder at .*gone.zarr: run `migfuse data prepare"):
        Manifest.load(tmp_path / "gone.zarr")  # not there: a missing path, whatever its name
    _small(tmp_path)
    m = Manifest.load(tmp_path)
    with pytest.raises(UserError, match="video 0009 has no skeleton"):
        m.skeleton(9)
    with pytest.raises(UserError, match="video 0001 is not in the manifest"):
        m.skeleton(1)
    (tmp_path / "manifest.csv").write_text("clip_id,video_id\n0298_0,298\n")
    with pytest.raises(UserError, match="lacks columns k, start_frame"):
        Manifest.load(tmp_path)
    with pytest.raises(ValueError, match="duplicate clip id 0298_0"):
        Manifest([Clip.make(298, 0, 1, 2), Clip.make(298, 0, 3, 4)])
    with pytest.raises(ValueError, match=r"\(T, 137, 3\)"):
        write_skeleton(tmp_path, 1, np.zeros((5, 25, 3)))


def test_data_cache_imports_without_torch_or_av():
    import subprocess
    import sys

    code = ("import sys, migfuse.datasets.prepare, migfuse.datasets.manifest, migfuse.datasets.xlsx; "
            "print(sorted(m for m in ('torch', 'av', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
