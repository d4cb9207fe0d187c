"""`migfuse cache import`: features made elsewhere (npy folders, npz, HDF5, mmaction2 pkl) as a cache
group that views, the heads and export use like a track; every bad input refused in one line with
nothing written."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.data_cache.feature_files import read_feature_file
from migfuse.data_cache.importing import plan_import, write_import
from migfuse.data_cache.store import TokenCache
from migfuse.data_cache.views import default_views
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.fuse.evaluate import evaluate
from migfuse.fuse.scores import Scores
from migfuse.synth.tokens import write_synthetic

h5py = pytest.importorskip("h5py")

D, STEPS = 32, 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """6 videos x 8 clips (frames 50k..50k+39), 4 classes, a joint/agcn group with a planted signal."""
    root = tmp_path_factory.mktemp("imp")
    prepared, cache = write_synthetic(root, n_videos=6, clips_per_video=8, num_classes=4, signal=0.1,
                                      tracks=("joint",), joints=17, pose_steps=8, seed=3)
    return prepared, cache, Manifest.load(prepared)


def clip_features(manifest, signal: float = 1.5, seed: int = 0) -> dict[str, np.ndarray]:
    """(STEPS, D) float32 per clip: noise + signal x a direction per class."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((4, D)).astype(np.float32)
    return {c.clip_id: (rng.standard_normal((STEPS, D)) + signal * directions[c.label]).astype(np.float32)
            for c in manifest.clips}


def write_h5_stacked(path, feats: dict[str, np.ndarray], **attrs) -> None:
    with h5py.File(path, "w") as f:
        f["features"] = np.stack(list(feats.values()))
        f["ids"] = np.array(list(feats), dtype="S")
        f.attrs.update(attrs)


def one_line_error(r, *parts: str) -> None:
    """Exit 2, one line starting `error: `, no traceback, containing each part."""
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "Traceback" not in r.output
    for part in parts:
        assert part in r.output, (part, r.output)


def import_args(cache, source, prepared, *extra: str) -> list[str]:
    return ["cache", "import", str(cache), str(source), "--data", str(prepared), *extra]


# ----- end to end ------------------------------------------------------------------------------------
def test_an_imported_hdf5_set_trains_cmtf_with_a_pose_group_and_exports(world, tmp_path):
    prepared, base_cache, manifest = world
    cache = tmp_path / "cache.zarr"
    shutil.copytree(base_cache, cache)
    h5 = tmp_path / "i3d.h5"
    feats = clip_features(manifest)
    write_h5_stacked(h5, feats)
    runner = CliRunner()
    r = runner.invoke(app, import_args(cache, h5, prepared, "--as", "video", "--name", "i3d",
                                       "--description", "I3D rgb, Kinetics-400, 16-frame stacks"))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("video/i3d: 48/48 rows, tokens (4, 32) per row, from ")
    group = TokenCache(cache).group("video/i3d")
    prov = group.provenance
    assert prov["kind"] == "imported" and prov["description"] == "I3D rgb, Kinetics-400, 16-frame stacks"
    assert prov["source"]["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()
    assert prov["source"]["format"] == "hdf5" and prov["default_pooling"] == "raw"
    assert np.array_equal(group.read("0003_5")["tokens"], feats["0003_5"])

    r = runner.invoke(app, ["cache", "view", str(cache), "--defaults"])
    assert r.exit_code == 0 and "views/video" in r.output and "views/joint" in r.output, r.output
    view = TokenCache(cache).group("views/video")
    assert view.provenance["pooling"]["name"] == "raw" and view.arrays["tokens"].shape == (STEPS, D)

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"head": "cmtf", "epochs": 8, "batch_size": 16, "patience": 8, "threads": 1,
                                  "head_options": {"pose_inputs": ["joint"]}}))
    run = tmp_path / "run"
    r = runner.invoke(app, ["fuse", "train", "--cache", str(cache), "--data", str(prepared), "--task", "mg",
                            "--config", str(config), "--out", str(run)])
    assert r.exit_code == 0, r.output
    doc = json.loads((run / "config.json").read_text())
    assert doc["run"]["provenance"]["inputs"] == {"video": "views/video", "joint": "views/joint"}
    top1 = evaluate(run, "test")["top1"]
    print(f"imported HDF5 + joint, CMTF: top-1 {top1:.3f} on 8 test clips, chance 0.250 (4 classes)")
    assert top1 >= 0.75
    scores = tmp_path / "test.npz"
    r = runner.invoke(app, ["fuse", "predict", str(run), "--split", "test", "--out", str(scores)])
    assert r.exit_code == 0 and len(Scores.load(scores).ids) == 8, r.output
    out = tmp_path / "submission.zip"
    r = runner.invoke(app, ["export", "miga2025", str(scores), "--data", str(prepared), "--out", str(out)])
    assert r.exit_code == 0 and "8 rows of split test" in r.output, r.output
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}  {out}" in r.output


