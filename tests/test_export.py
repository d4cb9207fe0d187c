"""Challenge exports: exact id sets in manifest order, CSV at the zip root, round trip through score."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from migfuse.datasets.classes import CLASS_NAMES, EMOTION_CLASSES
from migfuse.datasets.manifest import Clip, Manifest
from migfuse.errors import UserError
from migfuse.fuse.export import EXPORTERS, ExportFormat, export_scores, get_exporter, register_exporter
from migfuse.fuse.score import score_file
from migfuse.fuse.scores import Scores

# MiGA test clips of the small manifest, in manifest order (0453_32 is a test-subject clip the
# challenge does not list; 0001 is a validation video, 0298 a training video, 0218 left out).
TEST_IDS = ["0054_0", "0054_1", "0054_2", "0009_0", "0453_0", "0453_31"]


def small_manifest(root: Path) -> Manifest:
    """A saved 12-clip manifest covering every MiGA split value and both emotion classes."""
    spec = [  # video, k, raw class, subject, win/lose
        ("0054", 0, 5, 1, "Win"), ("0054", 1, 99, 1, "Win"), ("0054", 2, 5, 1, "Win"),
        ("0009", 0, 12, 1, "Lose"),
        ("0453", 0, 3, 3, "Lose"), ("0453", 31, 3, 3, "Lose"), ("0453", 32, 7, 3, "Lose"),
        ("0001", 0, 1, 2, "Win"), ("0001", 1, 2, 2, "Win"),
        ("0218", 0, 4, 2, "Lose"),
        ("0298", 0, 8, 22, "Win"), ("0298", 1, 9, 22, "Win"),
    ]
    clips = [Clip.make(v, k, 10 * k, 10 * k + 9, raw_class=c, subject=s, win_lose=w) for v, k, c, s, w in spec]
    m = Manifest(clips=clips)
    m.save(root)
    return Manifest.load(root)


def one_hot(labels: list[int], n: int = 32) -> np.ndarray:
    out = np.full((len(labels), n), 0.1 / n, dtype=np.float32)
    out[np.arange(len(labels)), labels] += 0.9
    return out


def mg_scores(m: Manifest, ids: list[str], wrong: dict[str, int] | None = None) -> Scores:
    """Scores whose top-1 is the true label, except for the ids in `wrong` (id -> predicted class)."""
    wrong = wrong or {}
    labels = [wrong.get(i, m.clip(i).label if i in m else 0) for i in ids]
    return Scores(ids, one_hot(labels), "mg", "test", CLASS_NAMES)


def read_zip(path: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        return names, zf.read(names[0]).decode()


def test_miga2025_exact_rows_in_manifest_order_and_perfect_round_trip(tmp_path):
    m = small_manifest(tmp_path / "prep")
    ids = TEST_IDS[::-1] + ["0453_32"]  # any order; 0453_32 must be dropped
    r = export_scores(mg_scores(m, ids), tmp_path / "prep", "miga2025", out=tmp_path / "sub.zip")

    names, text = read_zip(r.path)
    assert names == ["prediction.csv"]  # at the archive root, nothing else
    labels = [m.clip(i).label for i in TEST_IDS]
    assert text == "Id,Target\n" + "".join(f"{i},{c}\n" for i, c in zip(TEST_IDS, labels))
    assert (r.rows, r.dropped, r.split) == (6, ["0453_32"], "test")
    assert r.sha256 == hashlib.sha256(r.path.read_bytes()).hexdigest()

    report = score_file(r.path, tmp_path / "prep", split="test")
    assert (report.n, report.accuracy, report.mean_class_accuracy) == (6, 1.0, 1.0)


def test_known_wrong_predictions_give_known_accuracy(tmp_path):
    m = small_manifest(tmp_path / "prep")
    # truth: 0054_0 -> 4, 0054_1 -> 31, 0054_2 -> 4, 0009_0 -> 11, 0453_0 -> 2, 0453_31 -> 2
    s = mg_scores(m, TEST_IDS, wrong={"0054_0": 31, "0453_0": 0})
    r = export_scores(s, m, "miga2025", out=tmp_path / "p.zip")
    report = score_file(r.path, m, split="test")
    assert report.accuracy == pytest.approx(4 / 6)
    # class 4: 1/2, class 31: 1/1, class 11: 1/1, class 2: 1/2 -> mean 0.75
    assert report.mean_class_accuracy == pytest.approx(0.75)
    assert {c.index: (c.n, c.correct) for c in report.per_class} == {2: (2, 1), 4: (2, 1), 11: (1, 1), 31: (1, 1)}


def test_miga2023_has_no_header_and_default_name(tmp_path, monkeypatch):
    m = small_manifest(tmp_path / "prep")
    monkeypatch.chdir(tmp_path)
    r = export_scores(mg_scores(m, TEST_IDS), m, "miga2023")
    assert r.path == Path("Submission.zip")
    names, text = read_zip(tmp_path / "Submission.zip")
    assert names == ["Submission.csv"]
    assert text.splitlines()[0] == "0054_0,4"
    assert len(text.splitlines()) == 6
    assert score_file(r.path, m, split="test").accuracy == 1.0


def test_same_scores_give_the_same_sha256(tmp_path):
    m = small_manifest(tmp_path / "prep")
    a = export_scores(mg_scores(m, TEST_IDS), m, out=tmp_path / "a.zip")
    b = export_scores(mg_scores(m, TEST_IDS[::-1]), m, out=tmp_path / "b.zip")
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("ids, match", [
    (TEST_IDS[1:], r"lacks 1 of the 6 'test' ids \(e.g. 0054_0\)"),
    (TEST_IDS + ["0001_0"], r"1 ids outside split_miga 'test' \(e.g. 0001_0 is 'validation'\)"),
    (TEST_IDS + ["0777_0"], r"1 ids that are not in .*prep \(e.g. 0777_0\)"),
])
def test_wrong_id_sets_are_refused_in_one_line(tmp_path, ids, match):
    m = small_manifest(tmp_path / "prep")
    with pytest.raises(UserError, match=match) as e:
        export_scores(mg_scores(m, ids), m, out=tmp_path / "x.zip")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.zip").exists()


def test_validation_split_and_other_refusals(tmp_path):
    m = small_manifest(tmp_path / "prep")
    r = export_scores(mg_scores(m, ["0001_1", "0001_0"]), m, split="validation", out=tmp_path / "v.zip")
    assert read_zip(r.path)[1] == "Id,Target\n0001_0,0\n0001_1,1\n"
    with pytest.raises(UserError, match="must be NAME.zip, NAME.csv"):  # a bare CSV is written beside a zip now
        export_scores(mg_scores(m, TEST_IDS), m, out=tmp_path / "p.txt")
    with pytest.raises(UserError, match="unknown export format 'kaggle': choose one of emotion, miga2023, miga2025"):
        get_exporter("kaggle")
    with pytest.raises(UserError, match="no split_miga == 'val' ids; use --split test or train or validation"):
        export_scores(mg_scores(m, TEST_IDS), m, split="val", out=tmp_path / "p.zip")
    emo = Scores(["0054"], np.array([[0.2, 0.8]]), "emotion", "test", EMOTION_CLASSES)
    with pytest.raises(UserError, match="holds emotion scores but miga2025 needs mg; use `migfuse export emotion`"):
        export_scores(emo, m, "miga2025", out=tmp_path / "p.zip")
    assert set(EXPORTERS) == {"miga2025", "miga2023", "emotion"}


def test_a_format_name_is_registered_once_and_wrong_scores_name_the_formats_that_fit(tmp_path):
    m = small_manifest(tmp_path / "prep")
    with pytest.raises(ValueError, match="export format 'emotion' is registered twice"):
        register_exporter(ExportFormat("emotion", "emotion", "split_emotion", "p.csv", "p.zip", None, "again"))
    with pytest.raises(UserError, match="holds mg scores but emotion needs emotion; "
                                        "use `migfuse export miga2023` or `migfuse export miga2025`"):
        export_scores(mg_scores(m, TEST_IDS), m, "emotion", out=tmp_path / "e.zip")


def test_emotion_export_polarity_header_and_round_trip(tmp_path):
    m = small_manifest(tmp_path / "prep")
    # emotion test videos of the manifest: 0009 (Lose), 0054 (Win); 0453 is an emotion-train video
    probs = {"0054": [0.3, 0.7], "0009": [0.6, 0.4], "0218": [0.5, 0.5]}  # 0218: not in the protocol
    s = Scores(list(probs), np.array(list(probs.values())), "emotion", "test", EMOTION_CLASSES)

    r = export_scores(s, m, "emotion", out=tmp_path / "e.zip")
    assert read_zip(r.path) == (["prediction.csv"], "Id,Target\n0009,0\n0054,1\n")
    assert r.dropped == ["0218"]

    flipped = export_scores(s, m, "emotion", out=tmp_path / "f.zip", header="video_id,label", win_label=0)
    assert read_zip(flipped.path)[1] == "video_id,label\n0009,1\n0054,0\n"
    report = score_file(flipped.path, m, split="test", win_label=0)
    assert (report.accuracy, report.f1, report.mean_class_accuracy) == (1.0, 1.0, 1.0)
    # read with the wrong polarity, every prediction is wrong
    assert score_file(flipped.path, m, split="test").accuracy == 0.0


def test_cli_export_prints_rows_and_sha256(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    m = small_manifest(tmp_path / "prep")
    scores = mg_scores(m, TEST_IDS + ["0453_32"]).save(tmp_path / "s.npz")
    out = tmp_path / "out.zip"
    res = CliRunner().invoke(app, ["export", "miga2025", str(scores), "--data", str(tmp_path / "prep"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "6 rows of split test" in res.output
    assert "dropped 1 ids the challenge does not list: 0453_32" in res.output
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}  {out}" in res.output.splitlines()

    res = CliRunner().invoke(app, ["export", "miga2023", str(scores), "--data", str(tmp_path / "prep"),
                                   "--split", "validation", "--out", str(out)])
    assert res.exit_code == 2
    assert "ids outside split_miga 'validation'" in res.output
