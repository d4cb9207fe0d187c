"""Pooled views: exact pooling arithmetic, and views derived from a cache written through the store."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.data_cache.store import MISSING, TokenCache
from migfuse.data_cache.views import (context_cls_mean, default_views, list_poolings, make_view, part_groups,
                                      pose_grid, pose_parts, register_pooling, video_time)
from migfuse.errors import UserError
from migfuse.synth.tokens import write_synthetic


def test_video_time_is_class_token_plus_grid_mean_per_step():
    x = np.random.default_rng(0).standard_normal((2, 393, 4)).astype(np.float32)
    out = video_time({"tokens": x})
    assert out["tokens"].shape == (2, 9, 4) and out["mask"].all()
    np.testing.assert_allclose(out["tokens"][:, 0], x[:, 0])
    np.testing.assert_allclose(out["tokens"][:, 3], x[:, 1 + 2 * 49 : 1 + 3 * 49].mean(1), rtol=1e-5)


def test_video_time_averages_only_valid_windows():
    x = np.zeros((1, 3, 393, 2), np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, 3.0, 100.0  # window 2 is padding
    out = video_time({"tokens": x, "tokens_len": np.array([2])})
    np.testing.assert_allclose(out["tokens"], 2.0)


def test_pose_parts_time_and_part_tokens():
    f = np.arange(1 * 2 * 4 * 6, dtype=np.float32).reshape(1, 2, 4, 6)  # (B, C, T', V)
    out = pose_parts({"features": f}, time_steps=2, parts=3)
    assert out["tokens"].shape == (1, 2 + 3, 2)
    np.testing.assert_allclose(out["tokens"][0, 0], f[0, :, 0:2].mean((1, 2)))  # time bin 0, all joints
    np.testing.assert_allclose(out["tokens"][0, 2 + 1], f[0, :, :, 2:4].mean((1, 2)))  # part 1 = joints 2, 3
    assert part_groups(55, 6)[-1][-1] == 54 and sum(map(len, part_groups(55, 6))) == 55
    with pytest.raises(UserError):
        part_groups(5, [[0, 9]])


def test_context_pooling_masks_invalid_windows():
    x = np.ones((1, 2, 393, 3), np.float32)
    out = context_cls_mean({"tokens": x, "valid": np.array([[True, False]])})
    assert out["tokens"].shape == (1, 2, 2, 3)
    assert out["mask"].tolist() == [[[True, True], [False, False]]]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    return write_synthetic(root, n_videos=2, clips_per_video=3, windows=2, faces=3, joints=55,
                           skip=["0001_1"], seed=3)


def test_default_views_from_store(small_cache):
    prepared, path = small_cache
    made = default_views(path)
    assert set(made) == {"video", "joint", "bone", "face", "context", "face_context"}
    cache = TokenCache(path)
    shapes = {k: cache.group(v).arrays["tokens"].shape for k, v in made.items()}
    assert shapes == {"video": (9, 768), "joint": (14, 256), "bone": (14, 256), "face": (3, 519),
                      "context": (2, 2, 768), "face_context": (2, 3, 519)}
    video = cache.group("views/video")
    assert video.clips_per_chunk > 1
    assert video.provenance["source"] == "video/mvit_v2_s"
    assert video.provenance["source_provenance"] == cache.group("video/mvit_v2_s").provenance
    assert video.provenance["pooling"]["name"] == "video_time"
    # The clip missing from the source is missing from the view too; the rest match a direct pooling.
    assert video.status(["0001_1"])[0] == MISSING
    src = cache.group("video/mvit_v2_s").read("0002_0")["tokens"][None].astype(np.float32)
    np.testing.assert_allclose(video.read("0002_0")["tokens"], video_time({"tokens": src})["tokens"][0], atol=2e-2)


def test_view_resumes_and_refuses_other_settings(small_cache):
    _, path = small_cache
    first = make_view(path, "pose_small", "joint/agcn", pooling="pose_time", time_steps=4)
    again = make_view(path, "pose_small", "joint/agcn", pooling="pose_time", time_steps=4)
    assert again.done_ids() == first.done_ids() and first.arrays["tokens"].shape == (4, 256)
    with pytest.raises(UserError, match="pooling.time_steps"):
        make_view(path, "pose_small", "joint/agcn", pooling="pose_time", time_steps=2)
    rebuilt = make_view(path, "pose_small", "joint/agcn", pooling="pose_time", time_steps=2, overwrite=True)
    assert rebuilt.arrays["tokens"].shape == (2, 256)
    with pytest.raises(UserError, match="does not apply"):
        make_view(path, "bad", "face/swinface", pooling="video_time")


def test_a_pooling_name_is_registered_once_and_an_unknown_one_names_the_choices(small_cache):
    _, path = small_cache
    with pytest.raises(ValueError, match="pooling 'video_time' is registered twice"):
        register_pooling("video_time", ("video",))(lambda a: a)
    with pytest.raises(UserError, match="unknown pooling 'mean': choose one of context_cls_mean, face_keep, "
                                        "pose_grid, pose_parts, pose_time, raw, video_cls, video_time"):
        make_view(path, "x", "joint/agcn", pooling="mean")
    assert list_poolings()["pose_parts"] == ("joint", "bone")


def test_view_of_a_re_extracted_source_is_refused(tmp_path):
    pytest.importorskip("torch")  # resolve_inputs lives in migfuse.fuse.data; scripts/floor_check.sh runs without torch
    from migfuse.data_cache.store import ArraySpec, GroupSpec
    from migfuse.fuse.data import resolve_inputs

    cache = TokenCache(tmp_path / "c.zarr")

    def extract(checkpoint: str):
        g = cache.require_group(GroupSpec("joint/agcn", ["a", "b"], {"features": ArraySpec((256, 4, 5), "float16")},
                                          {"checkpoint": checkpoint}))
        g.write_many(["a", "b"], {"features": np.ones((2, 256, 4, 5), np.float16)})

    extract("v1")
    make_view(cache, "joint", "joint/agcn")
    assert resolve_inputs(cache, ["joint"]) == {"joint": "views/joint"}
    cache.delete_group("joint/agcn")
    extract("v2")
    with pytest.raises(UserError) as e:
        resolve_inputs(cache, ["joint"])
    fix = (f"pool it again: `migfuse cache view {cache.path} --defaults --overwrite` (or the `cache view` command that "
           f"made views/joint, plus --overwrite)")
    assert str(e.value) == (f"view 'views/joint' in {cache.path} was derived from an earlier 'joint/agcn' (its "
                            f"provenance changed since); {fix}")
    with pytest.raises(UserError) as e:  # cache view says the same, about its own options (it has no --cache)
        make_view(cache, "joint", "joint/agcn")
    assert str(e.value) == (f"view 'views/joint' in {cache.path} was written with source_provenance.checkpoint='v1' "
                            f"but this pooling has source_provenance.checkpoint='v2'; {fix}")
    make_view(cache, "joint", "joint/agcn", overwrite=True)
    assert resolve_inputs(cache, ["joint"]) == {"joint": "views/joint"}


def test_cli_view_defaults(small_cache):
    from typer.testing import CliRunner

    from migfuse.cli import app

    _, path = small_cache
    r = CliRunner().invoke(app, ["cache", "view", str(path), "--defaults"])
    assert r.exit_code == 0, r.output
    assert "video          -> views/video" in r.output
    r = CliRunner().invoke(app, ["cache", "view", str(path), "--name", "x"])
    assert r.exit_code == 2 and "--group" in r.output


def test_more_time_steps_than_the_source_holds_are_said_not_silently_capped(tmp_path, caplog):
    cache = TokenCache(tmp_path / "c.zarr")
    from migfuse.data_cache.store import ArraySpec, GroupSpec

    g = cache.require_group(GroupSpec("joint/agcn", ["a", "b"], {"features": ArraySpec((8, 4, 5), "float16")}, {}))
    g.write_many(["a", "b"], {"features": np.ones((2, 8, 4, 5), np.float16)})
    view = make_view(cache, "j", "joint/agcn", pooling="pose_time", time_steps=1000)
    assert view.arrays["tokens"].shape == (4, 8)
    assert "views/j: time_steps 1000 is more than the 4 time steps of joint/agcn; the view keeps 4" in caplog.messages


def test_cli_view_of_no_cache_says_so(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    r = CliRunner().invoke(app, ["cache", "view", str(tmp_path / "nonexist.zarr"), "--defaults"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip() == (f"error: no token cache at {tmp_path / 'nonexist.zarr'} (create it with `migfuse "
                                f"extract ...`, or check the path)")


def test_video_tokens_without_a_class_token_pool_by_their_recorded_layout():
    from migfuse.data_cache.views import layout_params, video_cls

    x = np.random.default_rng(1).standard_normal((2, 4 * 49, 3)).astype(np.float32)  # Video Swin: 4 x 7 x 7
    out = video_time({"tokens": x}, class_token=False)
    assert out["tokens"].shape == (2, 4, 3)
    np.testing.assert_allclose(out["tokens"][:, 2], x[:, 2 * 49:3 * 49].mean(1), rtol=1e-5)
    np.testing.assert_allclose(video_cls({"tokens": x}, class_token=False)["tokens"][:, 0], x.mean(1), rtol=1e-5)
    ctx = context_cls_mean({"tokens": x[:, None], "valid": np.array([[True], [False]])}, class_token=False)
    assert ctx["tokens"].shape == (2, 1, 1, 3) and ctx["mask"].tolist() == [[[True]], [[False]]]
    layout = {"token_layout": {"class_token": False, "grid": [16, 4, 4]}}
    assert layout_params("video_time", layout) == {"class_token": False, "grid": 16}
    assert layout_params("video_cls", layout) == {"class_token": False}
    assert layout_params("pose_parts", layout) == {} and layout_params("video_time", {}) == {}
    with pytest.raises(UserError, match="video tokens of 196 patches are not whole time steps of 48"):
        video_time({"tokens": x}, grid=48, class_token=False)


def test_pose_grid_keeps_the_map_layout_time_tokens_then_cells_row_major():
    # f[0, c, t, p] = 64 c + 16 t + p on a 4x4 map (p = 4 row + col), 4 time steps
    f = np.arange(2 * 4 * 16, dtype=np.float32).reshape(1, 2, 4, 16)
    out = pose_grid({"features": f}, time_steps=2, cells=2, grid=[4, 4])
    assert out["tokens"].shape == (1, 2 + 4, 2) and out["mask"].all()
    c = np.array([0.0, 64.0])
    # time tokens: steps {0, 1} and {2, 3}, all 16 positions (mean position 7.5)
    np.testing.assert_array_equal(out["tokens"][0, 0], c + 16 * 0.5 + 7.5)
    np.testing.assert_array_equal(out["tokens"][0, 1], c + 16 * 2.5 + 7.5)
    # cells over time (mean 16 * 1.5 = 24): (0, 0) = positions 0 1 4 5, (0, 1) = 2 3 6 7,
    # (1, 0) = 8 9 12 13, (1, 1) = 10 11 14 15
    for token, positions in zip(range(2, 6), ([0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15])):
        np.testing.assert_array_equal(out["tokens"][0, token], c + 24 + np.mean(positions))
    # a 2 x 4 map into at most 4 x 4 cells keeps its 2 x 4 positions, row-major
    wide = pose_grid({"features": f[:, :, :, :8]}, time_steps=1, cells=4, grid=[2, 4])
    np.testing.assert_array_equal(wide["tokens"][0, 1:, 0], 24 + np.arange(8))
    with pytest.raises(UserError, match="pose_grid: 16 map positions are not a 3x5 grid"):
        pose_grid({"features": f}, grid=[3, 5])


def _pose_group(cache: TokenCache, name: str, provenance: dict, positions: int = 64) -> None:
    from migfuse.data_cache.store import ArraySpec, GroupSpec

    rng = np.random.default_rng(1)
    g = cache.require_group(GroupSpec(name, ["a", "b"], {"features": ArraySpec((8, 10, positions), "float16")},
                                      provenance))
    g.write_many(["a", "b"], {"features": rng.standard_normal((2, 8, 10, positions)).astype(np.float16)})


POSEC3D_LAYOUT = {"class_token": False, "grid": [10, 8, 8], "input": "heatmap_volume"}


def test_posec3d_groups_default_to_pose_grid_and_refuse_pose_parts(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    _pose_group(cache, "joint/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    _pose_group(cache, "bone/posec3d", {"backbone": "posec3d", "heatmaps": {"size": 64}})  # no layout recorded
    made = default_views(cache)
    assert made == {"joint": "views/joint", "bone": "views/bone"}
    for view in ("views/joint", "views/bone"):  # the older group's 8x8 map is read from its 64 positions
        g = cache.group(view)
        assert g.provenance["pooling"] == {"name": "pose_grid", "grid": [8, 8], "time_steps": 8, "cells": 4}
        assert g.arrays["tokens"].shape == (24, 8)
    src = cache.group("joint/posec3d").read_many(["a"])
    np.testing.assert_allclose(cache.group("views/joint").read("a")["tokens"],
                               pose_grid(src, grid=[8, 8])["tokens"][0], atol=2e-3)
    _pose_group(cache, "bone/agcn", {"backbone": "agcn"}, positions=17)
    agcn = make_view(cache, "gcn", "bone/agcn")  # joints keep their body-part view
    assert agcn.provenance["pooling"]["name"] == "pose_parts" and agcn.arrays["tokens"].shape == (14, 8)
    few = make_view(cache, "few", "joint/posec3d", time_steps=2, cells=2)
    assert few.arrays["tokens"].shape == (2 + 4, 8)
    assert make_view(cache, "t", "joint/posec3d", pooling="pose_time").arrays["tokens"].shape == (8, 8)
    with pytest.raises(UserError) as e:
        make_view(cache, "p", "joint/posec3d", pooling="pose_parts")
    assert str(e.value) == ("pooling 'pose_parts' averages joints into body parts, but joint/posec3d holds a 8x8 "
                            "heatmap feature map (PoseC3D); use --pool pose_grid (or pose_time)")
    with pytest.raises(UserError) as e:
        make_view(cache, "g", "bone/agcn", pooling="pose_grid")
    assert str(e.value) == ("pooling 'pose_grid' pools a heatmap feature map, but bone/agcn holds joints; "
                            "use --pool pose_parts (or pose_time)")
    with pytest.raises(UserError) as e:
        make_view(cache, "x", "joint/posec3d", parts=3)
    assert str(e.value) == "pooling 'pose_grid' takes no --parts; drop it (its options: --time-steps, --cells)"
    assert not {"views/p", "views/g", "views/x"} & set(cache.group_names())


def test_cli_refuses_pose_parts_for_posec3d_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    cache = TokenCache(tmp_path / "c.zarr")
    _pose_group(cache, "joint/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    r = CliRunner().invoke(app, ["cache", "view", str(cache.path), "--name", "p", "--group", "joint/posec3d",
                                 "--pool", "pose_parts"])
    assert r.exit_code == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.output
    assert "use --pool pose_grid (or pose_time)" in r.stderr
    r = CliRunner().invoke(app, ["cache", "view", str(cache.path), "--name", "c", "--group", "joint/posec3d",
                                 "--cells", "2"])
    assert r.exit_code == 0 and "views/c: 2/2 rows, tokens (12, 8)" in r.output, r.output


def test_a_default_view_resumes_with_its_defaults_given_explicitly(tmp_path, monkeypatch):
    from migfuse.data_cache import views

    cache = TokenCache(tmp_path / "c.zarr")
    _pose_group(cache, "joint/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    _pose_group(cache, "bone/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    default_views(cache)
    with monkeypatch.context() as m:  # an earlier release recorded only the parameters it was given
        m.setattr(views, "effective_params", lambda fn, params, row_shape=None: dict(params))
        make_view(cache, "old", "bone/posec3d")
    assert cache.group("views/old").provenance["pooling"] == {"name": "pose_grid", "grid": [8, 8]}
    for view, source in (("joint", "joint/posec3d"), ("old", "bone/posec3d")):
        for given in ({"cells": 4}, {"time_steps": 8}, {"time_steps": 8, "cells": 4}, {}):
            assert make_view(cache, view, source, **given).done_ids() == ["a", "b"]
    with pytest.raises(UserError, match="written with pooling.cells=4 but this pooling has pooling.cells=2"):
        make_view(cache, "joint", "joint/posec3d", cells=2)


def test_sizes_beyond_the_source_are_cut_warned_and_recorded_as_kept(tmp_path, caplog):
    cache = TokenCache(tmp_path / "c.zarr")
    _pose_group(cache, "joint/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    with caplog.at_level("WARNING"):
        big = make_view(cache, "big", "joint/posec3d", cells=9, time_steps=20)
    assert big.provenance["pooling"] == {"name": "pose_grid", "grid": [8, 8], "time_steps": 10, "cells": 8}
    assert big.arrays["tokens"].shape == (10 + 64, 8)
    said = [r.getMessage() for r in caplog.records]
    assert "views/big: cells 9 is more than the 8 map rows/columns of joint/posec3d; the view keeps 8" in said
    assert "views/big: time_steps 20 is more than the 10 time steps of joint/posec3d; the view keeps 10" in said
    assert make_view(cache, "big", "joint/posec3d", cells=8, time_steps=10).done_ids() == ["a", "b"]


def test_cli_refuses_pooling_options_with_defaults_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    cache = TokenCache(tmp_path / "c.zarr")
    _pose_group(cache, "joint/posec3d", {"backbone": "posec3d", "token_layout": POSEC3D_LAYOUT})
    r = CliRunner().invoke(app, ["cache", "view", str(cache.path), "--defaults", "--cells", "2"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.strip() == ("error: --defaults makes each track's default view with its default pooling, so "
                                "--cells would be ignored: drop it, or make a view of your own with --name NAME "
                                "--group GROUP")
    assert not [g for g in cache.group_names() if g.startswith("views/")]
    r = CliRunner().invoke(app, ["cache", "view", "--help"])
    text = " ".join(r.output.split())
    assert "spatial tokens. [default: (4); 1<=x<=64]" in text and "[default: 4]." not in text
