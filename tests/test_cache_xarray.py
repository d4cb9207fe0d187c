"""The cache opens in zarr and xarray: dimension names, the id coordinate, consolidated metadata,
status-aware values, and the views-only copy for a laptop (`cache export-views`)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.store import DONE, FAILED, MISSING, ArraySpec, GroupSpec, TokenCache
from migfuse.data_cache.views import default_views, export_views
from migfuse.synth.tokens import write_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Every track in its real per-row shapes (small sizes), one clip and one video left missing,
    one clip failed, a windowed ragged video group, and the default views."""
    root = tmp_path_factory.mktemp("xr")
    prepared, path = write_synthetic(root, n_videos=3, clips_per_video=2, num_classes=4, skip=("0001_1", "0002"),
                                     windows=2, faces=2, pose_steps=4, joints=5)
    cache = TokenCache(path)
    cache.group("joint/agcn").write_failure("0003_0", "skeleton", "no person in any frame")
    ids = ["0001_0", "0001_1", "0002_0"]
    windowed = cache.require_group(GroupSpec("video/mvit_windows", ids,
                                             {"tokens": ArraySpec((3, 4, 6), "float16", ragged=True)}))
    windowed.write("0001_0", {"tokens": np.ones((2, 4, 6))})
    windowed.write("0002_0", {"tokens": np.full((3, 4, 6), 2.0)})
    default_views(cache)
    return cache


