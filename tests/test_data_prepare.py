"""`prepare` on the real iMiGUE sample (labels CSV, raw txt, video 298's OpenPose JSON) and on the
same video converted to the MiGA 2025 / 2023 layouts."""
from __future__ import annotations

import csv
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from migfuse.datasets.layouts.skeletons import LIGHT_HAND_POINTS, write_light_hand_csv, write_openpose_xlsx
from migfuse.datasets.manifest import Manifest
from migfuse.datasets.openpose import body_centre
from migfuse.datasets.prepare import prepare
from migfuse.errors import UserError
from safe_extract import extract_tar

N_FRAMES_298 = 21068
CUT = 2010  # converted skeletons keep frames 0..2009: clips 0-4 of video 298 fit, 51 reach past it


@pytest.fixture(scope="session")
def oulu_root(tmp_path_factory, imigue_dir) -> Path:
    """The sample in the Oulu layout; the 21k JSON files are unpacked once per session."""
    root = tmp_path_factory.mktemp("oulu")
    (root / "Label").mkdir()
    (root / "Label" / "labels_20200831.csv").symlink_to(imigue_dir / "labels_20200831.csv")
    (root / "Label" / "raw").symlink_to(imigue_dir / "label_raw", target_is_directory=True)
    skeleton_dir = root / "Data" / "skeleton" / "raw"
    skeleton_dir.mkdir(parents=True)
    with tarfile.open(imigue_dir / "openpose_298.tar.gz") as tar:
        extract_tar(tar, skeleton_dir)  # not extractall(filter=): that keyword needs Python 3.11.4
    return root


