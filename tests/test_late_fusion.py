"""Late fusion joins runs by id (the 2s-AGCN #10 trap), refuses differing id sets, weights correctly."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.errors import UserError
from migfuse.fuse.late_fusion import fuse_late, fuse_late_files, parse_weights
from migfuse.fuse.scores import Scores

CLASSES = ["a", "b", "c"]


def _run(ids, probs, split="test") -> Scores:
    return Scores(list(ids), np.asarray(probs, dtype=np.float32), "mg", split, CLASSES)


def _random_run(rng, ids) -> Scores:
    p = rng.random((len(ids), len(CLASSES))) + 0.01
    return _run(ids, p / p.sum(1, keepdims=True))


def test_shuffled_row_order_fuses_like_aligned_order():
    rng = np.random.default_rng(0)
    ids = [f"0001_{k}" for k in range(20)]
    joint, bone = _random_run(rng, ids), _random_run(rng, ids)
    perm = rng.permutation(len(ids))
    bone_shuffled = _run([ids[i] for i in perm], bone.scores[perm])

    aligned = fuse_late([joint, bone], [2, 1]).scores
    shuffled = fuse_late([joint, bone_shuffled], [2, 1]).scores

    assert shuffled.ids == ids  # the first run's order
    np.testing.assert_allclose(shuffled.scores, aligned.scores, rtol=1e-6)
    # and the value is the weighted mean of the rows of the same id
    expected = (2 * joint.scores + bone.scores) / 3
    np.testing.assert_allclose(shuffled.scores, expected, rtol=1e-6)
    # fusing by position would have given something else: the test can tell the two apart
    by_position = (2 * joint.scores + bone_shuffled.scores) / 3
    assert not np.allclose(shuffled.scores, by_position)


def test_log_mode_is_normalised_weighted_geometric_mean():
    a = _run(["x", "y"], [[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    b = _run(["y", "x"], [[0.2, 0.6, 0.2], [0.5, 0.5, 0.0]])  # 0 probability must not give NaN
    fused = fuse_late([a, b], mode="log").scores
    assert fused.ids == ["x", "y"]
    np.testing.assert_allclose(fused.scores.sum(1), 1.0, rtol=1e-6)
    geo_y = np.sqrt(np.array([0.1, 0.1, 0.8]) * np.array([0.2, 0.6, 0.2]))
    np.testing.assert_allclose(fused.scores[1], geo_y / geo_y.sum(), rtol=1e-5)
    assert fused.scores[0, 2] < 1e-5  # class c vetoed by b (its 0 is floored, not -inf)


def test_different_id_sets_are_refused_in_one_line_or_intersected():
    a = _run(["0001_0", "0001_1", "0001_2"], np.full((3, 3), 1 / 3))
    b = _run(["0001_2", "0001_0"], np.full((2, 3), 1 / 3))
    with pytest.raises(UserError, match=r"b.npz and a.npz score different ids: 1 only in a.npz \(e.g. 0001_1\)"):
        fuse_late([a, b], names=["a.npz", "b.npz"])
    result = fuse_late([a, b], intersect=True, names=["a.npz", "b.npz"])
    assert result.scores.ids == ["0001_0", "0001_2"]
    assert result.dropped == {"a.npz": 1, "b.npz": 0}


def test_mismatched_task_classes_and_weights_are_refused():
    a = _run(["x"], [[1, 0, 0]])
    other_classes = Scores(["x"], np.array([[1.0, 0, 0]]), "mg", "test", ["a", "b", "z"])
    with pytest.raises(UserError, match="other classes"):
        fuse_late([a, other_classes])
    with pytest.raises(UserError, match="2 weights for 1 score files"):
        fuse_late([a], [1, 2])
    with pytest.raises(UserError, match="not all 0"):
        fuse_late([a, a], [0, 0])
    assert parse_weights("1,0.5", 2) == [1.0, 0.5]
    assert parse_weights(None, 3) == [1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="one weight per file"):
        parse_weights("1,2,3", 2)
    with pytest.raises(UserError, match="comma-separated"):
        parse_weights("1;2", 2)


def test_fuse_files_and_cli(tmp_path):
    from typer.testing import CliRunner

    from migfuse.cli import app

    rng = np.random.default_rng(1)
    ids = [f"0002_{k}" for k in range(5)]
    a, b = _random_run(rng, ids), _random_run(rng, ids[::-1])
    pa, pb = a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
    lib = fuse_late_files([pa, pb], [1, 3]).scores

    out = tmp_path / "fused.npz"
    res = CliRunner().invoke(app, ["fuse", "late", str(pa), str(pb), "--weights", "1,3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "5 ids" in res.output
    cli = Scores.load(out)
    assert cli.ids == ids and cli.split == "test"
    np.testing.assert_allclose(cli.scores, lib.scores)

    res = CliRunner().invoke(app, ["fuse", "late", str(pa), str(tmp_path / "missing.npz"), "--out", str(out)])
    assert res.exit_code == 2
    assert "scores file not found" in res.output
