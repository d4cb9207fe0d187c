"""The one place that imports torchvision (and so timm and facenet-pytorch, which import it).

What goes wrong without it: the PyPI torchvision 0.28.0 wheel is a CUDA build. Its compiled ops
library (`torchvision/_C.so`) links libtorch_cuda, so beside a CPU-only torch it does not load, and
`import torchvision` then dies in `torchvision/_meta_registrations.py` (which registers fake kernels
for `torchvision::nms` and `torchvision::qnms`) with
``RuntimeError: operator torchvision::nms does not exist``. timm and facenet-pytorch import
torchvision at import time, so they die too.

When it acts: `import_torchvision()` tries the plain import first. Where the compiled ops load (a
CUDA torch with this wheel, or a CPU torchvision with a CPU torch) nothing is patched. Only on that
exact `torchvision::nms` RuntimeError does it:

1. declare the `torchvision::nms` and `torchvision::qnms` schemas, so `_meta_registrations` can import
   (it needs both names); only `nms` gets a kernel: `_nms_kernel`, greedy NMS in plain torch, CPU;
2. import torchvision again;
3. replace `_assert_has_ops` inside `torchvision.ops.boxes` only, so `torchvision.ops.nms` and
   `batched_nms` (which MTCNN in facenet-pytorch calls) reach that kernel instead of raising
   "Couldn't load custom C++ ops".

What it affects: only NMS. `torchvision.extension._has_ops()` stays False, so every other op that
needs the compiled library (roi_pool, deform_conv, ps_roi_*, image decoding) keeps raising
torchvision's own message, and roi_align keeps its pure-Python fallback. The one other guarded call
in `torchvision.ops.boxes`, `box_iou` with a rotated `fmt`, now fails with "no attribute
'box_iou_rotated'" instead; migfuse uses none of these. `shim_record()` says whether the patch is
active, for provenance.

Every module that needs torchvision, timm or facenet-pytorch calls `import_torchvision()` (or
`import_timm()` / `import_facenet()`) instead of importing them directly.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from migfuse.errors import UserError

_PATCHED = False  # True once import_torchvision() has installed the nms fallback in this process


def _nms_kernel(boxes, scores, iou_threshold: float):
    """Greedy NMS in plain torch, the kernel behind `torchvision::nms` when the compiled op is missing.

    boxes (N, 4) float xyxy, scores (N,) -> kept indices (K,) int64, in decreasing score order.
    Rule (torchvision's documented one): take boxes by decreasing score, keep a box unless it has
    IoU > iou_threshold with a box already kept. Equal scores are taken in index order (stable sort),
    so the result is deterministic.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = torch.sort(scores, descending=True, stable=True).indices
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
        # Two zero-area boxes have union 0: count that as IoU 0 (no suppression), not 0/0.
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _declare_nms() -> None:
    """Declare torchvision::nms (with `_nms_kernel` on CPU) and torchvision::qnms (schema only)."""
    import torch

    global _PATCHED
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # No kernel for qnms (quantized boxes): _meta_registrations only needs the name to exist.
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_kernel, "CPU")
    globals()["_LIB"] = lib  # the definitions live as long as the Library object does
    _PATCHED = True


def _nms_is_declared() -> None:
    """Stands in for torchvision's `_assert_has_ops` inside `torchvision.ops.boxes` only: nms is declared."""


def _drop_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision; where its compiled ops are missing, install the nms fallback first (module doc).

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
    if not _PATCHED:  # a second call after a failed patched import must not define the ops twice
        _declare_nms()
    try:
        tv = importlib.import_module("torchvision")
        # nms and batched_nms look up this name in torchvision.ops.boxes; torchvision.extension._has_ops
        # stays False, so no other op is let through.
        tv.ops.boxes._assert_has_ops = _nms_is_declared
        return tv
    except Exception as e:  # pragma: no cover - depends on the installed wheels
        raise UserError(
            f"torchvision {_installed_version('torchvision')} does not work with torch "
            f"{_installed_version('torch')} ({type(e).__name__}: {str(e).splitlines()[0]}); install the "
            "torchvision that pairs with your torch (torch 2.13.0 -> torchvision 0.28.0)"
        ) from None


def torchvision_patched() -> bool:
    """True when `import_torchvision` had to install the nms fallback (CPU torch with a CUDA torchvision)."""
    return _PATCHED


def shim_record() -> dict[str, str] | None:
    """JSON-able note of the nms fallback for cache provenance; None where torchvision's own op runs.

    MTCNN's face boxes come out of NMS, so a face cache should say which NMS made them: the fallback
    follows the same greedy rule (checked against a brute-force NMS in tests/test_torchvision_shim.py)
    but is a different implementation. Imports torchvision through `import_torchvision()` first, so
    the answer does not depend on whether something imported it earlier.

    Returns:
        {"torchvision_nms": "python fallback (migfuse.backbones._torchvision): compiled op missing",
         "torchvision": torchvision.__version__ (e.g. "0.28.0+cu130")} when the fallback is active, else None.

    Raises:
        UserError: torchvision is not installed or cannot be imported (from `import_torchvision`).
    """
    tv = import_torchvision()
    if not _PATCHED:
        return None
    return {
        "torchvision_nms": "python fallback (migfuse.backbones._torchvision): compiled op missing",
        "torchvision": str(tv.__version__),
    }


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
