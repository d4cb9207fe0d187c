"""The pose models of `data pose` (`migfuse.pose_estimation.models`): a transformers person detector and a
ViTPose top-down model, on tiny random-weight folders written by `tiny_models`. Boxes and keypoints equal
transformers' own reference pipeline on the same outputs; constructed detector outputs and heatmaps land
on exactly known frame pixels; every bad folder or value is one line naming it and the fix."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("scipy")
import torch  # noqa: E402

from migfuse.checkpoint_file import folder_sha256  # noqa: E402
from migfuse.errors import UserError  # noqa: E402
from migfuse.pose_estimation.model_folders import import_transformers  # noqa: E402
from migfuse.pose_estimation.models import FramePoses, load_pose_estimator  # noqa: E402
from migfuse.pose_estimation.tiny_models import (DETECTOR_LABELS, write_tiny_detector, write_tiny_models,  # noqa: E402
                                                 write_tiny_pose_model)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny folders: a detector with 3 queries, a COCO-17 ViTPose at 128x96, a ViTPose+ with 2 experts."""
    root = tmp_path_factory.mktemp("pose_models")
    return {"detector": write_tiny_detector(root / "detector", num_queries=3),
            "pose": write_tiny_pose_model(root / "pose", input_size=(128, 96)),
            "plus": write_tiny_pose_model(root / "plus", num_experts=2)}


