"""Evaluation outputs (issue #12 section 4): per-class chart beside the confusion matrix, ROC + AUC for
emotion, `--json` for scripts, on `score` and `fuse eval`; charts are skipped (metrics kept) without
matplotlib."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.datasets.classes import CLASS_NAMES, EMOTION_CLASSES
from migfuse.fuse import metrics, plots
from migfuse.fuse.scores import Scores
from test_export import TEST_IDS, mg_scores, small_manifest

PNG = b"\x89PNG\r\n\x1a\n"


def test_roc_curve_steps_through_every_distinct_score():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 0, 1])
    fpr, tpr = metrics.roc_curve(scores, labels)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    # trapezoid area under these points is the rank AUC (ties half)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(scores, labels))
    assert metrics.roc_curve(scores, np.ones(5, int))[0].size == 0


def test_score_out_writes_metrics_per_class_and_charts_and_json(tmp_path):
    small_manifest(tmp_path / "prep")
    m = small_manifest(tmp_path / "prep")
    npz = mg_scores(m, TEST_IDS, wrong={"0009_0": 3}).save(tmp_path / "s.npz")
    res = CliRunner().invoke(app, ["score", str(npz), "--data", str(tmp_path / "prep"), "--split", "test",
                                   "--out", str(tmp_path / "rep"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n"] == 6 and data["accuracy"] == pytest.approx(5 / 6) and data["top5"] == pytest.approx(5 / 6)
    assert {r["name"]: (r["support"], r["correct"]) for r in data["per_class"]}["touch neck"] == (1, 0)
    assert data["confusion"][11][3] == 1  # the wrong clip: true 11 predicted 3
    for name in ("confusion.png", "per_class.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "rep" / "roc.png").exists()  # mg: no ROC
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["accuracy"] == data["accuracy"]
    csv_lines = (tmp_path / "rep" / "per_class.csv").read_text().splitlines()
    assert csv_lines[0] == "class,name,support,correct,accuracy,precision" and len(csv_lines) == 33


def test_emotion_scores_get_a_roc_chart_with_its_auc(tmp_path):
    m = small_manifest(tmp_path / "prep")
    # test videos: 0054 Win, 0009 Lose, 0453 Lose
    s = Scores(["0054", "0009", "0453"], [[0.3, 0.7], [0.6, 0.4], [0.2, 0.8]], "emotion", "test", EMOTION_CLASSES)
    res = CliRunner().invoke(app, ["score", str(s.save(tmp_path / "e.npz")), "--data", str(tmp_path / "prep"),
                                   "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "ROC-AUC               0.5000" in res.stdout and "roc.png" in res.stdout
    assert (tmp_path / "rep" / "roc.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["roc_auc"] == 0.5
    del m


def test_without_matplotlib_the_metrics_are_written_and_one_warning_names_the_extra(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(plots, "plots_available", lambda: False)
    m = small_manifest(tmp_path / "prep")
    from migfuse.fuse.score import score_file, write_score_files

    files = write_score_files(score_file(mg_scores(m, TEST_IDS).save(tmp_path / "s.npz"), m), tmp_path / "rep")
    assert set(files) == {"metrics", "per_class"}
    assert not (tmp_path / "rep" / "confusion.png").exists()
    assert "migfuse[plots]" in caplog.text


@pytest.mark.parametrize("task", ["mg", "emotion"])
def test_fuse_eval_writes_charts_and_prints_json(tmp_path, monkeypatch, task):
    """`fuse eval` on fixed predictions (the run loading is stubbed: training is tested elsewhere)."""
    import torch

    from migfuse.fuse import evaluate as ev

    names = CLASS_NAMES if task == "mg" else EMOTION_CLASSES
    labels = np.array([4, 31, 4, 11]) if task == "mg" else np.array([1, 0, 0, 1])
    probs = np.eye(len(names), dtype=np.float32)[[4, 31, 2, 11] if task == "mg"
                                                 else [1, 0, 1, 1]] * 0.9 + 0.1 / len(names)
    monkeypatch.setattr(ev, "load_run", lambda run, cache, data: SimpleNamespace(
        task=task, config={"classes": names}, data_differs=lambda split: None))
    monkeypatch.setattr(ev, "predict_split", lambda r, split, allow_missing, labelled_only, runtime=None: (
        SimpleNamespace(labels=torch.from_numpy(labels)), torch.from_numpy(probs)))
    run = tmp_path / "run"
    run.mkdir()
    res = CliRunner().invoke(app, ["fuse", "eval", str(run), "--split", "test", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    out = run / "eval_test"
    expected = {"metrics", "per_class", "confusion", "per_class_chart"} | ({"roc"} if task == "emotion" else set())
    assert set(data["files"]) == expected
    for key in expected - {"metrics", "per_class"}:
        assert open(data["files"][key], "rb").read(8) == PNG
    if task == "mg":
        assert data["top1"] == 0.75 and data["per_class"][4]["accuracy"] == 0.5
    else:
        assert data["accuracy"] == 0.75 and data["roc_auc"] == 0.75
        assert (out / "roc.png").is_file()
    assert json.loads((out / "metrics.json").read_text()) == data