# ----- formats ---------------------------------------------------------------------------------------
def _write_every_format(tmp_path, feats: dict[str, np.ndarray]) -> dict[str, tuple]:
    ids = list(feats)
    folder = tmp_path / "vf"
    folder.mkdir()
    for i, x in feats.items():  # video_features: <id>_<type>.npy with a <id>_fps.npy sidecar
        np.save(folder / f"{i}_rgb.npy", x)
        np.save(folder / f"{i}_fps.npy", np.array(25.0))
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, x in feats.items():
        np.save(plain / f"{i}.npy", x)
    np.savez(tmp_path / "per_id.npz", **feats)
    np.savez(tmp_path / "stacked.npz", feats=np.stack(list(feats.values())), ids=np.array(ids))
    write_h5_stacked(tmp_path / "stacked.h5", feats)
    with h5py.File(tmp_path / "per_id.hdf5", "w") as f:
        for i, x in feats.items():
            f[f"features/{i}"] = x
    with h5py.File(tmp_path / "groups.h5", "w") as f:
        for i, x in feats.items():
            f[f"{i}/rgb"] = x
    with open(tmp_path / "dict.pkl", "wb") as f:
        pickle.dump(feats, f)
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump(list(feats.values()), f)
    with open(tmp_path / "dicts.pkl", "wb") as f:  # rows as dicts, like a dump of per-sample results
        pickle.dump([{"pred_score": x, "gt_label": 0} for x in feats.values()], f)
    per_file = tmp_path / "pkls"
    per_file.mkdir()
    for i, x in feats.items():
        with open(per_file / f"{i}.pkl", "wb") as f:
            pickle.dump(x, f)
    return {"pkl list of dicts": (tmp_path / "dicts.pkl", ids), "pkl folder": (per_file, None),
            "npy folder typed": (folder, None), "npy folder": (plain, None),
            "npz per id": (tmp_path / "per_id.npz", None),
            "npz stacked": (tmp_path / "stacked.npz", None), "h5 stacked": (tmp_path / "stacked.h5", None),
            "h5 per id": (tmp_path / "per_id.hdf5", None), "h5 groups": (tmp_path / "groups.h5", None),
            "pkl dict": (tmp_path / "dict.pkl", None), "pkl list": (tmp_path / "list.pkl", ids)}


def test_every_format_reads_the_same_rows_and_imports_them_exactly(world, tmp_path):
    _, _, manifest = world
    feats = clip_features(manifest)
    for kind, (path, ids) in _write_every_format(tmp_path, feats).items():
        source = read_feature_file(path, ids=ids)
        got = dict(source.rows)
        assert sorted(got) == sorted(feats), kind
        assert all(np.array_equal(got[i], feats[i]) for i in feats), kind
        assert len(source.sha256) == 64, kind
    folder = read_feature_file(tmp_path / "vf")
    assert folder.feature_type == "rgb" and folder.fps == 25.0 and folder.files == 48
    per_clip = plan_import(folder, manifest, "video", "vf")  # the stated rate only matters for cutting
    assert per_clip.spec.provenance["cut"] is None and per_clip.spec.provenance["rows"] == "per clip"
    assert per_clip.spec.provenance["source"]["feature_type"] == "rgb"
    cache = TokenCache(tmp_path / "c.zarr")
    plan = plan_import(read_feature_file(tmp_path / "list.pkl", ids=list(feats)), manifest, "video", "pkl")
    group = write_import(cache, plan)
    assert group.name == "video/pkl" and group.row_dim == "clip"
    assert np.array_equal(group.read_many(list(feats))["tokens"], np.stack(list(feats.values())))
    assert group.rowdefs(["0002_1"]) == ["video=0002 frames=50-89"]