def _frames(*sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_boxes_and_keypoints_equal_transformers_own_pipeline(folders):
    """The reference: the folders' own processors and models, run on all boxes at once, decoded by
    VitPoseImageProcessor.post_process_pose_estimation with COCO (x, y, w, h) boxes per frame. The
    estimator's torch warp rounds a few pixels the other way (one grey level: see the crop test),
    so its keypoints may move by a few thousandths of a pixel; with the processor's own warp they match."""
    frames = _frames((120, 160), (90, 200), (150, 100))
    estimator = load_pose_estimator(folders["pose"], folders["detector"], batch_size=2)
    poses = estimator(frames)
    estimator.pose.reference = True
    reference_path = estimator(frames)
    tf = import_transformers()

    det_processor = tf.AutoImageProcessor.from_pretrained(folders["detector"], local_files_only=True)
    detector = tf.AutoModelForObjectDetection.from_pretrained(folders["detector"], local_files_only=True).eval()
    with torch.no_grad():
        found = det_processor.post_process_object_detection(
            detector(**det_processor(images=frames, return_tensors="pt")), threshold=0.3,
            target_sizes=[f.shape[:2] for f in frames])
    person = DETECTOR_LABELS.index("person")
    for frame, result, got in zip(frames, found, poses):
        keep = result["labels"] == person
        order = torch.argsort(result["scores"][keep], descending=True, stable=True)
        boxes = result["boxes"][keep][order].numpy()
        boxes = np.clip(boxes, 0, [frame.shape[1], frame.shape[0]] * 2)
        assert len(boxes) == 3
        np.testing.assert_allclose(got.boxes, boxes, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.box_scores, result["scores"][keep][order].numpy(), rtol=0, atol=1e-6)

    pose_processor = tf.AutoImageProcessor.from_pretrained(folders["pose"], local_files_only=True)
    model = tf.VitPoseForPoseEstimation.from_pretrained(folders["pose"], local_files_only=True).eval()
    coco = [[[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in p.boxes.tolist()] for p in poses]
    with torch.no_grad():
        outputs = model(**pose_processor(images=frames, boxes=coco, return_tensors="pt"))
    reference = pose_processor.post_process_pose_estimation(outputs, boxes=coco)
    for got, via_processor, expected in zip(poses, reference_path, reference):
        assert got.keypoints.shape == (3, 17, 2) and got.keypoints.dtype == np.float32
        keypoints = np.stack([e["keypoints"].numpy() for e in expected])
        scores = np.clip(np.stack([e["scores"].numpy() for e in expected]), 0, 1)
        np.testing.assert_allclose(via_processor.keypoints, keypoints, rtol=0, atol=1e-3)
        np.testing.assert_allclose(via_processor.scores, scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.keypoints, keypoints, rtol=0, atol=0.02)
        np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-3)


def test_the_torch_warp_and_decoding_equal_the_processors_on_the_same_inputs(folders):
    """Crops of boxes inside, across and outside the frame's edges: the same uint8 pixels as the
    processor's scipy warp but for values within float32 rounding of .5 (one grey level, ~0.05% of the
    pixels: the interpolation is float32 here, float64 in scipy); decoding the
    same heatmaps (peaks in corners, maps <= 0 included) gives the same points. (A flat map is left out:
    DARK divides by its zero curvature plus 1e-7, so float rounding decides where its point goes.)"""
    from migfuse.pose_estimation import on_device

    tf = import_transformers()
    processor = tf.VitPoseImageProcessor()  # the published folders' 256x192, ImageNet mean/std
    frame = _frames((180, 320))[0]
    boxes = np.array([[60, 20, 80, 150], [280.3, 120.7, 60.2, 70.9], [-10, -20, 50.5, 100.25], [3.5, 7.25, 4, 4]],
                     np.float32)
    expected = processor(images=[frame], boxes=[boxes.tolist()], return_tensors="pt")["pixel_values"]
    centers, scales = on_device.box_geometry(boxes, (256, 192))
    crops = on_device.crop_boxes(torch.from_numpy(frame), centers, scales, (256, 192))
    got = processor.rescale_and_normalize(crops, True, 1 / 255, True, processor.image_mean, processor.image_std)
    level = 1 / 255 / min(processor.image_std)
    differ = (got - expected).abs()
    assert differ.max() <= level * 1.0001 and (differ > 1e-5).sum() < 1e-3 * differ.numel()

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 17, 64, 48, generator=generator) ** 4
    maps[0, 0] = 0.0
    maps[1, 1] = -1.0
    maps[2, 2] = 0.0
    maps[2, 2, 0, 0] = 1.0   # a peak in a corner
    maps[3, 3, 63, 47] = 2.0  # a peak in the opposite corner
    boxes = np.array([[60, 20, 80, 150]] * 3 + [[-10, -20, 50.5, 100.25]] * 3, np.float32)
    reference = processor.post_process_pose_estimation(
        tf.models.vitpose.modeling_vitpose.VitPoseEstimatorOutput(heatmaps=maps), boxes=[boxes])[0]
    centers, scales = on_device.box_geometry(boxes, (256, 192))
    keypoints, scores = on_device.decode(maps, centers, scales, kernel_size=11)
    np.testing.assert_allclose(keypoints, np.stack([r["keypoints"].numpy() for r in reference]), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(scores, np.stack([r["scores"].numpy() for r in reference]))


W, H = 640, 480


def _normalised(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """A box as DETR-style heads give it: centre x, centre y, width, height over the frame size."""
    return [(x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H]


def _set_outputs(estimator, logits: list[list[float]], boxes: list[list[float]], heatmaps: np.ndarray) -> None:
    """Make the detector give these class logits (Q, C) and boxes, and the pose head these heatmaps."""
    def detector_hook(module, args, output):
        frames = output.logits.shape[0]
        output.logits = torch.tensor([logits] * frames, dtype=torch.float32)
        output.pred_boxes = torch.tensor([boxes] * frames, dtype=torch.float32)
        return output

    estimator.detector.model.register_forward_hook(detector_hook)
    estimator.pose.model.head.register_forward_hook(lambda m, a, out: torch.from_numpy(heatmaps[:out.shape[0]]))


def _peaks(cells: dict[tuple[int, int], tuple[int, int]], shape: tuple[int, int, int, int]) -> np.ndarray:
    """Heatmaps (P, K, h, w) with a Gaussian (sigma 1.5 cells, peak 0.9) at cells[(person, k)] = (x, y)."""
    maps = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0:shape[2], 0:shape[3]]
    for (person, k), (x, y) in cells.items():
        maps[person, k] = 0.9 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
    return maps


def test_points_map_back_to_the_frame_exactly_and_the_detector_keeps_persons_by_name(folders):
    """A 640x480 frame; the detector gives a person (logit 2), a bicycle (3), a person reaching past the
    right edge (1) and a person below the threshold (-2). Kept: the two persons, best first, the second
    clipped to the frame. The pose head's peaks are at known cells of its 32x24 heatmaps; the frame
    pixel of cell (x, y) in a box widened to 3:4 and padded by 1.25 (width sw, height sh, centre c) is
    c - s/2 + cell * s / (cells - 1)."""
    estimator = load_pose_estimator(folders["pose"], folders["detector"], box_threshold=0.3)
    person, bicycle = DETECTOR_LABELS.index("person"), DETECTOR_LABELS.index("bicycle")
    logits = [[-9.0] * 3 for _ in range(3)]
    logits[0][person], logits[1][bicycle], logits[2][person] = 2.0, 3.0, 1.0
    boxes = [_normalised(100, 60, 196, 188), _normalised(0, 0, 50, 50), _normalised(560, 200, 680, 440)]
    cells = {(p, k): (3 + k, 4 + k + p) for p in range(2) for k in range(17)}
    _set_outputs(estimator, logits, boxes, _peaks(cells, (2, 17, 32, 24)))

    got = estimator([np.zeros((H, W, 3), np.uint8)])[0]

    np.testing.assert_allclose(got.boxes, [[100, 60, 196, 188], [560, 200, 640, 440]], rtol=0, atol=1e-3)
    np.testing.assert_allclose(got.box_scores, 1 / (1 + np.exp([-2.0, -1.0])), rtol=0, atol=1e-6)
    # person 0: box 96x128 is already 3:4 -> padded 120x160 around (148, 124)
    # person 1: box 80x240 (clipped) is narrower than 3:4 -> 180x240 -> padded 225x300 around (600, 320)
    for p, (cx, cy, sw, sh) in enumerate([(148, 124, 120, 160), (600, 320, 225, 300)]):
        expected = [[cx - sw / 2 + x * sw / 23, cy - sh / 2 + y * sh / 31] for x, y in
                    (cells[p, k] for k in range(17))]
        np.testing.assert_allclose(got.keypoints[p], expected, rtol=0, atol=2e-3)
    np.testing.assert_allclose(got.scores, np.full((2, 17), 0.9), rtol=0, atol=1e-6)
    assert got.keypoints[0, 0].tolist() == pytest.approx([88 + 3 * 120 / 23, 44 + 4 * 160 / 31], abs=2e-3)


def test_max_persons_keeps_the_best_and_an_empty_frame_gives_empty_arrays(folders):
    estimator = load_pose_estimator(folders["pose"], folders["detector"], max_persons=1)
    person = DETECTOR_LABELS.index("person")
    logits = [[-9.0] * 3 for _ in range(3)]
    logits[0][person], logits[1][person] = 1.0, 2.0
    boxes = [_normalised(0, 0, 100, 100), _normalised(200, 100, 300, 300), _normalised(0, 0, 10, 10)]
    _set_outputs(estimator, logits, boxes, _peaks({}, (1, 17, 32, 24)))
    got = estimator([np.zeros((H, W, 3), np.uint8)])[0]
    np.testing.assert_allclose(got.boxes, [[200, 100, 300, 300]], rtol=0, atol=1e-3)

    nobody = load_pose_estimator(folders["pose"], folders["detector"])
    _set_outputs(nobody, [[-9.0] * 3] * 3, boxes, _peaks({}, (1, 17, 32, 24)))
    empty = nobody([np.zeros((H, W, 3), np.uint8)] * 2)
    assert len(empty) == 2
    for poses in empty:
        assert isinstance(poses, FramePoses)
        arrays = (poses.boxes, poses.box_scores, poses.keypoints, poses.scores)
        assert [a.shape for a in arrays] == [(0, 4), (0,), (0, 17, 2), (0, 17)]
        assert {a.dtype for a in arrays} == {np.dtype(np.float32)}


def test_without_a_detector_the_whole_frame_is_the_box(folders):
    estimator = load_pose_estimator(folders["pose"], None)
    cells = {(0, k): (3 + k, 25 - k) for k in range(17)}
    estimator.pose.model.head.register_forward_hook(
        lambda m, a, out: torch.from_numpy(_peaks(cells, (1, 17, 32, 24))).repeat(out.shape[0], 1, 1, 1))
    got = estimator([np.zeros((240, 160, 3), np.uint8), np.zeros((300, 400, 3), np.uint8)])
    assert got[0].boxes.tolist() == [[0, 0, 160, 240]] and got[0].box_scores.tolist() == [1.0]
    assert got[1].boxes.tolist() == [[0, 0, 400, 300]]
    # 160x240 is wider than 3:4 -> 180x240 -> padded 225x300 around (80, 120)
    expected = [[80 - 112.5 + x * 225 / 23, 120 - 150 + y * 300 / 31] for x, y in (cells[0, k] for k in range(17))]
    np.testing.assert_allclose(got[0].keypoints[0], expected, rtol=0, atol=2e-3)


def test_vitpose_plus_runs_the_coco_expert(folders):
    """ViTPose+ (2 experts): the heatmaps are the model's with dataset_index 0 (COCO) for every crop."""
    estimator = load_pose_estimator(folders["plus"], None)
    frames = _frames((64, 48), (80, 60))
    coco = [np.array([[0, 0, 48, 64]], np.float32), np.array([[0, 0, 60, 80]], np.float32)]  # the whole frames
    maps = estimator.pose.heatmaps(frames, coco)
    pixels = estimator.pose.processor(images=frames, boxes=[b.tolist() for b in coco], return_tensors="pt")
    with torch.no_grad():
        expected = estimator.pose.model(pixel_values=pixels["pixel_values"],
                                        dataset_index=torch.zeros(2, dtype=torch.long)).heatmaps
        other = estimator.pose.model(pixel_values=pixels["pixel_values"],
                                     dataset_index=torch.ones(2, dtype=torch.long)).heatmaps
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(maps, other)
    assert estimator.provenance()["dataset_index"] == 0
    assert [p.keypoints.shape for p in estimator(frames)] == [(1, 17, 2)] * 2


def test_provenance_names_the_models_their_sha256_and_the_thresholds(folders):
    estimator = load_pose_estimator(folders["pose"], folders["detector"], box_threshold=0.4, max_persons=2,
                                    batch_size=3)
    prov = estimator.provenance()
    json.dumps(prov)  # it goes into the run's JSON files as it is
    assert [(m["role"], m["model_type"], m["architecture"], m["sha256"], m["licence"]) for m in prov["models"]] == [
        ("detector", "rt_detr", "RTDetrForObjectDetection", folder_sha256(folders["detector"]), "apache-2.0"),
        ("pose", "vitpose", "VitPoseForPoseEstimation", folder_sha256(folders["pose"]), "apache-2.0")]
    assert (prov["layout"], prov["keypoints"], prov["box_threshold"], prov["max_persons"]) == ("coco-17", 17, 0.4, 2)
    assert prov["precision"] == "fp32"
    assert "batch_size" not in prov and "device" not in prov  # they do not change the poses
    assert prov["input_size"] == {"pose": [128, 96], "detector": {"height": 64, "width": 64}}
    assert prov["person_classes"] == [DETECTOR_LABELS.index("person")]
    assert estimator.layout == "coco-17"


def test_bf16_runs_the_forwards_under_autocast_and_decodes_in_float32(folders):
    """--precision bf16: the models' forwards run under autocast (heatmaps come out bf16), the decoding stays
    float32; the poses stay near fp32's and the provenance says bf16 (a resumed run cannot mix them)."""
    import torch

    frames = _frames((120, 160))
    fp32 = load_pose_estimator(folders["pose"], folders["detector"])(frames)[0]
    bf16 = load_pose_estimator(folders["pose"], folders["detector"], precision="bf16")
    seen = []
    bf16.pose.model.register_forward_hook(lambda module, args, out: seen.append(out.heatmaps.dtype))
    got = bf16(frames)[0]
    assert seen == [torch.bfloat16]
    assert got.keypoints.dtype == np.float32 and got.scores.dtype == np.float32
    assert len(got.boxes) == len(fp32.boxes) and np.abs(got.boxes - fp32.boxes).max() < 2.0
    assert bf16.provenance()["precision"] == "bf16"


def test_the_tiny_models_find_one_person_a_frame(tmp_path):
    detector, pose = write_tiny_models(tmp_path)
    assert (detector, pose) == (tmp_path / "tiny-detector", tmp_path / "tiny-vitpose")
    got = load_pose_estimator(pose, detector)(_frames((120, 160), (480, 640)))
    assert [len(p.boxes) for p in got] == [1, 1]
    assert all(p.box_scores[0] > 0.9 for p in got)


# --- bad input: one line naming the path and the fix -------------------------------------------------------

def _copy(src: Path, dst: Path, drop: tuple[str, ...] = (), config: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    if config is not None:
        data = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**data, **config}))
    return dst


