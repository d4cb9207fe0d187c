"""SwinFace reproduces the original outputs (golden files); MTCNN + alignment on a real photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from golden import golden_state_dict, load_golden
from migfuse.errors import UserError
from migfuse.extract.face.align import ARCFACE_TEMPLATE, align_face, apply_transform, umeyama_similarity
from migfuse.extract.face.detect import FaceDetector, select_main_face
from migfuse.extract.face.extractor import FaceLoader
from migfuse.backbones.registry import create_backbone


def _original_checkpoint(path) -> None:
    """Save the golden weights the way SwinFace's train.py does: four state dicts, first key part stripped."""
    parts: dict = {"epoch": 3, "global_step": 79999, "state_optimizer": {}, "state_dict_softmax_fc": {}}
    for key, value in golden_state_dict("swinface").items():
        head, rest = key.split(".", 1)
        parts.setdefault(f"state_dict_{head}", {})[rest] = value
    torch.save(parts, path)


@pytest.fixture(scope="module")
def swinface_outputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_step_79999_gpu_0.pt"
    _original_checkpoint(path)
    bb = create_backbone("swinface", checkpoint=path)
    _, ref = load_golden("swinface")
    return bb, bb.run(ref["input"]), ref


def test_every_golden_output_is_reproduced(swinface_outputs):
    bb, out, ref = swinface_outputs
    assert bb.key_report is not None and bb.key_report.ok
    compared = 0
    for name, want in ref.items():
        if name == "input" or name.startswith("derived/"):
            continue
        np.testing.assert_allclose(out[name], want, atol=1e-4, rtol=1e-4, err_msg=name)
        compared += 1
    om = [k for k in ref if k.startswith("om/")]
    assert len(om) == 43 and compared == 7 + 43  # 7 feature/logit arrays + every output-dict entry
    # what migfuse stores: the expression branch (TSS 2) and the 7 expression logits
    np.testing.assert_allclose(out["expression_features"], ref["tss_features"][2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["expression_logits"], ref["om/Expression"], atol=1e-4, rtol=1e-4)


def test_expression_shortcut_equals_the_full_model(swinface_outputs):
    bb, out, ref = swinface_outputs
    with torch.inference_mode():
        feat, logits, glob = bb.model.expression(torch.from_numpy(ref["input"]))
    np.testing.assert_allclose(feat.numpy(), ref["tss_features"][2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.numpy(), ref["expression_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(glob.numpy(), ref["global_features"].reshape(2, 768, 49).transpose(0, 2, 1), atol=1e-4)


def test_a_wrong_checkpoint_fails_in_one_line(tmp_path):
    path = tmp_path / "broken.pt"
    sd = {"state_dict_backbone": {"patch_embed.proj.weight": torch.zeros(96, 3, 2, 2)}}
    torch.save(sd, path)
    with pytest.raises(UserError) as err:
        create_backbone("swinface", checkpoint=path)
    assert "broken.pt" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8: a real, public-domain photo with one face


def test_one_face_on_a_real_photo_and_the_aligned_eyes_sit_on_the_template(astronaut):
    faces = FaceDetector().detect(astronaut[None])
    assert len(faces[0]) == 1 and faces[0].probs[0] > 0.99
    (chosen,) = select_main_face(faces)
    landmarks = faces[0].landmarks[chosen]
    m = umeyama_similarity(landmarks, ARCFACE_TEMPLATE)
    eyes = apply_transform(m, landmarks[:2])
    assert np.abs(eyes - ARCFACE_TEMPLATE[:2]).max() < 3.0
    crop = align_face(astronaut, landmarks)
    assert crop.shape == (112, 112, 3)
    # independent check: MTCNN run again on the aligned crop finds the eyes at the template too
    again = FaceDetector(min_face_size=20).detect(np.pad(crop, ((56, 56), (56, 56), (0, 0)))[None])[0]
    assert len(again) >= 1
    eyes_again = again.landmarks[int(np.argmax(again.probs)), :2] - 56
    assert np.linalg.norm(eyes_again - ARCFACE_TEMPLATE[:2], axis=1).max() < 3.0


def test_a_frame_without_a_face_gives_a_masked_entry(astronaut):
    loader = FaceLoader(paths={}, scope="clip", frames=2)
    blank = np.full_like(astronaut, 128)
    crops, mask = loader._faces(np.stack([astronaut, blank]))
    assert mask.tolist() == [True, False]
    assert not crops[1].any()  # nothing stands in for the missing face
