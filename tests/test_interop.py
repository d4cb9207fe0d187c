"""Interoperate with mmaction2 / pyskl (issue #12 section 3): `data export-pyskl` and `scores import`.

The files are built here in the tools' real formats: pyskl's 2D annotation pickle, mmaction2 0.x /
pyskl `--out` pickles (a list of numpy arrays), mmaction2 1.x `--dump` pickles (a list of dicts with
`pred_score` tensors, as mmengine's DumpResults writes them with plain pickle), mmaction2 list files.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.datasets.classes import CLASS_NAMES
from migfuse.datasets.manifest import Clip, Manifest, write_skeleton
from migfuse.datasets.pyskl import export_pyskl
from migfuse.datasets.skeleton_layouts import get_layout
from migfuse.errors import UserError
from migfuse.fuse.export import export_scores
from migfuse.fuse.importers import import_scores
from migfuse.fuse.late_fusion import fuse_late
from migfuse.fuse.scores import Scores


def prepared_with_skeletons(root: Path) -> Manifest:
    """Clips of three videos: 0054 (test), 0001 (validation), 0298 (train, skeleton shorter than its last clip)
    and 0218 (no skeleton at all)."""
    spec = [("0054", 0, 0, 9, 5, 1), ("0054", 1, 10, 19, 99, 1), ("0001", 0, 0, 14, 2, 2),
            ("0298", 0, 0, 7, 8, 22), ("0298", 1, 30, 39, 9, 22), ("0218", 0, 0, 9, 4, 2)]
    clips = [Clip.make(v, k, a, b, raw_class=c, subject=s, win_lose="Win") for v, k, a, b, c, s in spec]
    m = Manifest(clips=clips)
    rng = np.random.default_rng(0)
    for vid, frames in (("0054", 20), ("0001", 15), ("0298", 12)):
        points = rng.uniform(0, 700, (frames, 137, 3)).astype(np.float32)
        points[..., 2] = rng.uniform(0, 1, (frames, 137))
        points[3] = 0  # a frame without a person
        m.videos[vid].skeleton = write_skeleton(root, vid, points)
    m.save(root)
    return Manifest.load(root)


# ---------------------------------------------------------------------------------------------
# data export-pyskl
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["coco-17", "imigue"])
def test_export_pyskl_round_trips_frames_and_labels_through_plain_pickle(tmp_path, layout):
    m = prepared_with_skeletons(tmp_path / "prep")
    result = export_pyskl(tmp_path / "prep", tmp_path / "out.pkl", layout=layout)
    with open(tmp_path / "out.pkl", "rb") as f:
        data = pickle.load(f)  # plain pickle, no migfuse: what pyskl's mmcv.load does
    assert sorted(data) == ["annotations", "split"]
    assert data["split"] == {"test": ["0054_0", "0054_1"], "validation": ["0001_0"], "train": ["0298_0"]}
    assert [a["frame_dir"] for a in data["annotations"]] == ["0054_0", "0054_1", "0001_0", "0298_0"]
    assert result.skipped.keys() == {"0298_1", "0218_0"} and result.clips == 4
    source = list(get_layout(layout).source)
    for a in data["annotations"]:
        clip = m.clip(a["frame_dir"])
        skeleton, _ = m.skeleton(clip.video_id)
        expected = np.asarray(skeleton[clip.start_frame:clip.end_frame + 1])[:, source]
        t, v = expected.shape[:2]
        assert a["label"] == clip.label and isinstance(a["label"], int)
        assert a["total_frames"] == t and a["img_shape"] == a["original_shape"] == (720, 1280)
        assert a["keypoint"].dtype == np.float32 and a["keypoint"].shape == (1, t, v, 2)
        assert a["keypoint_score"].dtype == np.float32 and a["keypoint_score"].shape == (1, t, v)
        np.testing.assert_array_equal(a["keypoint"][0], expected[..., :2])
        np.testing.assert_array_equal(a["keypoint_score"][0], expected[..., 2])
    assert data["annotations"][1]["label"] == 31  # raw 99 "illustrative"


def test_export_pyskl_cli_names_layout_splits_and_left_out_clips(tmp_path):
    prepared_with_skeletons(tmp_path / "prep")
    res = CliRunner().invoke(app, ["data", "export-pyskl", str(tmp_path / "prep"), str(tmp_path / "o.pkl"),
                                   "--layout", "openpose22", "--scheme", "split_cs", "--img-shape", "1080x1920"])
    assert res.exit_code == 0, res.output
    assert "4 clips, layout openpose22 (22 joints); splits: test 2, train 2" in res.stdout
    assert "left out 2 clips without skeleton frames" in res.stdout
    with open(tmp_path / "o.pkl", "rb") as f:
        assert pickle.load(f)["annotations"][0]["img_shape"] == (1080, 1920)
    res = CliRunner().invoke(app, ["data", "export-pyskl", str(tmp_path / "prep"), str(tmp_path / "n.pkl"),
                                   "--layout", "ntu-25"])
    # the choice lists only the layouts read from OpenPose points, so --help and the refusal agree
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "'ntu-25' is not one of 'coco-17', 'openpose-18', 'openpose22', 'imigue'" in res.stderr


# ---------------------------------------------------------------------------------------------
# scores import
# ---------------------------------------------------------------------------------------------
TEST_IDS = ["0054_0", "0054_1"]


def _probs(labels: list[int], n: int = 32) -> np.ndarray:
    p = np.full((len(labels), n), 0.2 / (n - 1), dtype=np.float32)
    p[np.arange(len(labels)), labels] = 0.8
    return p


def _pyskl_annotation(path: Path) -> Path:
    """A pyskl annotation whose test split is not in annotation order (the test keeps annotation order)."""
    anns = [{"frame_dir": i, "label": 0, "total_frames": 1} for i in ["0001_0", "0054_0", "0298_0", "0054_1"]]
    with open(path, "wb") as f:
        pickle.dump({"split": {"train": ["0298_0", "0001_0"], "test": ["0054_1", "0054_0"]}, "annotations": anns}, f)
    return path


def test_pyskl_and_mmaction2_0x_result_lists_import_in_annotation_order(tmp_path):
    ann = _pyskl_annotation(tmp_path / "ann.pkl")
    results = tmp_path / "result.pkl"
    with open(results, "wb") as f:
        pickle.dump(list(_probs([4, 31])), f)  # pyskl `--out`: one (C,) array per sample
    r = import_scores(results, ann, ann_split="test")
    assert r.scores.ids == TEST_IDS and r.scores.split == "test" and r.scores.classes == CLASS_NAMES
    assert r.scores.predictions().tolist() == [4, 31] and not r.softmax_applied
    assert r.source_format == "mmaction2 0.x / pyskl"


def test_mmaction2_1x_dump_with_tensors_and_a_list_file(tmp_path):
    ann = tmp_path / "test_list.txt"
    ann.write_text("videos/0054/0054_0.mp4 4\nvideos/0054/0054_1.mp4 31\n")
    dump = [{"pred_score": torch.from_numpy(p), "pred_label": torch.tensor([k]), "gt_label": torch.tensor([k]),
             "img_shape": (224, 224), "num_classes": 32} for p, k in zip(_probs([4, 31]), [4, 31])]
    results = tmp_path / "dump.pkl"
    with open(results, "wb") as f:
        pickle.dump(dump, f, protocol=2)  # mmengine's pickle handler; protocol 2 stores bytes via _codecs
    r = import_scores(results, ann)
    assert r.source_format == "mmaction2 1.x"
    assert r.scores.ids == TEST_IDS
    np.testing.assert_allclose(r.scores.scores, _probs([4, 31]))


def test_logits_are_turned_into_probabilities_and_said_so(tmp_path):
    ann = tmp_path / "list.txt"
    ann.write_text("0054_0 10 4\n0054_1 10 31\n")  # rawframe list: frame_dir total_frames label
    logits = np.zeros((2, 32), np.float32)
    logits[0, 4], logits[1, 31] = 5.0, -1.0 + 7.0
    logits[1, 0] = -3.0
    with open(tmp_path / "r.pkl", "wb") as f:
        pickle.dump(list(logits), f)
    r = import_scores(tmp_path / "r.pkl", ann)
    assert r.softmax_applied and np.allclose(r.scores.scores.sum(1), 1.0)
    assert r.scores.predictions().tolist() == [4, 31]


def test_a_count_or_id_mismatch_is_refused_with_the_counts(tmp_path):
    ann = _pyskl_annotation(tmp_path / "ann.pkl")
    with open(tmp_path / "three.pkl", "wb") as f:
        pickle.dump(list(_probs([4, 31, 2])), f)
    with pytest.raises(UserError) as e:
        import_scores(tmp_path / "three.pkl", ann, ann_split="test")
    assert "has 3 score rows but" in str(e.value) and "lists 2 samples" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="has splits train, test: pass --ann-split"):
        import_scores(tmp_path / "three.pkl", ann)
    dump = [{"pred_score": torch.from_numpy(p), "frame_dir": i} for p, i in zip(_probs([4, 31]), TEST_IDS[::-1])]
    with open(tmp_path / "named.pkl", "wb") as f:
        pickle.dump(dump, f)
    with pytest.raises(UserError, match=r"2 of 2 rows differ \(row 0: 0054_1 vs 0054_0\)"):
        import_scores(tmp_path / "named.pkl", ann, ann_split="test")


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([np.zeros(32), Evil()], f)
    ann = tmp_path / "l.txt"
    ann.write_text("0054_0 1\n0054_1 1\n")
    res = CliRunner().invoke(app, ["fuse", "import", str(tmp_path / "evil.pkl"), "--ann", str(ann),
                                   "--out", str(tmp_path / "s.npz")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "builtins.exec" in res.stderr and str(tmp_path / "evil.pkl") in res.stderr
    assert not marker.exists() and not (tmp_path / "s.npz").exists()


def test_a_csv_with_class_name_columns_in_any_order_imports_by_name(tmp_path):
    order = list(reversed(CLASS_NAMES))
    rows = [["0054_1"] + [f"{v:.4f}" for v in _probs([31])[0][::-1]],
            ["0054_0"] + [f"{v:.4f}" for v in _probs([4])[0][::-1]]]
    text = "Id," + ",".join(order) + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
    (tmp_path / "s.csv").write_text(text)
    r = import_scores(tmp_path / "s.csv")
    assert r.scores.classes == CLASS_NAMES and r.scores.ids == ["0054_1", "0054_0"]
    assert r.scores.predictions().tolist() == [31, 4]
    plain = "Id," + ",".join(f"score_{k}" for k in range(32)) + "\n0054_0," + ",".join(["0.03125"] * 32) + "\n"
    (tmp_path / "p.csv").write_text(plain)
    assert import_scores(tmp_path / "p.csv").scores.scores.shape == (1, 32)


def test_imported_scores_fuse_late_with_migfuse_scores_and_export(tmp_path):
    """The point of the import: ensemble a PoseC3D run with a migfuse head, then submit."""
    from test_export import TEST_IDS as ALL_TEST_IDS, mg_scores, read_zip, small_manifest

    m = small_manifest(tmp_path / "prep")
    ann = tmp_path / "test.txt"
    ann.write_text("".join(f"{i}.mp4 0\n" for i in ALL_TEST_IDS[::-1]))
    truth = [m.clip(i).label for i in ALL_TEST_IDS[::-1]]
    with open(tmp_path / "posec3d.pkl", "wb") as f:
        pickle.dump(list(_probs(truth)), f)
    res = CliRunner().invoke(app, ["fuse", "import", str(tmp_path / "posec3d.pkl"), "--ann", str(ann),
                                   "--out", str(tmp_path / "posec3d.npz"), "--split-name", "test"])
    assert res.exit_code == 0, res.output
    assert Scores.load(tmp_path / "posec3d.npz").split == "test"
    # the command's old name and option still work, with a deprecation line each
    old = CliRunner().invoke(app, ["scores", "import", str(tmp_path / "posec3d.pkl"), "--ann", str(ann),
                                   "--out", str(tmp_path / "old.npz"), "--split", "test"])
    assert old.exit_code == 0, old.output
    assert old.stderr.count("is deprecated: use") == 2 and "`migfuse fuse import`" in old.stderr
    assert Scores.load(tmp_path / "old.npz").split == "test"
    assert "imported 6 mg score rows (mmaction2 0.x / pyskl, 32 classes)" in res.stdout
    ours = mg_scores(m, ALL_TEST_IDS, wrong={"0009_0": 3})
    fused = fuse_late([Scores.load(tmp_path / "posec3d.npz"), ours], weights=[2, 1]).scores
    text = read_zip(export_scores(fused, m, out=tmp_path / "p.zip").path)[1]
    assert "0009_0,11" in text.splitlines()  # the imported run outvotes the head's mistake


def test_a_damaged_pickle_ends_in_one_line(tmp_path):
    ann = _pyskl_annotation(tmp_path / "ann.pkl")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(ann.read_bytes()[:50])
    with open(tmp_path / "r.pkl", "wb") as f:
        pickle.dump(list(_probs([4, 31])), f)
    with pytest.raises(UserError, match=r"cannot read annotation pickle .*cut.pkl \(pickle data was truncated\)"):
        import_scores(tmp_path / "r.pkl", cut, ann_split="test")


def test_the_pyskl_exporter_imports_without_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; import migfuse.datasets.pyskl; "
            "assert 'torch' not in sys.modules and not any(m.startswith('migfuse.extract') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scores_import_refuses_a_csv_without_score_columns_and_a_missing_or_garbage_pickle(tmp_path):
    from migfuse.fuse.importers import import_scores

    one = tmp_path / "one.csv"
    one.write_text("x\n0054_0\n")
    with pytest.raises(UserError, match="holds no score rows"):
        import_scores(one, task="mg")
    with pytest.raises(UserError, match="test-result file not found"):
        import_scores(tmp_path / "nofile.pkl", task="mg")
    garbage = tmp_path / "bad.pkl"
    garbage.write_bytes(b"x\n")
    with pytest.raises(UserError, match="cannot read test-result pickle"):
        import_scores(garbage, task="mg")