def _error(pose, detector, **options) -> str:
    with pytest.raises(UserError) as e:
        load_pose_estimator(pose, detector, **options)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_and_incomplete_folders(folders, tmp_path):
    det, pose = folders["detector"], folders["pose"]
    hub_id = "usyd-community/vitpose-base-simple"
    assert _error(hub_id, det) == (
        f"{hub_id} does not exist: the pose model is a local Hugging Face model folder (config.json + "
        "model.safetensors); get one with `huggingface-cli download usyd-community/vitpose-base-simple --local-dir "
        "DIR` (nothing is downloaded at run time)")
    assert _error(pose, tmp_path / "nope") == (
        f"{tmp_path / 'nope'} does not exist: the person detector is a local Hugging Face model folder (config.json "
        "+ model.safetensors); get one with `huggingface-cli download PekingU/rtdetr_r50vd_coco_o365 --local-dir "
        "DIR` (nothing is downloaded at run time)")
    weights = pose / "model.safetensors"
    assert _error(weights, det) == (
        f"{weights} is not a folder: the pose model takes a local Hugging Face model folder (config.json + "
        "model.safetensors), e.g. from `huggingface-cli download usyd-community/vitpose-base-simple --local-dir DIR`")
    no_weights = _copy(pose, tmp_path / "no_weights", drop=("model.safetensors",))
    assert _error(no_weights, det) == (
        f"{no_weights} has config.json but no weights (model.safetensors): the download is incomplete; run "
        "`huggingface-cli download usyd-community/vitpose-base-simple --local-dir DIR` again")
    no_config = _copy(det, tmp_path / "no_config", drop=("config.json",))
    assert _error(pose, no_config) == (
        f"{no_config} has no config.json, so it is not a Hugging Face model folder: pass the folder "
        "`huggingface-cli download PekingU/rtdetr_r50vd_coco_o365 --local-dir DIR` makes")
    no_processor = _copy(det, tmp_path / "no_processor", drop=("preprocessor_config.json",))
    assert _error(pose, no_processor) == (
        f"{no_processor} has no preprocessor_config.json (the model's input size and normalisation): the download "
        "is incomplete; run `huggingface-cli download PekingU/rtdetr_r50vd_coco_o365 --local-dir DIR` again")


