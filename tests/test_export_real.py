"""Exports on the REAL iMiGUE annotation: the MiGA test list has exactly 4,562 clips, 0453_32 absent."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from migfuse.datasets.classes import CLASS_NAMES, EMOTION_CLASSES, emotion_label
from migfuse.datasets.layouts.base import LayoutScan
from migfuse.datasets.layouts.oulu import read_labels_csv
from migfuse.datasets.manifest import Manifest
from migfuse.datasets.prepare import build_manifest
from migfuse.fuse.export import export_scores
from migfuse.fuse.score import score_file
from migfuse.fuse.scores import Scores


@pytest.fixture(scope="module")
def real_manifest(imigue_dir, tmp_path_factory) -> Manifest:
    """The manifest of labels_20200831.csv, saved and loaded back (as `export --data` reads it)."""
    # the Oulu layout's label reader and prepare's manifest builder (no skeletons needed here)
    scan = LayoutScan("oulu", imigue_dir, read_labels_csv(imigue_dir / "labels_20200831.csv"))
    root = tmp_path_factory.mktemp("real_prepared")
    build_manifest(scan).save(root)
    return Manifest.load(root)


def test_real_miga_test_export_has_the_challenge_list(real_manifest, tmp_path):
    m = real_manifest
    cs_test = m.ids("test", scheme="split_cs")  # the raw annotation's 4,563 test-subject clips
    assert len(cs_test) == 4563 and "0453_32" in cs_test
    rng = np.random.default_rng(0)
    probs = rng.random((len(cs_test), 32)).astype(np.float32)
    shuffled = rng.permutation(len(cs_test))  # predictions come in any order
    scores = Scores([cs_test[i] for i in shuffled], probs[shuffled], "mg", "test", CLASS_NAMES)

    r = export_scores(scores, m, "miga2025", out=tmp_path / "prediction.zip")
    assert (r.rows, r.dropped) == (4562, ["0453_32"])
    with zipfile.ZipFile(r.path) as zf:
        assert zf.namelist() == ["prediction.csv"]
        lines = zf.read("prediction.csv").decode().splitlines()
    assert lines[0] == "Id,Target" and len(lines) == 4563
    ids = [line.split(",")[0] for line in lines[1:]]
    assert ids == [i for i in cs_test if i != "0453_32"]  # manifest order
    assert "0453_32" not in ids and "0453_31" in ids
    top1 = dict(zip(cs_test, probs.argmax(1).tolist()))
    assert all(int(line.split(",")[1]) == top1[line.split(",")[0]] for line in lines[1:])

    r23 = export_scores(scores, m, "miga2023", out=tmp_path / "Submission.zip")
    with zipfile.ZipFile(r23.path) as zf:
        lines23 = zf.read("Submission.csv").decode().splitlines()
    assert len(lines23) == 4562 and lines23 == lines[1:]  # no header, same rows

    report = score_file(r23.path, m, split="test")
    assert report.n == 4562 and 0.0 < report.accuracy < 0.2  # random scores: near chance


def test_real_emotion_test_export_has_100_balanced_videos(real_manifest, tmp_path):
    m = real_manifest
    videos = m.video_ids("test", scheme="split_emotion")
    truth = [emotion_label(m.videos[v].win_lose) for v in videos]
    perfect = np.eye(2, dtype=np.float32)[truth]
    r = export_scores(Scores(videos, perfect, "emotion", "test", EMOTION_CLASSES), m, "emotion",
                      out=tmp_path / "emotion.zip")
    with zipfile.ZipFile(r.path) as zf:
        lines = zf.read("prediction.csv").decode().splitlines()
    assert r.rows == 100 and len(lines) == 101 and lines[1] == "0009,1"  # video 9: Win
    assert sum(line.endswith(",1") for line in lines[1:]) == 50
    assert score_file(r.path, m, split="test").accuracy == 1.0