def test_pose_and_context_imports_keep_the_tokens_as_given(world, tmp_path):
    _, _, manifest = world
    feats = clip_features(manifest)
    cache = TokenCache(tmp_path / "c.zarr")
    np.savez(tmp_path / "f.npz", **feats)
    pose = write_import(cache, plan_import(read_feature_file(tmp_path / "f.npz"), manifest, "joint", "posec3d"))
    assert pose.arrays["features"].shape == (D, STEPS, 1)  # (channel, time, one joint)
    assert np.array_equal(pose.read("0001_0")["features"][:, :, 0], feats["0001_0"].T)
    rng = np.random.default_rng(1)
    per_video = {v: rng.standard_normal((10, D)).astype(np.float32) for v in manifest.videos}
    np.savez(tmp_path / "v.npz", **per_video)
    ctx = write_import(cache, plan_import(read_feature_file(tmp_path / "v.npz"), manifest, "context", "vjepa"))
    assert ctx.row_dim == "video" and ctx.arrays["tokens"].shape == (1, 10, D)
    assert np.array_equal(ctx.read("0004")["tokens"][0], per_video["0004"]) and ctx.read("0004")["valid"].all()
    made = default_views(cache)
    views = TokenCache(cache.path)
    assert made == {"context": "views/context", "joint": "views/joint"}
    assert np.allclose(views.group("views/joint").read("0001_0")["tokens"], feats["0001_0"], atol=1e-2)
    assert views.group("views/context").read("0004")["tokens"].shape == (1, 10, D)


def test_rows_of_different_lengths_are_averaged_to_time_steps(world, tmp_path):
    _, _, manifest = world
    feats = {c.clip_id: np.arange(2 + k % 3, dtype=np.float32)[:, None].repeat(D, 1)
             for k, c in enumerate(manifest.clips)}
    np.savez(tmp_path / "f.npz", **feats)
    plan = plan_import(read_feature_file(tmp_path / "f.npz"), manifest, "video", "v", time_steps=2)
    assert plan.shape == (2, D) and plan.spec.provenance["time_steps"] == 2
    assert np.array_equal(plan.rows["0001_2"]["tokens"][:, 0], [0.5, 2.5])  # 4 steps 0..3 -> means of halves
    assert plan_import(read_feature_file(tmp_path / "f.npz"), manifest, "video", "v").shape == (8, D)


def test_default_views_keep_the_extracted_group_and_the_import_gets_its_own_view(tmp_path):
    prepared, cache = write_synthetic(tmp_path, n_videos=2, clips_per_video=2, num_classes=2, tracks=("video",))
    manifest = Manifest.load(prepared)
    feats = {c.clip_id: np.full((3, D), k, np.float32) for k, c in enumerate(manifest.clips)}
    np.savez(tmp_path / "f.npz", **feats)
    write_import(cache, plan_import(read_feature_file(tmp_path / "f.npz"), manifest, "video", "aaa"))
    assert default_views(cache) == {"video": "views/video"}
    over = import_args(cache, tmp_path / "f.npz", prepared, "--as", "video", "--name", "mvit_v2_s", "--overwrite")
    one_line_error(CliRunner().invoke(app, over), "holds 'video/mvit_v2_s' extracted by migfuse, not imported")
    tc = TokenCache(cache)
    assert tc.group("views/video").provenance["source"] == "video/mvit_v2_s"  # not video/aaa, sorted first
    r = CliRunner().invoke(app, ["cache", "view", str(cache), "--name", "aaa", "--group", "video/aaa"])
    assert r.exit_code == 0 and "views/aaa: 4/4 rows, tokens (3, 32)" in r.output, r.output
    assert np.array_equal(tc.group("views/aaa").read("0002_1")["tokens"], feats["0002_1"])