def test_a_damaged_weights_or_processor_file_of_either_model_is_one_line(folders, tmp_path):
    """An interrupted download leaves a truncated model.safetensors (or processor config): one line naming
    the file and saying to download the folder again, not transformers' traceback."""
    det, pose = folders["detector"], folders["pose"]
    cut = _copy(pose, tmp_path / "cut")
    (cut / "model.safetensors").write_bytes((pose / "model.safetensors").read_bytes()[:1000])
    assert _error(cut, det) == (
        f"cannot read {cut / 'model.safetensors'} (SafetensorError: Error while deserializing header: invalid header "
        f"length): download the model folder {cut} again")
    short = _copy(det, tmp_path / "short")
    (short / "model.safetensors").write_bytes((det / "model.safetensors").read_bytes()[:-10])
    assert _error(pose, short) == (
        f"cannot read {short / 'model.safetensors'} (SafetensorError: Error while deserializing header: incomplete "
        f"metadata, file not fully covered): download the model folder {short} again")
    processor = _copy(det, tmp_path / "processor")
    (processor / "preprocessor_config.json").write_text("{")
    assert _error(pose, processor).startswith(
        f"cannot read {processor / 'preprocessor_config.json'} (JSONDecodeError: ")
    assert _error(pose, processor).endswith(f"): download the model folder {processor} again")


