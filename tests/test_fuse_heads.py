"""Fusion heads: registry, output shapes, masking semantics, missing-face robustness; numpy metrics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from migfuse.errors import UserError
from migfuse.fuse.heads import list_heads, make_head
from migfuse.fuse.metrics import emotion_metrics, mg_metrics, roc_auc, topk_accuracy

CLIP_SHAPES = {"video": (9, 768), "joint": (14, 256), "bone": (14, 256), "face": (5, 519)}
VIDEO_SHAPES = {"face_context": (3, 4, 519), "context": (3, 2, 768)}


def _batch(shapes, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        out[k] = torch.randn(B, *s, generator=g)
        out[f"{k}_mask"] = torch.ones(B, *s[:-1], dtype=torch.bool)
    return out


@pytest.mark.parametrize("name", ["cmtf", "video", "pose", "face", "interfusion", "context"])
def test_every_head_gives_finite_logits(name):
    assert name in list_heads()
    shapes = VIDEO_SHAPES if name in ("interfusion", "context") else CLIP_SHAPES
    options = {"inputs": ["context"]} if name == "context" else {}
    model = make_head(name, shapes, 7, **options).eval()
    out = model(_batch(shapes))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_a_head_name_is_registered_once_and_an_unknown_one_names_the_choices():
    from migfuse.fuse.heads import FusionHead, head_class, register_head

    assert list_heads() == ["cmtf", "context", "face", "interfusion", "pose", "video"]
    with pytest.raises(ValueError, match="head 'cmtf' is registered twice"):
        register_head("cmtf")(type("OtherHead", (FusionHead,), {}))
    assert head_class("cmtf").__name__ == "CMTF" and head_class("cmtf").name == "cmtf"
    with pytest.raises(UserError, match="unknown head 'nope': "
                                        "choose one of cmtf, context, face, interfusion, pose, video"):
        head_class("nope")


def test_masked_tokens_do_not_change_predictions():
    torch.manual_seed(0)
    model = make_head("cmtf", CLIP_SHAPES, 5).eval()
    b = _batch(CLIP_SHAPES)
    b["joint_mask"][:, 10:] = False
    ref = model(b)
    b["joint"][:, 10:] = 1e3  # garbage in masked positions
    torch.testing.assert_close(model(b), ref)
    b["joint"][:, 0] = torch.randn(3, 256)  # an unmasked change must matter (a constant shift would not: LayerNorm)
    assert not torch.allclose(model(b), ref)


def test_interfusion_handles_videos_without_faces():
    torch.manual_seed(0)
    model = make_head("interfusion", VIDEO_SHAPES, 2).eval()
    b = _batch(VIDEO_SHAPES)
    b["face_context_mask"][0] = False          # no face at all in video 0
    b["face_context_mask"][1, 1:] = False      # faces only in window 0 of video 1
    out = model(b)
    assert torch.isfinite(out).all()
    b["face_context"][0] = 1e3                 # features of absent faces are ignored
    torch.testing.assert_close(model(b)[0], out[0])
    model.train()                               # modality dropout path
    assert torch.isfinite(model(b)).all()


def test_unknown_option_and_missing_input_are_user_errors():
    with pytest.raises(UserError, match="no option 'widht'"):
        make_head("cmtf", CLIP_SHAPES, 32, widht=64)
    with pytest.raises(UserError, match="needs input 'bone'"):
        make_head("cmtf", {"video": (9, 768), "joint": (14, 256)}, 32)


def test_topk_and_mean_class_accuracy():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1, 1])
    assert topk_accuracy(probs, labels, 1) == 0.5 and topk_accuracy(probs, labels, 2) == 1.0
    m = mg_metrics(probs, labels, ["a", "b", "c"])
    assert m["mean_class_accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)  # class c has no samples
    assert m["confusion"] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert m["per_class"][2]["accuracy"] is None


def test_roc_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(scores, np.ones(40, int)))
    m = emotion_metrics(np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]), np.array([1, 1, 0, 0]))
    assert m["accuracy"] == 0.5 and m["f1"] == pytest.approx(0.5)
