"""Scores are read by class name, not column position (issue #11 section 4), and CSV encodings.

The same predictions stored with their columns in another order must give the same submission and
the same score; a scores file without class names is refused for classification.
"""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from migfuse.datasets.classes import CLASS_NAMES, EMOTION_CLASSES
from migfuse.errors import UserError
from migfuse.fuse.export import export_scores
from migfuse.fuse.late_fusion import fuse_late
from migfuse.fuse.score import read_predictions, score_file
from migfuse.fuse.scores import Scores
from test_export import TEST_IDS, mg_scores, read_zip, small_manifest


def _permuted(s: Scores, order: np.ndarray) -> Scores:
    """The same predictions with column j holding class order[j]."""
    return Scores(s.ids, s.scores[:, order], s.task, s.split, [s.classes[k] for k in order])


def test_permuted_columns_give_the_same_submission_and_score(tmp_path):
    m = small_manifest(tmp_path / "prep")
    plain = mg_scores(m, TEST_IDS, wrong={"0009_0": 3})
    reversed_ = _permuted(plain, np.arange(32)[::-1])
    shuffled = _permuted(plain, np.random.default_rng(0).permutation(32))
    zips = [export_scores(s, m, out=tmp_path / f"{k}.zip") for k, s in enumerate((plain, reversed_, shuffled))]
    texts = [read_zip(z.path)[1] for z in zips]
    assert texts[0] == texts[1] == texts[2]
    # the true labels of the test clips: 0054_0 -> 4, 0054_1 -> 31 (not column 0 or 31 of the file)
    assert texts[1].splitlines()[1:3] == ["0054_0,4", "0054_1,31"]
    assert len({z.sha256 for z in zips}) == 1
    reports = [score_file(s.save(tmp_path / f"s{k}.npz"), m, split="test")
               for k, s in enumerate((plain, reversed_, shuffled))]
    assert [r.accuracy for r in reports] == [pytest.approx(5 / 6)] * 3
    assert reports[0].top5 == reports[1].top5 == reports[2].top5


def test_emotion_scores_with_win_first_export_the_same(tmp_path):
    m = small_manifest(tmp_path / "prep")
    ids = ["0009", "0054"]  # test videos: 0009 Lose, 0054 Win
    lose_win = Scores(ids, [[0.8, 0.2], [0.3, 0.7]], "emotion", "test", EMOTION_CLASSES)
    win_lose = Scores(ids, [[0.2, 0.8], [0.7, 0.3]], "emotion", "test", ["Win", "Lose"])
    a = export_scores(lose_win, m, fmt="emotion", out=tmp_path / "a.zip")
    b = export_scores(win_lose, m, fmt="emotion", out=tmp_path / "b.zip")
    assert read_zip(a.path)[1] == read_zip(b.path)[1] == "Id,Target\n0009,0\n0054,1\n"


def test_scores_without_class_names_are_refused_for_classification(tmp_path):
    m = small_manifest(tmp_path / "prep")
    path = tmp_path / "bare.npz"
    s = mg_scores(m, TEST_IDS)
    np.savez(path, ids=np.array(s.ids), scores=s.scores, task=np.array("mg"), split=np.array("test"),
             format_version=np.array(1, np.int32))  # a file without `classes`
    assert Scores.load(path).classes == []
    with pytest.raises(UserError) as e:
        export_scores(path, m, out=tmp_path / "p.zip")
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "no class names" in str(e.value)
    assert not (tmp_path / "p.zip").exists()
    with pytest.raises(UserError, match="no class names"):
        score_file(path, m, split="test")


def test_scores_with_other_classes_are_refused(tmp_path):
    m = small_manifest(tmp_path / "prep")
    names = [f"class {k}" for k in range(32)]
    path = Scores(TEST_IDS, mg_scores(m, TEST_IDS).scores, "mg", "test", names).save(tmp_path / "o.npz")
    with pytest.raises(UserError, match=r"not the 32 expected ones: it lacks 'turtle neck'"):
        read_predictions(path)


def test_late_fusion_joins_columns_by_class_name():
    ids = ["0054_0", "0054_1"]
    a = Scores(ids, np.eye(32, dtype=np.float32)[[4, 31]], "mg", "test", CLASS_NAMES)
    b = _permuted(a, np.arange(32)[::-1])
    fused = fuse_late([a, b]).scores
    assert fused.classes == CLASS_NAMES
    assert fused.predictions().tolist() == [4, 31]


def test_a_bom_utf8_csv_scores_like_a_plain_one(tmp_path):
    m = small_manifest(tmp_path / "prep")
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    text = "Id,Target\r\n0054_0,4\r\n0054_1,0\r\n"
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(text.encode("utf-8-sig"))
    assert read_predictions(bom).header == ("Id", "Target")
    assert score_file(bom, m).accuracy == score_file(plain, m).accuracy == 0.5


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_a_utf16_csv_ends_in_one_line_naming_the_file_and_the_fix(tmp_path, encoding):
    from typer.testing import CliRunner

    from migfuse.cli import app

    small_manifest(tmp_path / "prep")
    path = tmp_path / "excel.csv"
    path.write_bytes("Id,Target\n0054_0,4\n".encode(encoding))
    with pytest.raises(UserError) as e:
        read_predictions(path)
    assert str(path) in str(e.value) and "UTF-16" in str(e.value) and "CSV UTF-8" in str(e.value)
    res = CliRunner().invoke(app, ["score", str(path), "--data", str(tmp_path / "prep")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "UTF-16" in res.stderr
    zipped = tmp_path / "sub.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("prediction.csv", path.read_bytes())
    with pytest.raises(UserError, match="prediction.csv is UTF-16 text"):
        read_predictions(zipped)


def test_a_latin1_csv_is_refused_in_one_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("Id,Target # caf\xe9\n0054_0,4\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.csv is not UTF-8 text \(byte 15"):
        read_predictions(path)


# ---------------------------------------------------------------------------------------------
# export --out NAME.csv / --out DIR (issue #12 section 4)
# ---------------------------------------------------------------------------------------------
def test_export_to_a_csv_writes_the_bare_csv_and_the_zip(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    m = small_manifest(tmp_path / "prep")
    scores = mg_scores(m, TEST_IDS).save(tmp_path / "s.npz")
    res = CliRunner().invoke(app, ["export", "miga2025", str(scores), "--data", str(tmp_path / "prep"),
                                   "--out", str(tmp_path / "sub" / "prediction.csv")])
    assert res.exit_code == 0, res.output
    bare = (tmp_path / "sub" / "prediction.csv").read_text()
    names, member = read_zip(tmp_path / "sub" / "prediction.zip")
    assert names == ["prediction.csv"] and bare == member
    assert bare.splitlines()[:2] == ["Id,Target", "0054_0,4"] and len(bare.splitlines()) == 7
    assert "(the same rows as a bare CSV)" in res.stdout


def test_export_to_a_new_folder_creates_it(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    m = small_manifest(tmp_path / "prep")
    scores = mg_scores(m, TEST_IDS).save(tmp_path / "s.npz")
    res = CliRunner().invoke(app, ["export", "miga2023", str(scores), "--data", str(tmp_path / "prep"),
                                   "--out", str(tmp_path / "new" / "dir") + "/"])
    assert res.exit_code == 0, res.output
    names, text = read_zip(tmp_path / "new" / "dir" / "Submission.zip")
    assert names == ["Submission.csv"] and text.splitlines()[0] == "0054_0,4"