def test_wrong_kind_and_unsupported_models(folders, tmp_path):
    det, pose = folders["detector"], folders["pose"]
    assert _error(det, det) == (
        f"{det}/config.json is a rt_detr object detector, not a pose model: give it as the person detector, and as "
        "the pose model a ViTPose folder (e.g. usyd-community/vitpose-base-simple)")
    assert _error(pose, pose) == (
        f"{pose}/config.json is a vitpose pose model, not a person detector: give it as the pose model, and as the "
        "detector an object detection folder (e.g. PekingU/rtdetr_r50vd_coco_o365)")
    video = _copy(pose, tmp_path / "videomae", config={"model_type": "videomae"})
    assert _error(video, det) == (
        f"{video}/config.json is a videomae model, which migfuse does not run as a pose model: pass a ViTPose / "
        "ViTPose+ folder (model_type vitpose, e.g. usyd-community/vitpose-base-simple)")
    assert _error(pose, video) == (
        f"{video}/config.json is a videomae model, not an object detector transformers runs: pass a person detector "
        "folder (e.g. PekingU/rtdetr_r50vd_coco_o365; RT-DETR, DETR, D-FINE and the other AutoModelForObjectDetection "
        "models)")
    no_person = _copy(det, tmp_path / "no_person", config={"id2label": {"0": "bicycle", "1": "car"}})
    assert _error(pose, no_person) == (
        f"{no_person}/config.json has no 'person' class in id2label: pass a detector trained on COCO or Objects365 "
        "(e.g. PekingU/rtdetr_r50vd_coco_o365)")
    hands = write_tiny_pose_model(tmp_path / "hands", num_keypoints=21)
    assert _error(hands, det) == (
        f"{hands}/config.json: the pose head gives 21 keypoints; migfuse names only 17 (coco-17): pass a COCO "
        "ViTPose / ViTPose+ folder (e.g. usyd-community/vitpose-base-simple)")