# ----- per-video features cut into clips -------------------------------------------------------------
def test_per_video_features_are_cut_by_the_manifest_frame_ranges(world, tmp_path):
    _, _, manifest = world
    rng = np.random.default_rng(2)
    per_video = {v: rng.standard_normal((40, D)).astype(np.float32) for v in manifest.videos}  # one per 10 frames
    write_h5_stacked(tmp_path / "v.h5", per_video)
    source = read_feature_file(tmp_path / "v.h5")
    by_stride = plan_import(source, manifest, "video", "cut", stride=10)
    by_fps = plan_import(source, manifest, "video", "cut", fps=2.5)  # 25 fps video, 2.5 features per second
    for plan in (by_stride, by_fps):
        # clip 0002_3 spans frames 150-189: features 15..18
        assert np.array_equal(plan.rows["0002_3"]["tokens"], per_video["0002"][15:19])
    assert by_stride.spec.provenance["cut"] == {"stride": 10.0}
    write_h5_stacked(tmp_path / "stated.h5", per_video, stride=10)
    stated = plan_import(read_feature_file(tmp_path / "stated.h5"), manifest, "video", "cut")
    assert stated.spec.provenance["cut"] == {"stride": 10.0, "stated_by": "file"}
    assert np.array_equal(stated.rows["0002_3"]["tokens"], per_video["0002"][15:19])
    with pytest.raises(UserError, match=r"holds one row per video \(e\.g\. 0001\) but track video has one per "
                                        r"clip, and the file does not say how its time axis maps to frames: give "
                                        r"--stride FRAMES"):
        plan_import(source, manifest, "video", "cut")
    with pytest.raises(UserError, match="24 clips lie past the end of their video's features, e.g. 0001_4 "
                                        r"\(frames 200-239; features end at frame 200\)"):
        plan_import(source, manifest, "video", "cut", stride=5)


def test_video_features_timestamps_cut_clips(world, tmp_path):
    _, _, manifest = world
    folder = tmp_path / "vf"
    folder.mkdir()
    for v in manifest.videos:
        np.save(folder / f"{v}_clip.npy", np.arange(40 * D, dtype=np.float32).reshape(40, D))
        np.save(folder / f"{v}_timestamps_ms.npy", np.arange(40) * 400.0)  # every 10 frames at 25 fps
    plan = plan_import(read_feature_file(folder), manifest, "video", "ts")
    assert plan.spec.provenance["cut"] == {"timestamps_ms": True, "stated_by": "file"}
    assert np.array_equal(plan.rows["0002_3"]["tokens"][:, 0], np.arange(15, 19) * D)


# ----- refusals: one line, nothing written -----------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_inputs(tmp_path, manifest) -> list[tuple[list[str], tuple[str, ...]]]:
    feats = clip_features(manifest)
    ids = list(feats)
    cases = []
    np.savez(tmp_path / "obj.npz", **{ids[0]: np.array([np.zeros(3), "x"], dtype=object)})
    cases.append((["obj.npz", "--as", "video"], (f"obj.npz: entry '{ids[0]}' is an object array", "numeric")))
    with open(tmp_path / "code.pkl", "wb") as f:
        pickle.dump({ids[0]: _RunsCode(tmp_path / "ran")}, f)
    cases.append((["code.pkl", "--as", "video"], ("code.pkl holds io.open, which is not plain data",
                                                 "save the features as a list or dict of numpy arrays")))
    with open(tmp_path / "dup.pkl", "wb") as f:
        pickle.dump(list(feats.values())[:3], f)
    (tmp_path / "dup.txt").write_text(f"{ids[0]} 1\n{ids[1]} 2\n{ids[0]} 1\n")
    cases.append((["dup.pkl", "--as", "video", "--ids", str(tmp_path / "dup.txt")],
                  (f"dup.pkl holds 1 ids more than once ({ids[0]}); keep one row per id",)))
    np.savez(tmp_path / "extra.npz", **feats, **{"9999_0": feats[ids[0]], "9999_1": feats[ids[0]]})
    cases.append((["extra.npz", "--as", "video"], ("extra.npz holds 2 ids that", "does not have (9999_0, 9999_1)")))
    np.savez(tmp_path / "missing.npz", **{i: feats[i] for i in ids[:40]})
    cases.append((["missing.npz", "--as", "video"], ("missing.npz lacks 8 of the 48 clip ids",
                                                    "(0006_0, 0006_1, 0006_2, 0006_3, 0006_4 and 3 more)",
                                                    "--allow-missing")))
    np.savez(tmp_path / "width.npz", **{**feats, ids[5]: np.zeros((STEPS, D + 1), np.float32)})
    cases.append((["width.npz", "--as", "video"], ("width.npz: rows differ in shape", f"{ids[5]}: (4, 33)")))
    np.savez(tmp_path / "nan.npz", **{**feats, ids[2]: np.full((STEPS, D), np.nan, np.float32)})
    cases.append((["nan.npz", "--as", "video"], (f"nan.npz: row {ids[2]} holds NaN or inf",)))
    np.savez(tmp_path / "ok.npz", **feats)
    cases.append((["ok.npz", "--as", "face"], ("--as face: an import cannot fill the face track",)))
    cases.append((["ok.npz", "--as", "context"], ("holds one row per clip, but track context has one row per video",)))
    cases.append((["ok.npz", "--as", "video", "--stride", "10"], ("--stride / --fps cut per-video features",)))
    with h5py.File(tmp_path / "strings.h5", "w") as f:
        f[ids[0]] = np.array([b"a", b"b"])
        f[ids[1]] = np.zeros((2, 3), np.float32)
    cases.append((["strings.h5", "--as", "video"], (f"strings.h5: entry '{ids[0]}' is a string array; features "
                                                     "must be numbers",)))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    cases.append((["broken.h5", "--as", "video"], ("cannot read", "broken.h5", "is it a complete HDF5 file?")))
    return cases


