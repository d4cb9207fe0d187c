"""`score`: reads CSV / zip / npz predictions, with or without header, joins by id, refuses bad id sets."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from migfuse.errors import UserError
from migfuse.fuse.score import read_predictions, score_file
from migfuse.fuse.scores import Scores
from test_export import TEST_IDS, mg_scores, small_manifest


def test_headerless_csv_in_any_order_scores_by_id(tmp_path):
    m = small_manifest(tmp_path / "prep")
    # truth: 0054_0 -> 4, 0054_1 -> 31, 0054_2 -> 4, 0009_0 -> 11, 0453_0 -> 2, 0453_31 -> 2
    csv = tmp_path / "p.csv"
    csv.write_text("0453_31,2\n0054_0,4\n0054_2,0\n0009_0,11\n0054_1,31\n0453_0,2\n")
    pred = read_predictions(csv)
    assert pred.header is None and pred.task == "mg"
    report = score_file(csv, m, split="test")
    assert report.accuracy == pytest.approx(5 / 6)
    assert [(c.index, c.name, c.n, c.correct) for c in report.per_class] == [
        (2, "touch hat", 2, 2), (4, "touch forehead", 2, 1), (11, "touch neck", 1, 1), (31, "illustrative", 1, 1)]
    text = report.format()
    assert "top-1 accuracy         83.33 %" in text
    assert "touch forehead" in text


def test_cross_subject_scheme_includes_the_clip_the_challenge_leaves_out(tmp_path):
    m = small_manifest(tmp_path / "prep")
    npz = mg_scores(m, TEST_IDS + ["0453_32"]).save(tmp_path / "s.npz")
    assert score_file(npz, m, split="test").n == 6  # MiGA list: 0453_32 ignored
    report = score_file(npz, m, split="test", scheme="split_cs")
    assert (report.n, report.ignored, report.accuracy) == (7, [], 1.0)


def test_header_is_detected_and_npz_is_accepted(tmp_path):
    m = small_manifest(tmp_path / "prep")
    csv = tmp_path / "p.csv"
    csv.write_text("Id,Target\n0054_0,4\n0054_1,0\n")
    pred = read_predictions(csv)
    assert pred.header == ("Id", "Target") and pred.ids == ["0054_0", "0054_1"]
    report = score_file(csv, m)  # no --split: the file's own ids are scored
    assert (report.n, report.accuracy) == (2, 0.5)

    npz = mg_scores(m, TEST_IDS, wrong={"0009_0": 3}).save(tmp_path / "s.npz")
    report = score_file(npz, m, split="test")
    assert report.accuracy == pytest.approx(5 / 6)
    assert report.top5 == pytest.approx(5 / 6)  # one-hot-like scores: the wrong clip's label ranks low


def test_emotion_f1(tmp_path):
    m = small_manifest(tmp_path / "prep")
    # videos: 0054 Win, 0009 Lose, 0453 Lose, 0001 Win -> predict Win for all
    csv = tmp_path / "e.csv"
    csv.write_text("0054,1\n0009,1\n0453,1\n0001,1\n")
    report = score_file(csv, m)
    assert report.task == "emotion"
    assert report.accuracy == 0.5
    assert report.f1 == pytest.approx(2 * 2 / (4 + 2))  # tp 2, 4 predicted Win, 2 true Win
    assert report.roc_auc is None  # a hard-label CSV has no ranking
    # a scores file with its columns in another order: joined by class name, and ROC-AUC known
    npz = Scores(["0054", "0009", "0453"], np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]), "emotion", "",
                 ["Win", "Lose"]).save(tmp_path / "e.npz")
    report = score_file(npz, m)
    assert report.accuracy == 1.0 and report.roc_auc == 1.0
    assert "ROC-AUC               1.0000" in report.format()


@pytest.mark.parametrize("rows, split, match", [
    ("0054_0,4\n0999_1,3\n", None, r"1 ids that are not in .*prep \(e.g. 0999_1\)"),
    ("0054_0,4\n", "test", r"lacks 5 of the 6 'test' ids \(e.g. 0054_1, 0054_2, 0009_0\)"),
    ("0054_0,4\n0054_0,5\n", None, r"lists 1 ids twice \(e.g. 0054_0\)"),
    ("0054_0,40\n", None, r"class 40, outside 0..31"),
    ("0054_0,four\n0054_1,4\n", None, r"line 1 is '0054_0,four', expected `id,integer target`"),
    ("Id,Target\n0054_0,4\n0054_1,4,7\n", None, r"line 3 is '0054_1,4,7'"),
    ("0054_0,4\n0054,1\n", None, r"mixes clip ids"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, rows, split, match):
    m = small_manifest(tmp_path / "prep")
    csv = tmp_path / "bad.csv"
    csv.write_text(rows)
    with pytest.raises(UserError, match=match) as e:
        score_file(csv, m, split=split)
    assert "\n" not in str(e.value) and str(csv) in str(e.value)


def test_zip_with_csv_in_a_folder_is_refused(tmp_path):
    m = small_manifest(tmp_path / "prep")
    bad = tmp_path / "nested.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("prediction/prediction.csv", "Id,Target\n0054_0,4\n")
    with pytest.raises(UserError, match="has its CSV in a folder"):
        score_file(bad, m)


def test_cli_score(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    small_manifest(tmp_path / "prep")
    csv = tmp_path / "p.csv"
    csv.write_text("Id,Target\n0054_0,4\n0054_1,31\n")
    res = CliRunner().invoke(app, ["score", str(csv), "--data", str(tmp_path / "prep")])
    assert res.exit_code == 0, res.output
    assert "top-1 accuracy        100.00 %" in res.output
    res = CliRunner().invoke(app, ["score", str(csv), "--data", str(tmp_path / "prep"), "--split", "test"])
    assert res.exit_code == 2 and "lacks 4 of the 6 'test' ids" in res.output


@pytest.mark.parametrize("content", [b"hello,world\n", b"x\n", b"Id,Target\n"])
def test_a_file_without_prediction_rows_is_refused_not_scored_as_zero_clips(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="holds no prediction rows"):
        read_predictions(bad)
