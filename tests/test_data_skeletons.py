"""Skeleton sources on small hand-made files: OpenPose JSON edge cases, light_hand csv, xlsx shape checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from migfuse.datasets.layouts.skeletons import (LIGHT_HAND_POINTS, LightHandCsv, OpenPoseXlsx,
                                                  write_light_hand_csv)
from migfuse.datasets.openpose import PersonTracker, person_array, read_openpose_folder, read_openpose_json
from migfuse.datasets.xlsx import write_xlsx
from migfuse.errors import UserError


def _person(x: float, conf: float, hands: bool = True) -> dict:
    body = [v for i in range(25) for v in (x + i, 100.0 + i, conf)]
    return {"pose_keypoints_2d": body, "face_keypoints_2d": [1.0] * 210,
            "hand_left_keypoints_2d": [2.0] * 63 if hands else [],
            "hand_right_keypoints_2d": [3.0] * 63 if hands else []}


def test_openpose_json_parts_and_missing_hands(tmp_path):
    path = tmp_path / "7_000000000000_keypoints.json"
    path.write_text(json.dumps({"version": 1.3, "people": [_person(10, 0.5, hands=False)]}))
    people = read_openpose_json(path)
    assert people.shape == (1, 137, 3)
    assert people[0, 3].tolist() == [13.0, 103.0, 0.5]
    assert (people[0, 25:95] == 1).all() and not people[0, 95:].any()
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 74}]}))
    with pytest.raises(ValueError, match="pose_keypoints_2d has 74 values, expected 75"):
        read_openpose_json(path)


def test_folder_gaps_unreadable_files_and_tracking(tmp_path):
    frames = {0: [_person(500, 0.9)],
              1: [_person(100, 0.95), _person(505, 0.3)],   # nearest to frame 0 wins over more confident
              3: [],                                          # frame 2 has no file at all
              4: "{not json"}
    for frame, people in frames.items():
        text = people if isinstance(people, str) else json.dumps({"people": people})
        (tmp_path / f"7_{frame:012d}_keypoints.json").write_text(text)
    points, mask, stats = read_openpose_folder(tmp_path, progress=False)
    assert points.shape == (5, 137, 3)
    assert mask.tolist() == [True, True, False, False, False]
    assert points[1, 0, 0] == 505.0
    assert (stats.missing_frames, stats.empty_frames, stats.multi_person_frames) == ([2], 1, 1)
    assert stats.unreadable == ["7_000000000004_keypoints.json"]
    first = PersonTracker()  # without history: the largest summed body confidence
    assert first.pick(np.stack([person_array(p) for p in frames[1]])) == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*_<frame>_keypoints.json files in"):
        read_openpose_folder(tmp_path / "empty", progress=False)


def test_light_hand_csv_round_trip_with_header(tmp_path):
    rng = np.random.default_rng(1)
    points = (rng.random((6, 137, 3)) * 100).astype(np.float32)
    points[2] = 0
    path = write_light_hand_csv(tmp_path / "0001_light_hand.csv", points)
    read = LightHandCsv(path).read()
    np.testing.assert_array_equal(read.points[:, list(LIGHT_HAND_POINTS)], points[:, list(LIGHT_HAND_POINTS)])
    assert read.mask.tolist() == [True, True, False, True, True, True]
    header = ",".join(["frame"] + [f"j{i}" for i in range(105)])
    path.write_text(header + "\n" + path.read_text())
    again = LightHandCsv(path).read()
    assert again.info == {"header_row_dropped": True}
    np.testing.assert_array_equal(again.points, read.points)
    path.write_text("1,2,3\n")
    with pytest.raises(UserError, match=r"rows of \[3\] columns, expected 106"):
        LightHandCsv(path).read()


def test_xlsx_skeleton_shape_errors(tmp_path):
    with pytest.raises(UserError, match="has 410 columns, expected 411"):
        OpenPoseXlsx(write_xlsx(tmp_path / "a.xlsx", np.ones((3, 410)))).read()
    (tmp_path / "b.xlsx").write_bytes(b"")
    with pytest.raises(UserError, match="b.xlsx is an empty file"):
        OpenPoseXlsx(tmp_path / "b.xlsx").read()
    read = OpenPoseXlsx(write_xlsx(tmp_path / "c.xlsx", np.arange(2 * 411).reshape(2, 411))).read()
    assert read.points.shape == (2, 137, 3) and read.points[1, 0].tolist() == [411.0, 412.0, 413.0]


def test_infinite_spreadsheet_and_csv_values_are_undetected_points(tmp_path):
    from openpyxl import Workbook

    table = np.arange(3 * 411, dtype=np.float64).reshape(3, 411) + 1
    table[1, 3:6] = [np.inf, 5, 0.5]      # point 1 of frame 1
    workbook = Workbook()
    for row in table.tolist():
        workbook.active.append(["inf" if v == np.inf else v for v in row])  # a text cell "inf"
    workbook.save(tmp_path / "a.xlsx")
    read = OpenPoseXlsx(tmp_path / "a.xlsx").read()
    assert read.points[1, 1].tolist() == [0, 0, 0] and np.isfinite(read.points).all()
    assert (read.info["nonfinite_points"], read.info["nonfinite_frames"]) == (1, 1)
    assert read.points[1, 2].tolist() == table[1, 6:9].tolist()
    points = np.ones((2, 137, 3), np.float32)
    path = write_light_hand_csv(tmp_path / "0001_light_hand.csv", points)
    path.write_text(path.read_text().replace("1,1,1", "1,-inf,1", 1))
    light = LightHandCsv(path).read()
    assert light.points[0, 0].tolist() == [0, 0, 0] and light.info["nonfinite_points"] == 1