def test_every_bad_input_is_one_line_and_writes_nothing(world, tmp_path):
    prepared, _, manifest = world
    cache = tmp_path / "cache.zarr"
    runner = CliRunner()
    for args, parts in _bad_inputs(tmp_path, manifest):
        r = runner.invoke(app, import_args(cache, tmp_path / args[0], prepared, *args[1:], "--name", "x"))
        one_line_error(r, *parts)
        assert not cache.exists() or TokenCache(cache).group_names() == [], args
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran
    _, base_cache, _ = world
    r = runner.invoke(app, import_args(tmp_path / "ok.npz", base_cache, prepared, "--as", "video", "--name", "x"))
    one_line_error(r, f"{base_cache} is a token cache, not a feature file: did you swap CACHE and SOURCE?")
    assert TokenCache(base_cache).group_names() == ["joint/agcn"]


def test_allow_missing_leaves_rows_unwritten_and_a_rerun_keeps_or_replaces_the_group(world, tmp_path):
    prepared, _, manifest = world
    feats = clip_features(manifest)
    np.savez(tmp_path / "part.npz", **{i: x for i, x in list(feats.items())[:40]})
    cache = tmp_path / "cache.zarr"
    runner = CliRunner()
    args = import_args(cache, tmp_path / "part.npz", prepared, "--as", "video", "--name", "i3d", "--allow-missing")
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "video/i3d: 40/48 rows, 8 missing" in r.output, r.output
    assert runner.invoke(app, args).exit_code == 0  # the same import again: the same group
    np.savez(tmp_path / "all.npz", **feats)
    other = import_args(cache, tmp_path / "all.npz", prepared, "--as", "video", "--name", "i3d")
    one_line_error(runner.invoke(app, other), "holds 'video/i3d' from another import", "--overwrite")
    assert len(TokenCache(cache).group("video/i3d").done_ids()) == 40
    r = runner.invoke(app, other + ["--overwrite"])
    assert r.exit_code == 0 and "video/i3d: 48/48 rows" in r.output, r.output


def test_a_list_pickle_needs_the_annotation_ids(world, tmp_path):
    prepared, _, manifest = world
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([np.zeros(D, np.float32)] * 3, f)
    r = CliRunner().invoke(app, import_args(tmp_path / "c.zarr", tmp_path / "list.pkl", prepared, "--as", "video",
                                            "--name", "x"))
    one_line_error(r, "list.pkl holds a list of 3 feature arrays without ids: give the annotation file")


def test_a_pickle_of_torch_tensors_imports_and_without_torch_is_one_line(world, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    _, _, manifest = world
    feats = clip_features(manifest)
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump({i: torch.from_numpy(x) for i, x in feats.items()}, f)
    got = dict(read_feature_file(tmp_path / "t.pkl").rows)
    assert np.array_equal(got["0005_4"], feats["0005_4"])
    monkeypatch.setitem(sys.modules, "torch", None)  # a laptop install without torch
    with pytest.raises(UserError, match=r"t\.pkl holds torch tensors \(torch\._utils\._rebuild_tensor_v2\); reading "
                                        r"them needs torch"):
        read_feature_file(tmp_path / "t.pkl")


def test_hdf5_without_h5py_names_the_extra(world, tmp_path, monkeypatch):
    _, _, manifest = world
    write_h5_stacked(tmp_path / "f.h5", clip_features(manifest))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(UserError, match=r"f\.h5 needs h5py, which is not installed here: install the import-hdf5 "
                                        r"extra: bash scripts/install.sh fuse,import-hdf5"):
        read_feature_file(tmp_path / "f.h5")
