"""OpenPose JSON as real OpenPose versions and models write it, read through `prepare` (issue #10 §1),
and label-CSV values that must be reported (issue #11 §4)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.datasets.manifest import Manifest
from migfuse.datasets.openpose import COCO18_TO_BODY25, read_openpose_folder, read_openpose_json
from migfuse.datasets.prepare import prepare
from shared_paths import REALWORLD, missing_reason

HEADER = ("video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,"
          "subject_gender,subject_nationality,win_or_lose\n")


def _body(n_joints: int, t: int) -> list[float]:
    return [v for j in range(n_joints) for v in (100.0 + 10 * j + t, 200.0 + 5 * j, 0.9)]


def _oulu_root(root: Path, frames: list, *, vid: int = 42, rows: str | None = None) -> Path:
    """An Oulu root: the label CSV and one OpenPose folder; ``frames[t]`` is a people list or raw text."""
    (root / "Label").mkdir(parents=True)
    (root / "Label" / "labels_20200831.csv").write_text(HEADER + (rows or f"{vid},1,0.0,0,0.08,2,5,3,F,X,Win\n"))
    folder = root / "pose" / f"{vid:04d}"
    folder.mkdir(parents=True)
    for t, people in enumerate(frames):
        text = people if isinstance(people, str) else json.dumps({"version": 1.1, "people": people})
        (folder / f"{vid:04d}_{t:012d}_keypoints.json").write_text(text)
    return root


def _old_person(t: int) -> dict:
    return {"pose_keypoints": _body(25, t), "face_keypoints": [], "hand_left_keypoints": [],
            "hand_right_keypoints": []}


def test_pre_1_2_key_names_are_read_like_the_2d_names(tmp_path):
    """The shared case openpose-old-keys: 3 frames of BODY_25 under the pre-1.2 names."""
    root = _oulu_root(tmp_path / "root", [[_old_person(t)] for t in range(3)])
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    points, mask = Manifest.load(tmp_path / "out").skeleton(42)
    assert mask.tolist() == [True, True, True]
    assert points[2, 24].tolist() == [100.0 + 240 + 2, 200.0 + 120, pytest.approx(0.9)]
    assert float(abs(points[:, :25, :2]).max()) == 100.0 + 240 + 2
    assert not points[:, 25:].any()
    record = result.report["skeletons"]["0042"]
    assert (record["old_key_names"], record["body_model"], record["frames_with_person"]) == (True, "BODY_25", 3)
    new = {"pose_keypoints_2d": _body(25, 0), "face_keypoints_2d": [1.0] * 210,
           "pose_keypoints_3d": [], "part_candidates": [{"0": [1, 2, 0.5]}]}
    old = {"pose_keypoints": _body(25, 0), "face_keypoints": [1.0] * 210}
    (tmp_path / "a_000000000000_keypoints.json").write_text(json.dumps({"people": [new, old]}))
    both = read_openpose_json(tmp_path / "a_000000000000_keypoints.json")
    np.testing.assert_array_equal(both[0], both[1])


def test_coco18_body_is_mapped_into_body25_and_missing_joints_stay_undetected(tmp_path):
    person = {"pose_keypoints_2d": _body(18, 0), "face_keypoints_2d": [], "hand_left_keypoints_2d": [],
              "hand_right_keypoints_2d": []}
    root = _oulu_root(tmp_path / "root", [[person], [person]])
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    points, mask = Manifest.load(tmp_path / "out").skeleton(42)
    assert mask.tolist() == [True, True]
    coco = np.array(_body(18, 0), np.float32).reshape(18, 3)
    np.testing.assert_array_equal(points[0, list(COCO18_TO_BODY25)], coco)
    assert points[0, 8].tolist() == [0, 0, 0] and not points[0, 19:25].any()  # mid-hip, feet
    assert points[0, 9].tolist() == coco[8].tolist()   # COCO R-hip -> BODY_25 R-hip
    assert points[0, 18].tolist() == coco[17].tolist()  # L-ear
    assert result.report["skeletons"]["0042"]["body_model"] == "COCO-18"


def test_mpi15_video_is_refused_with_its_reason_in_the_report_and_on_the_console(tmp_path):
    from migfuse.cli import app

    person = {"pose_keypoints_2d": _body(15, 0)}
    root = _oulu_root(tmp_path / "root", [[person], [], [person]])
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    problem = next(p for p in result.report["problems"] if p.get("video_id") == "0042")
    assert problem["kind"] == "unsupported_body_model"
    assert "pose_keypoints_2d has 45 values per person (MPI-15)" in problem["detail"]
    assert "0042_000000000000_keypoints.json" in problem["detail"]
    assert Manifest.load(tmp_path / "out").videos["0042"].skeleton == ""
    cli = CliRunner().invoke(app, ["data", "prepare", "--root", str(root), "--out", str(tmp_path / "o2")])
    assert cli.exit_code == 0, cli.output
    assert "problem unsupported_body_model (video 0042)" in cli.output
    assert "45 values per person (MPI-15)" in cli.output


def test_nan_and_infinite_values_are_undetected_points_and_counted(tmp_path):
    body = _body(25, 0)
    body[0:3] = [float("nan"), 5.0, 0.9]          # joint 0: NaN x
    body[3:6] = [7.0, 8.0, float("inf")]          # joint 1: infinite confidence
    text = json.dumps({"people": [{"pose_keypoints_2d": body}]})  # Python writes NaN / Infinity tokens
    assert "NaN" in text and "Infinity" in text
    all_nan = json.dumps({"people": [{"pose_keypoints_2d": [float("nan")] * 75}]})
    root = _oulu_root(tmp_path / "root", [text, all_nan, text])
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    points, mask = Manifest.load(tmp_path / "out").skeleton(42)
    assert np.isfinite(points).all()
    assert mask.tolist() == [True, False, True]   # a frame of only NaN is not a detected person
    assert points[0, 0].tolist() == [0, 0, 0] and points[0, 1].tolist() == [0, 0, 0]
    assert points[0, 2].tolist() == [120.0, 210.0, pytest.approx(0.9)]
    record = result.report["skeletons"]["0042"]
    assert (record["nonfinite_points"], record["nonfinite_frames"]) == (2 + 25 + 2, 3)
    problem = next(p for p in result.report["problems"] if p["kind"] == "nonfinite_points")
    assert problem["video_id"] == "0042" and problem["detail"].startswith("29 points in 3 frames")


def test_valid_json_of_another_structure_is_a_per_frame_problem_counted_on_the_console(tmp_path):
    from migfuse.cli import app

    good = [{"pose_keypoints_2d": _body(25, 0)}]
    frames = [good, "[1, 2, 3]", json.dumps({"people": {"pose_keypoints_2d": []}}),
              json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 75}]}),
              json.dumps({"people": [{"id": 3}]}), "{broken", good]
    root = _oulu_root(tmp_path / "root", frames)
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    assert Manifest.load(tmp_path / "out").skeleton(42)[1].tolist() == [True] + [False] * 5 + [True]
    problem = next(p for p in result.report["problems"] if p["kind"] == "unreadable_frames")
    assert problem["detail"].startswith("5 of 7 frame files could not be read")
    assert set(problem["files"]) == {f"0042_{t:012d}_keypoints.json" for t in range(1, 6)}
    assert "JSON list, not an object" in problem["files"]["0042_000000000001_keypoints.json"]
    assert "'people' is a dict, not a list" in problem["files"]["0042_000000000002_keypoints.json"]
    assert "not numbers" in problem["files"]["0042_000000000003_keypoints.json"]
    assert "none of the keys pose_keypoints_2d" in problem["files"]["0042_000000000004_keypoints.json"]
    assert result.report["unreadable_frames"] == 5
    cli = CliRunner().invoke(app, ["data", "prepare", "--root", str(root), "--out", str(tmp_path / "o2")])
    assert cli.exit_code == 0, cli.output
    assert "5 unreadable skeleton frame files" in cli.output
    assert "problem unreadable_frames (video 0042): 5 of 7 frame files" in cli.output


def test_a_video_of_only_unreadable_frames_keeps_the_readers_reason(tmp_path):
    root = _oulu_root(tmp_path / "root", ["[]", "[]"])
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    problem = next(p for p in result.report["problems"] if p.get("video_id") == "0042")
    assert problem["kind"] == "empty_skeleton"
    assert "2 of 2 frame files unreadable (first: 0042_000000000000_keypoints.json: the file is a JSON list" \
        in problem["detail"]
    assert result.report["unreadable_frames"] == 2  # counted although no skeleton array was written
    from migfuse.cli import app

    cli = CliRunner().invoke(app, ["data", "prepare", "--root", str(root), "--out", str(tmp_path / "o2")])
    assert cli.exit_code == 0, cli.output
    assert "2 unreadable skeleton frame files" in cli.output


def test_reuse_notices_a_frame_file_fixed_in_place(tmp_path):
    root = _oulu_root(tmp_path / "root", [[{"pose_keypoints_2d": _body(25, t)}] for t in range(3)])
    prepare(root, tmp_path / "out", layout="oulu", progress=False)
    folder = root / "pose" / "0042"
    frame = folder / "0042_000000000001_keypoints.json"
    folder_times = os.stat(folder)
    frame.write_text(json.dumps({"people": [{"pose_keypoints_2d": _body(25, 50)}]}))  # same size
    os.utime(folder, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))  # the folder looks untouched
    assert os.stat(folder).st_mtime_ns == folder_times.st_mtime_ns
    prepare(root, tmp_path / "out", layout="oulu", progress=False)
    assert Manifest.load(tmp_path / "out").skeleton(42)[0][1, 0, 0] == 150.0


def test_folder_reader_counts_unreadable_files_with_reasons(tmp_path):
    (tmp_path / "7_000000000000_keypoints.json").write_text('{"people": 5}')
    (tmp_path / "7_000000000001_keypoints.json").write_text(
        json.dumps({"people": [{"pose_keypoints_2d": _body(25, 0)}]}))
    points, mask, stats = read_openpose_folder(tmp_path, progress=False)
    assert mask.tolist() == [False, True] and stats.unreadable == ["7_000000000000_keypoints.json"]
    assert stats.reasons == {"7_000000000000_keypoints.json": "'people' is a int, not a list"}


def test_label_id_0_and_unknown_win_lose_are_reported_problems(tmp_path):
    rows = ("26,0,0.0,0,0.08,2,5,3,F,X,Win\n26,1,0.0,0,0.08,2,5,3,F,X,Win\n"
            "27,1,0.0,0,0.08,2,5,7,F,X,draw\n28,1,0.0,0,0.08,2,5,9,F,X, lost \n")
    root = _oulu_root(tmp_path / "root", [[{"pose_keypoints_2d": _body(25, 0)}]], vid=26, rows=rows)
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    m = result.manifest
    assert [c.clip_id for c in m.clips] == ["0026_0", "0027_0", "0028_0"]
    kinds = {p["kind"]: p for p in result.report["problems"]}
    assert kinds["bad_label_id"]["rows"] == ["line 2 (video 0026, label_id 0)"]
    assert kinds["unknown_win_lose"]["video_ids"] == ["0027"]
    assert "'draw'" in kinds["unknown_win_lose"]["detail"]
    assert (m.videos["0026"].win_lose, m.videos["0027"].win_lose, m.videos["0028"].win_lose) == ("Win", "", "Lose")


OLD_KEYS_CASE = REALWORLD / "openpose-old-keys"


@pytest.mark.skipif(not OLD_KEYS_CASE.is_dir(), reason=missing_reason(OLD_KEYS_CASE, "the real-world cases"))
def test_shared_case_openpose_old_keys(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(OLD_KEYS_CASE / "make_input.py"), str(tmp_path / "root")], check=True,
                   capture_output=True)
    prepare(tmp_path / "root", tmp_path / "prepared", layout="oulu", progress=False)
    points, mask = Manifest.load(tmp_path / "prepared").skeleton(42)
    assert mask.tolist() == [True, True, True]
    assert float(abs(points[:, :25]).max()) == 342.0  # x of joint 24 in frame 2: 100 + 240 + 2


@pytest.mark.parametrize("damage, why", [
    (lambda p: np.save(p, np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True),
     "Array can't be memory-mapped: Python objects in dtype."),
    (lambda p: np.save(p, np.zeros((3, 137, 3), np.float64)), "holds float64 / mask bool, not float32 / bool"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "mmap length is greater than file size"),
    (lambda p: np.save(p, np.zeros((2, 137, 3), np.float32)), "shape (2, 137, 3) / mask (3,), expected"),
])
def test_rerun_converts_a_damaged_skeleton_array_again(tmp_path, caplog, damage, why):
    root = _oulu_root(tmp_path / "root", [[{"pose_keypoints_2d": _body(25, t)}] for t in range(3)])
    prepare(root, tmp_path / "out", layout="oulu", progress=False)
    array = tmp_path / "out" / "skeletons" / "0042.npy"
    good = np.load(array)
    damage(array)
    caplog.clear()
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        "1 skeleton arrays of an earlier run are damaged and are converted again (first: ")
    assert why in lines[0] and str(array) in lines[0] and "\n" not in lines[0]
    assert not any("reusing" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(Manifest.load(tmp_path / "out").skeleton(42)[0], good)
    assert result.report["skeletons"]["0042"]["frames"] == 3


@pytest.mark.parametrize("first, second", [("rel", "abs"), ("abs", "rel"), ("dot", "abs")])
def test_reuse_does_not_depend_on_how_the_root_is_spelled(tmp_path, monkeypatch, caplog, first, second):
    _oulu_root(tmp_path / "real", [[{"pose_keypoints_2d": _body(25, t)}] for t in range(3)])
    monkeypatch.chdir(tmp_path)
    spelled = {"rel": "real", "abs": str(tmp_path / "real"), "dot": "./real"}
    prepare(spelled[first], tmp_path / "out", layout="oulu", progress=False)
    from migfuse.datasets.layouts.skeletons import OpenPoseFolder

    def must_not_read(self, progress=True):
        raise AssertionError("unchanged skeleton read again")

    monkeypatch.setattr(OpenPoseFolder, "read", must_not_read)
    caplog.set_level(logging.INFO)
    result = prepare(spelled[second], tmp_path / "out", layout="oulu", progress=False)
    assert "reusing 1 skeleton arrays of an earlier run (unchanged sources)" in [r.getMessage() for r in caplog.records]
    assert result.report["skeletons"]["0042"]["source"] == str(tmp_path / "real" / "pose" / "0042")


def test_a_video_whose_rows_disagree_on_win_or_lose_gets_no_emotion_label_as_the_report_says(tmp_path):
    rows = ("298,1,0.0,0,0.08,2,5,22,F,X,Win\n298,2,0.0,0,0.08,2,5,22,F,X,Maybe\n"
            "299,1,0.0,0,0.08,2,5,23,F,X,Win\n299,2,0.0,0,0.08,2,5,23,F,X,lose\n"
            "300,1,0.0,0,0.08,2,5,22,F,X,Win\n300,2,0.0,0,0.08,2,5,22,F,X,\n"
            "301,1,0.0,0,0.08,2,5,23,F,X,\n")
    root = _oulu_root(tmp_path / "root", [[{"pose_keypoints_2d": _body(25, 0)}]], vid=298, rows=rows)
    result = prepare(root, tmp_path / "out", layout="oulu", progress=False)
    videos = Manifest.load(tmp_path / "out").videos
    assert {v: videos[v].win_lose for v in ("0298", "0299", "0300", "0301")} == {
        "0298": "", "0299": "", "0300": "Win", "0301": ""}
    kinds = {p["kind"]: p for p in result.report["problems"]}
    assert kinds["unknown_win_lose"]["detail"] == ("1 videos in labels_20200831.csv have a win_or_lose value that is "
                                                   "not Win or Lose ('Maybe'); their emotion label is left empty")
    assert kinds["unknown_win_lose"]["video_ids"] == ["0298"]
    assert kinds["conflicting_win_lose"]["detail"] == (
        "1 videos in labels_20200831.csv have rows saying Win and rows saying Lose (0299); their emotion label is "
        "left empty")
    assert kinds["conflicting_win_lose"]["video_ids"] == ["0299"]
