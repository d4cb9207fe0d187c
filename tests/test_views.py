"""Pooled views: exact pooling arithmetic, and views derived from a cache written through the store."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.data_cache.store import MISSING, TokenCache
from migfuse.data_cache.views import (context_cls_mean, default_views, list_poolings, make_view, part_groups,
                                      pose_parts, register_pooling, video_time)
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
                                        "pose_parts, pose_time, raw, video_cls, video_time"):
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
