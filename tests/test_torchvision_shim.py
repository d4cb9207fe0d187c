"""The torchvision shim (migfuse/backbones/_torchvision.py): its Python NMS keeps exactly the boxes a
brute-force greedy NMS keeps, it lets only NMS through, and `shim_record()` says when it is active.

On this project's CPU machines the PyPI torchvision (a CUDA build) cannot load its compiled ops, so the
shim is active; where torchvision's own op loads, the tests that need the shim skip.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from migfuse.backbones._torchvision import _nms_kernel, import_torchvision, shim_record

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def brute_force_nms(boxes: list[list[float]], scores: list[float], iou_threshold: float) -> list[int]:
    """Greedy NMS by the book: boxes by decreasing score (equal scores by index), keep a box, drop
    every later box whose IoU with it is > iou_threshold. Plain Python floats; IoU 0 when the union is 0."""
    def iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep, dropped = [], set()
    for pos, i in enumerate(order):
        if i in dropped:
            continue
        keep.append(i)
        dropped.update(j for j in order[pos + 1:] if iou(boxes[i], boxes[j]) > iou_threshold)
    return keep


def random_boxes(seed: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """(n, 4) xyxy boxes in a 100x100 frame, clustered so that many overlap."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 60
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 40 + 1
    return torch.cat([xy, xy + wh], dim=1)


def kept(boxes: torch.Tensor, scores: torch.Tensor, t: float) -> list[int]:
    out = _nms_kernel(boxes, scores, t)
    assert out.dtype == torch.int64
    return out.tolist()


@pytest.fixture(scope="module")
def shim_active() -> bool:
    """Whether torchvision's compiled nms is missing here, asked of a fresh interpreter (not of the shim)."""
    probe = "import torchvision"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    return r.returncode != 0 and "operator torchvision::nms does not exist" in r.stderr


@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_python_nms_keeps_what_brute_force_greedy_nms_keeps(seed, t):
    boxes = random_boxes(seed, 60)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    assert kept(boxes, scores, t) == brute_force_nms(boxes.tolist(), scores.tolist(), t)


@pytest.mark.parametrize("t", THRESHOLDS)
def test_equal_scores_are_taken_in_index_order(t):
    boxes = random_boxes(3, 80)
    scores = torch.randint(0, 4, (80,), generator=torch.Generator().manual_seed(7)).double() / 4  # 4 levels
    assert kept(boxes, scores, t) == brute_force_nms(boxes.tolist(), scores.tolist(), t)


def test_float32_boxes_as_mtcnn_passes_them():
    boxes = random_boxes(4, 100, dtype=torch.float32)
    scores = torch.rand(100, generator=torch.Generator().manual_seed(8))
    for t in (0.5, 0.7):  # the thresholds MTCNN uses
        assert kept(boxes, scores, t) == brute_force_nms(boxes.tolist(), scores.tolist(), t)


def test_an_iou_equal_to_the_threshold_does_not_suppress():
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 1]], dtype=torch.float64)  # IoU = 2 / 4, exact in binary
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert kept(boxes, scores, 0.5) == [0, 1] == brute_force_nms(boxes.tolist(), scores.tolist(), 0.5)
    assert kept(boxes, scores, 0.49) == [0] == brute_force_nms(boxes.tolist(), scores.tolist(), 0.49)


def test_zero_area_boxes_do_not_suppress_each_other():
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 3, 3]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    assert kept(boxes, scores, 0.0) == [0, 1, 2] == brute_force_nms(boxes.tolist(), scores.tolist(), 0.0)


def test_no_boxes_keep_nothing():
    out = _nms_kernel(torch.empty(0, 4), torch.empty(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    assert brute_force_nms([], [], 0.5) == []


def test_batched_nms_through_torchvision_keeps_the_greedy_boxes_of_each_class(shim_active):
    """What MTCNN calls (torchvision.ops.boxes.batched_nms); torchvision's own op where it loads."""
    tv = import_torchvision()
    boxes = random_boxes(5, 90)
    scores = torch.rand(90, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    classes = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(10))
    expected = []
    for c in range(3):
        idx = [i for i in range(90) if classes[i] == c]
        expected += [idx[k] for k in brute_force_nms(boxes[idx].tolist(), scores[idx].tolist(), 0.5)]
    expected.sort(key=lambda i: -scores[i].item())
    assert tv.ops.boxes.batched_nms(boxes, scores, classes, 0.5).tolist() == expected
    assert tv.ops.nms(boxes, scores, 0.5).tolist() == brute_force_nms(boxes.tolist(), scores.tolist(), 0.5)


def test_the_shim_lets_only_nms_through(shim_active):
    if not shim_active:
        pytest.skip("torchvision's compiled ops load here: the shim is not installed")
    tv = import_torchvision()
    assert tv.extension._has_ops() is False
    x = torch.randn(1, 2, 8, 8)
    rois = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    assert tv.ops.roi_align(x, rois, 2).shape == (1, 2, 2, 2)  # torchvision's pure-Python fallback
    with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):  # torchvision's own message
        tv.ops.roi_pool(x, rois, 2)


def test_shim_record_describes_the_patch_as_json_when_it_is_active(shim_active):
    record = shim_record()
    if not shim_active:
        assert record is None
        return
    tv = import_torchvision()
    assert record == {
        "torchvision_nms": "python fallback (migfuse.backbones._torchvision): compiled op missing",
        "torchvision": tv.__version__,
    }
    assert json.loads(json.dumps(record)) == record
