"""Scores: validation and the pickle-free .npz round trip."""
from __future__ import annotations

import numpy as np
import pytest

from migfuse.errors import UserError
from migfuse.fuse.scores import Scores


def _scores() -> Scores:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    return Scores(["0009", "0010", "0012"], probs, "emotion", "test", ["Lose", "Win"])


def test_save_load_round_trip_without_pickle(tmp_path):
    s = _scores()
    path = s.save(tmp_path / "emo")  # ".npz" is appended
    assert path.name == "emo.npz"
    with np.load(path, allow_pickle=False) as z:  # readable without migfuse and without pickle
        assert z["ids"].dtype.kind == "U"
    back = Scores.load(path)
    assert back.ids == ["0009", "0010", "0012"]
    assert back.scores.dtype == np.float32
    np.testing.assert_array_equal(back.scores, s.scores)
    assert (back.task, back.split, back.classes) == ("emotion", "test", ["Lose", "Win"])
    assert back.predictions().tolist() == [0, 1, 0]


def test_rows_and_subset_join_by_id():
    s = _scores()
    np.testing.assert_array_equal(s.rows(["0012", "0009"]), s.scores[[2, 0]])
    assert s.subset(["0010"]).ids == ["0010"]
    with pytest.raises(KeyError, match="0099"):
        s.rows(["0099"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(ids=["a", "a"]), "duplicated: a"),
    (dict(ids=["a"]), "1 ids but 2 score rows"),
    (dict(classes=["x"]), "1 classes but 2 score columns"),
    (dict(task="gesture"), "task must be one of"),
])
def test_invalid_scores_are_refused(kwargs, match):
    args = dict(ids=["a", "b"], scores=np.eye(2), task="emotion", split="", classes=["Lose", "Win"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Scores(**args)


def test_load_missing_garbled_and_foreign_files_give_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="scores file not found"):
        Scores.load(tmp_path / "nope.npz")
    garbled = tmp_path / "garbled.npz"
    garbled.write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="not an .npz scores file"):
        Scores.load(garbled)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(UserError, match=r"not a migfuse scores file \(no ids"):
        Scores.load(foreign)
    dup = tmp_path / "dup.npz"
    np.savez(dup, ids=np.array(["a", "a"]), scores=np.eye(2, dtype=np.float32), task=np.array("mg"),
             split=np.array(""), classes=np.array(["x", "y"]), format_version=np.array(1))
    with pytest.raises(UserError, match="duplicated: a") as e:
        Scores.load(dup)
    assert "\n" not in str(e.value)