@pytest.mark.parametrize("options, message", [
    ({"box_threshold": 1.5}, "box threshold 1.5 is not a detector score: give a value from 0 to 1 (0.3 keeps the "
                             "boxes transformers' ViTPose example keeps)"),
    ({"max_persons": 0}, "max persons 0 is not a count: give a whole number of at least 1"),
    ({"batch_size": 2.5}, "batch size 2.5 is not a count: give a whole number of at least 1"),
    ({"precision": "fp64"}, "precision 'fp64' is not one of fp32, bf16, fp16"),
])
def test_bad_values(folders, options, message):
    assert _error(folders["pose"], folders["detector"], **options) == message


def test_a_missing_transformers_names_the_pose_extra(folders, monkeypatch):
    from migfuse.pose_estimation import model_folders

    real = model_folders.importlib.util.find_spec
    monkeypatch.setattr(model_folders.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(UserError) as e:
        model_folders.import_transformers()
    assert str(e.value) == ("transformers is not installed: the pose models need the pose extra "
                            "(`pip install -e .[pose]` or `bash scripts/install.sh extract,pose`)")


def test_importing_the_models_module_loads_neither_torch_nor_transformers():
    """Worker processes of `data pose` import the interface: it stays light (models load in load_pose_estimator)."""
    code = ("import sys, migfuse.pose_estimation.models, migfuse.pose_estimation.tiny_models; "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.strip() == "[]"
