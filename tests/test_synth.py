"""The generated demo dataset: deterministic, real layouts that `prepare` reads back exactly,
video and skeleton in agreement, and a face that MTCNN finds."""
from __future__ import annotations

import hashlib
import json

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.datasets import classes
from migfuse.datasets.manifest import Manifest
from migfuse.datasets.prepare import prepare
from migfuse.datasets.video_facts import video_facts
from migfuse.errors import UserError
from migfuse.synth import generate_dataset
from migfuse.synth.pose import RHAND0

SMALL = dict(videos=4, clips_per_video=2)  # videos 26 (train), 46 (train), 1 (validation), 54 (test)


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _digest(root, pattern: str) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern))}


@pytest.fixture(scope="module")
def miga2025(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "m25", progress=False, **SMALL)


def test_same_seed_same_dataset_other_seed_other_dataset(miga2025, tmp_path):
    again = generate_dataset(tmp_path / "again", progress=False, **SMALL)
    assert _digest(again, "*.csv") == _digest(miga2025, "*.csv")
    assert (again / "ground_truth.json").read_text() == (miga2025 / "ground_truth.json").read_text()
    one = next(miga2025.rglob("0026.mp4"))
    np.testing.assert_array_equal(_frames(next(again.rglob("0026.mp4"))), _frames(one))
    other = generate_dataset(tmp_path / "other", seed=1, progress=False, **SMALL)
    assert (other / "ground_truth.json").read_text() != (miga2025 / "ground_truth.json").read_text()


@pytest.mark.parametrize("layout", ["miga2025", "miga2023", "oulu"])
def test_prepare_reads_back_the_ground_truth(layout, miga2025, tmp_path):
    root = miga2025 if layout == "miga2025" else generate_dataset(tmp_path / layout, layout=layout,
                                                                  progress=False, **SMALL)
    result = prepare(root, tmp_path / "prepared", progress=False)
    assert result.report["layout"] == layout
    m = Manifest.load(tmp_path / "prepared")
    truth = json.loads((root / "ground_truth.json").read_text())
    expected = [c for v in truth["videos"].values() for c in v["clips"]]
    assert sorted(c.clip_id for c in m.clips) == sorted(c["clip_id"] for c in expected)
    for want in expected:
        got = m.clip(want["clip_id"])
        vid = got.video_id
        label_known = layout == "oulu" or truth["videos"][vid]["split_miga"] != "test"
        assert (got.start_frame, got.end_frame) == (want["start_frame"], want["end_frame"])
        assert got.label == (want["label"] if label_known else None)
        subject, win_lose = video_facts(int(vid))
        assert (got.subject, got.win_lose) == (subject, win_lose)
        assert got.split_miga == classes.split_miga(int(vid), 0, subject)
    # every split the demo needs has members
    assert {c.split_miga for c in m.clips} == {"train", "validation", "test"}
    points, mask = m.skeleton("0026")
    assert points.shape == (truth["videos"]["0026"]["n_frames"], 137, 3)
    a, b = truth["videos"]["0026"]["absent_frames"]
    assert not mask[a : b + 1].any() and mask[:a].all()


def test_video_shows_what_the_skeleton_says(miga2025, tmp_path):
    prepare(miga2025, tmp_path / "p", progress=False)
    m = Manifest.load(tmp_path / "p")
    points, _ = m.skeleton("0026")
    frames = _frames(next(miga2025.rglob("0026.mp4")))
    assert len(frames) == len(points)
    skin = np.array([224, 180, 150])
    for clip in m.clips_of_video("0026"):
        t = (clip.start_frame + clip.end_frame) // 2
        x, y = points[t, RHAND0, :2].round().astype(int)  # the right wrist
        assert np.abs(frames[t, y, x].astype(int) - skin).max() < 40, clip
    truth = json.loads((miga2025 / "ground_truth.json").read_text())["videos"]["0026"]
    gone = truth["absent_frames"][0]
    assert frames[gone].std() < 30  # nobody there: background and table only


def test_mtcnn_finds_the_face_and_no_face_when_nobody_is_there(miga2025):
    from migfuse.backbones._torchvision import import_facenet

    mtcnn = import_facenet().MTCNN(keep_all=True, device="cpu")
    frames = _frames(next(miga2025.rglob("0046.mp4")))
    truth = json.loads((miga2025 / "ground_truth.json").read_text())["videos"]["0046"]
    boxes, probs = mtcnn.detect(frames[[5, truth["absent_frames"][0]]])
    assert boxes[0] is not None and len(boxes[0]) == 1 and float(probs[0][0]) > 0.95
    assert boxes[1] is None


def test_errors_are_one_line(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="is not empty"):
        generate_dataset(tmp_path / "full", videos=1, progress=False)
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "o"), "--dataset-layout", "zip"])
    assert res.exit_code == 2 and "Invalid value for '--dataset-layout'" in res.output
    assert "'zip' is not one of 'miga2025', 'oulu', 'miga2023'" in res.output
    # the old spelling still works, with one deprecation line, and still checks the value
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "o"), "--layout", "zip"])
    assert res.exit_code == 2 and res.stderr.splitlines() == [
        "warning: --layout (the dataset layout) is deprecated: use --dataset-layout (the old spelling will be "
        "removed in a later release)", "error: unknown layout 'zip': choose one of miga2025, oulu, miga2023"]