def _open(cache: TokenCache, group: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "failed to open consolidated metadata" fallback warning
        return xr.open_zarr(cache.path, group=group)


def test_every_group_and_view_opens_in_xarray_with_the_values_and_dims_of_the_api(synthetic):
    names = synthetic.group_names()
    assert {"video/mvit_v2_s", "context/mvit_v2_s", "joint/agcn", "bone/agcn", "face/swinface",
            "face_context/swinface", "video/mvit_windows", "views/video", "views/joint", "views/face",
            "views/context", "views/face_context"} <= set(names)
    for name in names:
        g = synthetic.group(name)
        ds = _open(synthetic, name)
        row = g.row_dim
        assert list(ds.indexes) == [row], name
        assert ds[row].values.tolist() == g.ids, name
        np.testing.assert_array_equal(ds["status"].values, g.status())
        assert ds.attrs["migfuse"]["provenance"] == g.provenance
        done = g.done_ids()
        api = g.read_many(done)
        for array, spec in g.arrays.items():
            assert ds[array].dims == (row, *spec.dims), (name, array)
            np.testing.assert_array_equal(ds[array].sel({row: done}).values, api[array], err_msg=f"{name}/{array}")
            if spec.ragged:
                np.testing.assert_array_equal(ds[f"{array}_len"].sel({row: done}).values, api[f"{array}_len"])


def test_dimension_names_follow_each_track(synthetic):
    assert _open(synthetic, "video/mvit_v2_s")["tokens"].dims == ("clip", "token", "channel")
    assert _open(synthetic, "video/mvit_windows")["tokens"].dims == ("clip", "window", "token", "channel")
    assert _open(synthetic, "joint/agcn")["features"].dims == ("clip", "channel", "time", "joint")
    face = _open(synthetic, "face/swinface")
    assert (face["features"].dims, face["logits"].dims, face["mask"].dims) == (
        ("clip", "face", "feature"), ("clip", "face", "expression"), ("clip", "face"))
    context = _open(synthetic, "context/mvit_v2_s")
    assert context["tokens"].dims == ("video", "window", "token", "channel") and \
        context["valid"].dims == ("video", "window")
    assert _open(synthetic, "face_context/swinface")["features"].dims == ("video", "window", "face", "feature")
    assert _open(synthetic, "views/video")["tokens"].dims == ("clip", "token", "channel")
    assert _open(synthetic, "views/context")["mask"].dims == ("video", "window", "token")


def test_a_row_is_selected_by_its_id_and_rows_not_done_read_as_nan_not_zeros(synthetic):
    ds = _open(synthetic, "video/mvit_v2_s")
    one = ds.sel(clip="0002_1")
    np.testing.assert_array_equal(one["tokens"].values, synthetic.group("video/mvit_v2_s").read("0002_1")["tokens"])
    assert int(one["status"]) == DONE
    missing = ds.sel(clip="0001_1")
    assert int(missing["status"]) == MISSING and np.isnan(missing["tokens"].values).all()
    joint = _open(synthetic, "joint/agcn").sel(clip="0003_0")
    assert int(joint["status"]) == FAILED and np.isnan(joint["features"].values).all()
    assert json.loads(str(joint["failure"].values))["message"] == "no person in any frame"
    assert ds.isel(clip=ds["status"] == DONE).sizes["clip"] == 5


def test_a_failure_after_a_success_clears_the_old_values(tmp_path):
    g = TokenCache(tmp_path / "c.zarr").require_group(GroupSpec("video/x", ["a", "b"],
                                                                {"tokens": ArraySpec((2,), "float32")}))
    g.write("a", {"tokens": np.ones(2)})
    g.write_failure("a", "decode", "broken")
    with pytest.raises(KeyError, match=r"not done .*\(0 missing, 1 failed\)"):
        g.read("a")
    assert np.isnan(zarr.open_array(str(tmp_path / "c.zarr/video/x/tokens"))[0]).all()


def test_consolidated_metadata_follows_every_new_group_and_writers_ignore_it(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    a = cache.require_group(GroupSpec("video/a", ["x", "y"], {"t": ArraySpec((2,), "float32")}))
    root_meta = json.loads((cache.path / "zarr.json").read_text())
    assert "video/a/status" in root_meta["consolidated_metadata"]["metadata"]
    # A second process-like writer creates a group after the consolidation, then rows are written.
    b = TokenCache(cache.path).require_group(GroupSpec("joint/b", ["x"], {"f": ArraySpec((3,), "float16")}))
    b.write("x", {"f": np.arange(3)})
    a.write("y", {"t": np.array([1.0, 2.0])})
    assert TokenCache(cache.path).group("joint/b").done_ids() == ["x"]
    consolidated = json.loads((cache.path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert {"video/a", "joint/b", "joint/b/f", "joint/b/clip"} <= set(consolidated)
    np.testing.assert_array_equal(_open(cache, "joint/b").sel(clip="x")["f"].values, [0, 1, 2])
    np.testing.assert_array_equal(_open(cache, "video/a")["t"].values[1], [1.0, 2.0])


def test_the_lock_file_lives_next_to_the_store_not_inside_it(tmp_path):
    cache = TokenCache(tmp_path / "c.zarr")
    cache.require_group(GroupSpec("video/a", ["x"], {"t": ArraySpec((2,), "float32")}))
    assert cache.lock_path == (tmp_path / "c.zarr.lock").absolute()
    assert [p.name for p in cache.path.iterdir() if p.is_file()] == ["zarr.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zarr.open_group(str(cache.path), mode="r").tree()


def test_soft_lock_is_chosen_by_the_environment_and_a_bad_value_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGFUSE_CACHE_LOCK", "soft")
    g = TokenCache(tmp_path / "c.zarr").require_group(GroupSpec("video/a", ["x"], {"t": ArraySpec((2,), "float32")}))
    assert g.ids == ["x"] and not (tmp_path / "c.zarr.lock").exists()  # a soft lock is removed on release
    monkeypatch.setenv("MIGFUSE_CACHE_LOCK", "nfs")
    with pytest.raises(Exception, match=r"MIGFUSE_CACHE_LOCK='nfs' is not a lock kind; "
                                        r"set it to file \(default\) or soft"):
        TokenCache(tmp_path / "d.zarr").require_group(GroupSpec("video/a", ["x"], {"t": ArraySpec((2,), "float32")}))


def test_a_filesystem_without_locks_says_which_option_to_use(tmp_path, monkeypatch):
    import errno

    import filelock

    def no_locks(self, *a, **k):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_locks)
    from migfuse.errors import UserError

    with pytest.raises(UserError, match=r"cannot lock .*c\.zarr\.lock \(No locks available\)"
                                        r".*set MIGFUSE_CACHE_LOCK=soft"):
        TokenCache(tmp_path / "c.zarr").require_group(GroupSpec("video/a", ["x"], {"t": ArraySpec((2,), "float32")}))


def test_export_views_copies_only_views_and_the_copy_is_ready_for_fuse(synthetic, tmp_path):
    laptop = tmp_path / "laptop.zarr"
    res = CliRunner().invoke(app, ["cache", "export-views", str(synthetic.path), str(laptop)])
    assert res.exit_code == 0, res.output
    copy = TokenCache(laptop)
    views = [n for n in synthetic.group_names() if n.startswith("views/")]
    assert copy.group_names() == views
    for name in views:
        src, dst = synthetic.group(name), copy.group(name)
        assert dst.provenance == src.provenance and dst.ids == src.ids and dst.done_ids() == src.done_ids()
        np.testing.assert_array_equal(dst.read_many(dst.done_ids())["tokens"], src.read_many(src.done_ids())["tokens"])
        assert _open(copy, name)["tokens"].dims == _open(synthetic, name)["tokens"].dims
    assert export_views(synthetic, copy) == {n: 0 for n in views}  # resumable: nothing left to copy

    res = CliRunner().invoke(app, ["cache", "view", str(laptop), "--defaults"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"nothing to do: {laptop} holds views only")
    res = CliRunner().invoke(app, ["cache", "info", str(laptop)])
    assert res.exit_code == 0 and "views/video" in res.output


def test_export_views_of_a_cache_without_views_is_one_line(tmp_path):
    TokenCache(tmp_path / "c.zarr").require_group(GroupSpec("video/a", ["x"], {"t": ArraySpec((2,), "float32")}))
    res = CliRunner().invoke(app, ["cache", "export-views", str(tmp_path / "c.zarr"), str(tmp_path / "l.zarr")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: cache {tmp_path / 'c.zarr'} has no views to export; "
        f"make them first: `migfuse cache view {tmp_path / 'c.zarr'} --defaults`"]


def test_fuse_train_and_eval_accept_a_views_only_copy(tmp_path):
    prepared, cache = write_synthetic(tmp_path / "full", n_videos=4, clips_per_video=3, num_classes=2, joints=10,
                                      tracks=("joint", "bone"), with_validation=True)
    default_views(cache)
    laptop = tmp_path / "laptop.zarr"
    export_views(cache, laptop)
    assert all(n.startswith("views/") for n in TokenCache(laptop).group_names())
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 8, "threads": 1}))
    runner = CliRunner()
    res = runner.invoke(app, ["fuse", "train", "--cache", str(laptop), "--data", str(prepared), "--task", "mg",
                              "--head", "pose", "--config", str(config), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["fuse", "eval", str(tmp_path / "run"), "--split", "validation"])
    assert res.exit_code == 0 and "top-1" in res.output, res.output


def test_dimension_names_given_by_a_producer_or_clashing_stay_openable_and_order_does_not_matter(tmp_path):
    arrays = {"a": ArraySpec((2, 3), "float32", dims=("token", "channel")),
              "b": ArraySpec((5,), "int16", dims=("token",)),      # "token" has size 2 in "a": renamed
              "extra": ArraySpec((4,), "float32")}                   # not in the track's axis_names: generic name
    cache = TokenCache(tmp_path / "c.zarr")
    g = cache.require_group(GroupSpec("misc/x", ["r0", "r1"], arrays))
    assert {k: v.dims for k, v in g.arrays.items()} == {"a": ("token", "channel"), "b": ("b_token",),
                                                        "extra": ("extra_axis1",)}
    g.write("r1", {"a": np.ones((2, 3)), "b": np.arange(5), "extra": np.zeros(4)})
    again = cache.require_group(GroupSpec("misc/x", ["r0", "r1"], dict(reversed(list(arrays.items())))))
    assert again.done_ids() == ["r1"]
    ds = _open(cache, "misc/x")
    assert dict(ds.sizes) == {"clip": 2, "token": 2, "channel": 3, "b_token": 5, "extra_axis1": 4}
    np.testing.assert_array_equal(ds.sel(clip="r1")["b"].values, np.arange(5))
    with pytest.raises(ValueError, match="do not name the 1 axes"):
        ArraySpec((5,), "int16", dims=("a", "b"))
