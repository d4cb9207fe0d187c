"""Reading checkpoint files without running code from them: the one reader of every `.pt`/`.pth`.

    from migfuse.checkpoint_file import CheckpointFile, read_checkpoint
    state = read_checkpoint("best.pt")                 # weights-only; UserError naming the file
    ckpt = CheckpointFile("best.pt", trusted=runtime.trust_checkpoint)
    ckpt.contents, ckpt.sha256                         # each read / hashed once, however often asked

A checkpoint is a pickle, and a pickle can name any function to call while it is read.
`read_checkpoint` loads with torch's weights-only unpickler plus an allow-list of the plain values
official checkpoints hold; everything else needs the user's explicit `--trust-checkpoint`, which
travels with the call (`trusted=`, from `Runtime.trust_checkpoint`), never through a global. It
lives at the top of the package, importing torch only when called, so backbones, extract, fuse and
the shared training code all use it without importing each other.
"""
from __future__ import annotations

import hashlib
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from migfuse.errors import UserError

log = logging.getLogger(__name__)

#: The flag that lets `read_checkpoint` unpickle a file fully (named in every refusal).
TRUST_FLAG = "--trust-checkpoint"

def _numpy_safe_globals() -> list:
    """The numpy objects official checkpoints hold in their metadata, allowed by the safe loader.

    mmcv/mmengine (mmaction2 0.x and 1.x) write `meta` dicts whose numbers can be numpy scalars
    (`hook_msgs.best_score` is a numpy.float64) or small arrays; pickles name them under
    `numpy.core` (numpy 1.x) or `numpy._core` (numpy 2). The array rebuilder, the scalar
    constructor, `ndarray`, `dtype` and the dtype classes of `numpy.dtypes` build plain values and
    call nothing else (an object array's items are unpickled by the same safe loader);
    `collections.OrderedDict`, tuples, sets and the other builtin containers are allowed by torch
    already.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    # numpy >= 1.25 pickles a dtype's class under numpy.dtypes (e.g. numpy.dtypes.Float64DType)
    for name in dir(getattr(np, "dtypes", None) or object()):
        cls = getattr(np.dtypes, name, None)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed.append((cls, f"numpy.dtypes.{name}"))
    return allowed


# What torch's weights-only unpickler says when it refuses an object (as opposed to bytes it cannot parse).
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)")
_REFUSED_OTHER = ("unrecognized function", "allowlisted via")


def read_checkpoint(path: str | Path, trusted: bool = False) -> Any:
    """Load a checkpoint file on CPU without running code from it; one-line errors naming the file.

    Every checkpoint migfuse reads goes through here. The file is read with torch's weights-only
    unpickler, which rebuilds tensors, builtin containers/numbers/strings and the numpy values
    that official checkpoints keep in their metadata (`_numpy_safe_globals`), and refuses any
    other object: unpickling one would run code named by the file.

    Args:
        path: a `torch.save` file (.pt/.pth, zip or legacy format).
        trusted: unpickle the file fully, objects of any class included. Only for files the user
            vouched for: migfuse passes True only when the user gave `--trust-checkpoint`
            (`Runtime.trust_checkpoint`).
    Returns:
        The unpickled object (usually a dict of tensors, or a dict holding one).
    Raises:
        UserError: missing, empty, cut-short or foreign file ("download it again"); a file
            holding other objects (names the object, the file and `--trust-checkpoint`).
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p} (pass the path of a local checkpoint file)")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes): the download or copy failed; download it again")
    try:
        if trusted:
            log.warning("%s: unpickling fully because %s was given: this runs any code the file names", p, TRUST_FLAG)
            return torch.load(p, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _REFUSED_GLOBAL.search(str(e))
        if not trusted and (refused or any(text in str(e) for text in _REFUSED_OTHER)):
            what = refused.group(1) if refused else "an object the safe loader does not rebuild"
            raise UserError(
                f"checkpoint {p} holds {what}, which is not weights or plain data: unpickling it would run code "
                f"from the file, so it was not loaded. If you trust where the file comes from, pass {TRUST_FLAG}; "
                "otherwise ask for a plain state-dict file"
            ) from None
        raise _damaged(p, e) from None
    except Exception as e:  # noqa: BLE001 - a cut-short or foreign file, reported in one line
        raise _damaged(p, e) from None


def _damaged(p: Path, e: BaseException) -> UserError:
    # torch's own messages run on for lines; their first sentence says what broke
    detail = (str(e).splitlines() or [""])[0].split(". ")[0][:160] or "no detail"
    return UserError(
        f"cannot read checkpoint {p}: {type(e).__name__}: {detail} (the file is cut short, damaged or not a PyTorch "
        ".pt/.pth file: download it again, and check its sha256 against the published one)"
    )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def folder_sha256(folder: str | Path) -> str:
    """One sha256 for a model folder (a Hugging Face checkpoint): of the sorted lines "<name> <sha256>\\n"
    of its *.json and *.safetensors files (config, processor config, weights), so a changed weight or
    recipe changes it and a changed README does not."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    return hashlib.sha256("".join(f"{n} {sha256_file(folder / n)}\n" for n in names).encode()).hexdigest()


class CheckpointFile:
    """A checkpoint file that is read and hashed at most once, however many parts of a command ask.

    An extractor asks a checkpoint several things before its model exists (the token width of a
    fine-tuned run, the layout a skeleton run was trained with, the sha256 for the cache's
    provenance), and the backbone then loads its weights: one `CheckpointFile` serves them all.

    A folder is taken too (a Hugging Face model folder, which the backbones that read one open
    themselves): its `sha256` is `folder_sha256`, and its `contents` are refused in one line.

    Raises (at construction):
        UserError: the path does not exist.
    """

    def __init__(self, path: str | Path, trusted: bool = False):
        self.path = Path(path)
        self.trusted = bool(trusted)
        if not (self.path.is_file() or self.path.is_dir()):
            raise UserError(f"checkpoint not found: {self.path} (pass the path of a local checkpoint file)")

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def contents(self) -> Any:
        """The unpickled file (`read_checkpoint`, weights-only unless `trusted`)."""
        if self.is_folder:
            raise UserError(f"checkpoint {self.path} is a folder: this backbone takes one checkpoint file (only the "
                            "Hugging Face backbones, videomae and vjepa2, read a model folder); pass the file")
        return read_checkpoint(self.path, trusted=self.trusted)

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def sha256(self) -> str:
        return folder_sha256(self.path) if self.is_folder else sha256_file(self.path)

    def release(self) -> None:
        """Forget the unpickled contents once a model holds the weights (a SwinFace or MViTv2-S file
        would otherwise stay in memory a second time for the whole run); the sha256 is kept."""
        self.__dict__.pop("contents", None)

    def __repr__(self) -> str:
        return f"CheckpointFile({str(self.path)!r}{', trusted' if self.trusted else ''})"

    def __str__(self) -> str:
        return str(self.path)


def as_checkpoint(checkpoint: "CheckpointFile | str | Path", trusted: bool = False) -> CheckpointFile:
    """`checkpoint` as a CheckpointFile (a path is opened with `trusted`; a CheckpointFile is kept)."""
    return checkpoint if isinstance(checkpoint, CheckpointFile) else CheckpointFile(checkpoint, trusted)