@pytest.fixture(scope="session")
def prepared(oulu_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    result = prepare(oulu_root, out, progress=True)
    return Manifest.load(out), result.report


def _json_frame(oulu_root: Path, frame: int) -> np.ndarray:
    """(P, 137, 3) straight from one JSON file, independent of the reader."""
    path = oulu_root / "Data" / "skeleton" / "raw" / "298" / f"298_{frame:012d}_keypoints.json"
    people = json.loads(path.read_text())["people"]
    keys = ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")
    return np.array([sum((p[k] for k in keys), []) for p in people], np.float32).reshape(len(people), 137, 3)


def test_clip_counts_and_splits(prepared):
    m, report = prepared
    assert len(m.clips) == 18498 and len(m.videos) == 359
    assert Counter(c.split_cs for c in m.clips) == {"train": 13935, "test": 4563}
    assert Counter(c.split_miga for c in m.clips) == {"train": 12893, "validation": 777, "test": 4562, "": 266}
    assert m.clip("0453_32").split_miga == "" and m.clip("0453_31").split_miga == "test"
    assert {c.video_id for c in m.clips if c.split_miga == "validation"} == {
        "0001", "0002", "0003", "0004", "0006", "0007", "0008", "0009", "0010", "0011"}
    assert len(m.ids("validation")) == 777
    train, test = m.video_ids("train"), m.video_ids("test")
    assert Counter(m.videos[v].win_lose for v in train) == {"Win": 51, "Lose": 51}
    assert Counter(m.videos[v].win_lose for v in test) == {"Win": 50, "Lose": 50}
    assert (m.videos["0085"].subject, m.videos["0086"].subject) == (16, 30)  # the CSV, not Link_V2.xlsx
    assert report["splits"]["split_miga"] == {"": 266, "test": 4562, "train": 12893, "validation": 777}
    kinds = {p["kind"]: p for p in report["problems"]}
    assert len(kinds["no_skeleton"]["video_ids"]) == 358 and "0298" not in kinds["no_skeleton"]["video_ids"]
    assert "raw_labels_differ" in kinds and "clip_outside_skeleton" not in kinds


def test_video_298_clips_and_skeleton_equal_the_json(prepared, oulu_root, imigue_dir):
    m, report = prepared
    with open(imigue_dir / "labels_20200831.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["video_id"] == "298"]
    clips = m.clips_of_video("298")
    assert len(clips) == 56
    assert [(c.clip_id, c.start_frame, c.end_frame, c.raw_class) for c in clips] == [
        (f"0298_{int(r['label_id']) - 1}", int(r["start_frame"]), int(r["end_frame"]), int(r["class"])) for r in rows]
    assert clips[0].clip_id == "0298_0" and (clips[0].start_frame, clips[0].end_frame) == (168, 257)
    points, mask = m.skeleton("0298")
    assert points.shape == (N_FRAMES_298, 137, 3) and m.videos["0298"].n_frames == N_FRAMES_298
    for frame in (0, 168, 257, 10000, N_FRAMES_298 - 176):
        np.testing.assert_array_equal(points[frame], _json_frame(oulu_root, frame)[0])
    assert points[0, 0].tolist() == pytest.approx([263.054, 272.756, 0.813957])
    info = report["skeletons"]["0298"]
    # the pose source, per video, in videos.csv and the report: OpenPose here, `data pose` writes "estimated: ..."
    assert m.videos["0298"].pose_source == "openpose" and report["pose_sources"]["0298"] == "openpose"
    assert m.videos["0298"].skeleton_layout == ""  # "" = openpose-137, as folders written before the column
    assert (info["empty_frames"], info["multi_person_frames"], info["frames_with_person"]) == (175, 10, 20893)
    assert not mask[20893:].any() and not points[20893:].any()  # the last 175 frames have nobody
    for frame in (15093, 18503, 19415):  # two people: the one nearest the previous pick is kept
        people = _json_frame(oulu_root, frame)
        assert len(people) == 2
        kept = [i for i in range(2) if np.array_equal(points[frame], people[i])]
        assert len(kept) == 1
        before = body_centre(points[frame - 1])
        jumps = [np.linalg.norm(body_centre(p) - before) for p in people]
        assert jumps[kept[0]] == min(jumps)


def _write_challenge_layout(root: Path, layout: str, m: Manifest) -> None:
    """Video 298 (first CUT frames) in a MiGA layout, plus a test video without skeleton and an
    empty skeleton file for video 347."""
    points = np.asarray(m.skeleton("0298")[0][:CUT])
    phase1 = root / "imigue_data_phase1" / "datasets"
    train = phase1 / "imigue_skeleton_train" / "0298"
    train.mkdir(parents=True)
    with open(train / "0298_label.csv", "w", newline="") as f:
        csv.writer(f).writerows([c.raw_class, c.start_frame, c.end_frame] for c in m.clips_of_video(298))
    if layout == "miga2025":
        write_openpose_xlsx(train / "0298_openpose.xlsx", points)
        (train / "0298.mp4").write_bytes(b"")
    else:
        write_light_hand_csv(train / "0298_light_hand.csv", points)
    empty = phase1 / "imigue_skeleton_train" / "0347"
    empty.mkdir()
    (empty / "0347_label.csv").write_text("20,5,9\n")
    (empty / ("0347_openpose.xlsx" if layout == "miga2025" else "0347_light_hand.csv")).write_bytes(b"")
    test = root / "imigue_data_phase2" / "imigue_skeleton_test" / "0054"
    test.mkdir(parents=True)
    (test / "0054_label.csv").write_text("1,10,40\n1,50,90\n")


@pytest.mark.parametrize("layout", ["miga2025", "miga2023"])
def test_challenge_layouts_read_back_video_298(prepared, tmp_path, layout):
    m, _ = prepared
    root = tmp_path / "data"
    _write_challenge_layout(root, layout, m)
    result = prepare(root, tmp_path / "out", progress=False, workers=2 if layout == "miga2023" else 1)
    got = Manifest.load(tmp_path / "out")
    assert result.report["layout"] == layout
    assert [(c.clip_id, c.start_frame, c.end_frame, c.label) for c in got.clips_of_video(298)] == [
        (c.clip_id, c.start_frame, c.end_frame, c.label) for c in m.clips_of_video(298)]
    c = got.clip("0298_0")
    assert (c.subject, c.win_lose, c.split_cs, c.split_miga) == (22, "Win", "train", "train")
    want = np.asarray(m.skeleton(298)[0][:CUT])
    points, mask = got.skeleton(298)
    kept = slice(None) if layout == "miga2025" else list(LIGHT_HAND_POINTS)
    np.testing.assert_array_equal(points[:, kept], want[:, kept])
    if layout == "miga2023":
        dropped = np.setdiff1d(np.arange(137), LIGHT_HAND_POINTS)
        assert not points[:, dropped].any()
    np.testing.assert_array_equal(mask, (points[:, :, 2] > 0).any(axis=1))
    assert (got.videos["0298"].video_path is not None) == (layout == "miga2025")
    test_clip = got.clip("0054_1")
    assert (test_clip.label, test_clip.raw_class, test_clip.split_miga,
            test_clip.split_cs) == (None, None, "test", "test")
    problems = {p["kind"]: p for p in result.report["problems"]}
    assert problems["clip_outside_skeleton"]["clip_ids"] == [f"0298_{k}" for k in range(5, 56)]
    assert problems["unreadable_skeleton"]["video_id"] == "0347"
    assert problems["no_skeleton"]["video_ids"] == ["0054"]
    assert got.videos["0347"].skeleton == ""


def test_rerun_reuses_unchanged_skeletons(prepared, oulu_root, monkeypatch):
    m, _ = prepared
    from migfuse.datasets.layouts.skeletons import OpenPoseFolder

    def must_not_read(self, progress=True):
        raise AssertionError("unchanged skeleton read again")

    monkeypatch.setattr(OpenPoseFolder, "read", must_not_read)
    result = prepare(oulu_root, m.root, progress=False)
    assert result.report["skeletons"]["0298"]["frames_with_person"] == 20893
    assert Manifest.load(m.root).videos["0298"].skeleton == "skeletons/0298.npy"
    with pytest.raises(AssertionError, match="read again"):
        prepare(oulu_root, m.root, progress=False, reuse=False)


def test_oulu_layout_with_spreadsheet_skeletons(prepared, tmp_path, imigue_dir):
    m, _ = prepared
    root = tmp_path / "oulu_xlsx"
    (root / "Label").mkdir(parents=True)
    shutil.copy(imigue_dir / "labels_20200831.csv", root / "Label")
    points = np.asarray(m.skeleton(298)[0][:300])
    write_openpose_xlsx(root / "mg_skeleton_only" / "0298" / "0298_2.xlsx", points)
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    np.testing.assert_array_equal(Manifest.load(tmp_path / "out").skeleton(298)[0], points)
    outside = next(p for p in result.report["problems"] if p["kind"] == "clip_outside_skeleton")
    assert len(outside["clip_ids"]) == 55 and "0298_0" not in outside["clip_ids"]


def test_frame_base_is_checked_against_the_labels_csv(prepared, tmp_path, imigue_dir):
    """A 1-based copy of 298's _label.csv next to the official CSV: the offset is reported, and
    --frame-base 1 reads it back to the CSV's frames. Subjects then come from the CSV."""
    m, _ = prepared
    folder = tmp_path / "data" / "imigue_skeleton_train" / "0298"
    folder.mkdir(parents=True)
    with open(folder / "0298_label.csv", "w", newline="") as f:
        csv.writer(f).writerows([c.raw_class, c.start_frame + 1, c.end_frame + 1] for c in m.clips_of_video(298))
    (tmp_path / "data" / "labels_20200831.csv").symlink_to(imigue_dir / "labels_20200831.csv")
    shifted = prepare(tmp_path / "data", tmp_path / "out0", layout="miga2025", progress=False)
    problem = next(p for p in shifted.report["problems"] if p["kind"] == "frames_differ_from_labels_csv")
    assert problem["offsets"] == {"1": 56}
    fixed = prepare(tmp_path / "data", tmp_path / "out1", layout="miga2025", frame_base=1, progress=False)
    assert not [p for p in fixed.report["problems"] if p["kind"] == "frames_differ_from_labels_csv"]
    assert [(c.start_frame, c.end_frame) for c in fixed.manifest.clips] == [
        (c.start_frame, c.end_frame) for c in m.clips_of_video(298)]
    assert fixed.manifest.clip("0298_3").subject == 22


def test_bad_root_errors(tmp_path):
    with pytest.raises(UserError, match=r"matches no dataset layout: looked for Label/labels_20200831.csv \(oulu\) "
                                        r"and <vid4>/<vid4>_label.csv"):
        prepare(tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="is not a folder"):
        prepare(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(UserError, match="unknown layout 'kaggle'"):
        prepare(tmp_path, tmp_path / "out", layout="kaggle")
    with pytest.raises(UserError, match="no labels_\\*.csv under .*Oulu layout needs"):
        prepare(tmp_path, tmp_path / "out", layout="oulu")
    bad = tmp_path / "bad" / "0001"
    bad.mkdir(parents=True)
    (bad / "0001_label.csv").write_text("class,start,end\n1,2,3\n")
    with pytest.raises(UserError, match="0001_label.csv starts with a non-numeric row"):
        prepare(tmp_path / "bad", tmp_path / "out")
    (bad / "0001_label.csv").write_text("1,2,3\n32,5,9\n")
    with pytest.raises(UserError, match="0001_label.csv row 2 has class 32, not an iMiGUE class"):
        prepare(tmp_path / "bad", tmp_path / "out")


def test_cli_prepare_reports_bad_root(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    result = CliRunner().invoke(app, ["data", "prepare", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error:" in result.output and "matches no dataset layout" in result.output
