"""The one place that imports torchvision (and so timm and facenet-pytorch, which import it).

Why this exists: the PyPI torchvision 0.28.0 wheel is a CUDA build. Its compiled ops library
(`torchvision/_C.so`) links libtorch_cuda, so on a CPU-only torch it cannot load, and
`import torchvision` then dies in `_meta_registrations` with
``RuntimeError: operator torchvision::nms does not exist``. timm and facenet-pytorch import
torchvision at import time, so they die too.

`import_torchvision()` tries the plain import first (on a matching CUDA or CPU build it just works
and nothing is patched). On exactly that failure it declares the `nms`/`qnms` op schemas, gives
`nms` a pure-torch kernel (MTCNN needs it), marks the extension as present and imports again.
Everything else in torchvision that needs compiled ops (roi_align, deform_conv, image decoding)
keeps failing with torchvision's own message; migfuse uses none of it.

Every module in `migfuse.extract` that needs torchvision, timm or facenet-pytorch calls
`import_torchvision()` (or `import_timm()` / `import_facenet()`) first instead of importing them
directly.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from migfuse.errors import UserError

_PATCHED = False


def _nms_kernel(boxes, scores, iou_threshold: float):
    """Greedy NMS in plain torch. boxes (N, 4) xyxy, scores (N,) -> kept indices (K,) int64."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _declare_ops() -> None:
    import torch

    global _PATCHED
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive on the module
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_kernel, "CPU")
    globals()["_LIB"] = lib
    _PATCHED = True


def _drop_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision, patching the CPU-torch + CUDA-torchvision mismatch if needed.

    Raises:
        UserError: torchvision is not installed, or fails for another reason (one line, with the fix).
    """
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "ops"):
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as e:
        if e.name == "torchvision":
            raise UserError(
                "torchvision is not installed: run `bash scripts/install.sh` or `pip install -e .[extract]`"
            ) from None
        raise
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    _drop_partial_import()
    _declare_ops()
    try:
        tv = importlib.import_module("torchvision")
        tv.extension._has_ops = lambda: True
        return tv
    except Exception as e:  # pragma: no cover - depends on the installed wheels
        raise UserError(
            f"torchvision {_installed_version('torchvision')} does not work with torch "
            f"{_installed_version('torch')} ({type(e).__name__}: {str(e).splitlines()[0]}); install the "
            "torchvision that pairs with your torch (torch 2.13.0 -> torchvision 0.28.0)"
        ) from None


def torchvision_patched() -> bool:
    """True when `import_torchvision` had to patch the nms ops (CPU torch with a CUDA torchvision)."""
    return _PATCHED


def import_timm() -> ModuleType:
    """Import timm after making torchvision importable."""
    import_torchvision()
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError:
        raise UserError("timm is not installed: run `bash scripts/install.sh` or `pip install -e .[extract]`") from None


def import_facenet() -> ModuleType:
    """Import facenet_pytorch (installed with --no-deps: its pins are stale)."""
    import_torchvision()
    try:
        return importlib.import_module("facenet_pytorch")
    except ModuleNotFoundError as e:
        missing = e.name or "facenet_pytorch"
        raise UserError(
            f"{missing} is missing for face detection: run `pip install --no-deps facenet-pytorch==2.6.0 requests` "
            "(or `bash scripts/install.sh`)"
        ) from None


def _installed_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"
