"""Class mapping and split constants, checked against the real labels_20200831.csv."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from migfuse.datasets import classes
from migfuse.datasets.video_facts import VIDEO_SUBJECT, WIN_VIDEOS, video_facts

# (raw class, CS-train count, CS-test count) for index 0..31, counted once from labels_20200831.csv and
# kept here so that a change to the split or the class mapping shows up; the sums, 13,935 / 4,563, are
# the evaluation protocol's 13,936 / 4,563 less one train clip.
CS_COUNTS = [
    (1, 11, 4), (2, 421, 94), (3, 39, 6), (4, 218, 53), (5, 80, 10), (6, 23, 9), (7, 65, 25),
    (8, 871, 263), (9, 87, 45), (10, 3, 2), (11, 315, 139), (12, 163, 35), (13, 101, 39), (14, 42, 28),
    (15, 28, 16), (16, 27, 3), (17, 322, 84), (18, 85, 46), (19, 2, 0), (20, 961, 256), (21, 174, 53),
    (22, 376, 151), (23, 659, 376), (24, 705, 183), (25, 11, 10), (26, 293, 137), (27, 87, 13),
    (28, 61, 38), (29, 1247, 300), (30, 6, 2), (31, 2332, 548), (99, 4120, 1595),
]


@pytest.fixture(scope="module")
def label_rows(imigue_dir):
    with open(imigue_dir / "labels_20200831.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_class_index_mapping():
    assert [classes.raw_to_index(raw) for raw, _, _ in CS_COUNTS] == list(range(32))
    assert [classes.index_to_raw(i) for i in range(32)] == [raw for raw, _, _ in CS_COUNTS]
    assert classes.CLASS_NAMES[0] == "turtle neck" and classes.CLASS_NAMES[31] == "illustrative"
    assert len(classes.CLASS_NAMES) == classes.NUM_CLASSES == 32
    with pytest.raises(ValueError, match="32"):
        classes.raw_to_index(32)
    with pytest.raises(ValueError):
        classes.index_to_raw(32)


def test_cross_subject_counts_per_class_match_cs_counts(label_rows):
    got = Counter((classes.raw_to_index(int(r["class"])), classes.split_cs(int(r["subject_id"])))
                  for r in label_rows)
    for index, (_, train, test) in enumerate(CS_COUNTS):
        assert (got[(index, "train")], got[(index, "test")]) == (train, test), classes.CLASS_NAMES[index]
    assert sum(t for _, t, _ in CS_COUNTS) == 13935 and sum(t for _, _, t in CS_COUNTS) == 4563


def test_emotion_lists_are_balanced_against_csv(label_rows):
    win_lose = {int(r["video_id"]): r["win_or_lose"] for r in label_rows}
    train = Counter(win_lose[v] for v in classes.EMOTION_TRAIN_VIDEOS)
    test = Counter(win_lose[v] for v in classes.EMOTION_TEST_VIDEOS)
    assert train == {"Win": 51, "Lose": 51} and test == {"Win": 50, "Lose": 50}
    assert classes.split_emotion(1) == "train" and classes.split_emotion(9) == "test"
    assert classes.split_emotion(298) == ""
    assert classes.emotion_label("Win") == 1 and classes.emotion_label("Lose") == 0
    assert classes.emotion_label("") is None


def test_video_facts_table_equals_csv(label_rows):
    subjects = {int(r["video_id"]): int(r["subject_id"]) for r in label_rows}
    wins = {int(r["video_id"]) for r in label_rows if r["win_or_lose"] == "Win"}
    assert VIDEO_SUBJECT == subjects and WIN_VIDEOS == wins
    assert video_facts(298) == (22, "Win") and video_facts(9999) == (None, "")


def test_miga_split_rule():
    assert classes.split_miga(1, 0, 42) == "validation"
    assert classes.split_miga(218, 0, 21) == ""
    assert classes.split_miga(453, 32, 72) == ""  # 0453_32, not in the challenge files
    assert classes.split_miga(453, 31, 72) == "test"
    assert classes.split_miga(298, 0, 22) == "train"
