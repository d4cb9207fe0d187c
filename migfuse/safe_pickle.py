"""Reading pickles made by other tools (mmaction2, pyskl) without running code from them.

    from migfuse.safe_pickle import load_pickle_safely
    data = load_pickle_safely("result.pkl", "test-result pickle")   # UserError naming the file

A pickle can name any function to call while it is read. This restricted unpickler rebuilds only
builtin containers and numbers, numpy arrays/scalars/dtypes and torch tensors (through torch's
weights-only loader, imported only when a pickle holds one); anything else is refused in one line.
Used for other tools' test scores (`fuse import`) and their feature files (`cache import`); it
needs numpy only, so the cache side reads pickles without torch.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from migfuse.errors import UserError

_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray",
             "bool", "slice", "range"}


def _load_storage_safely(data: bytes) -> Any:
    """Stand-in for `torch.storage._load_from_bytes`: the bytes of a pickled tensor's storage are a
    nested torch.save file, read here with torch's weights-only loader instead of a full unpickle."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode` limited to the one use pickle makes of it (no codec lookup by name)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed(module: str, name: str) -> Any:
    """The object a pickle may name, or None when it is not allowed."""
    if module == "builtins" and name in _BUILTINS:
        return getattr(__import__("builtins"), name)
    if (module, name) == ("collections", "OrderedDict"):
        from collections import OrderedDict

        return OrderedDict
    if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles store bytes as encode(str, "latin1")
        return _latin1_bytes
    if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"):
        core = np._core if hasattr(np, "_core") else np.core
        table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                 ("multiarray", "_reconstruct"): core.multiarray._reconstruct,
                 ("multiarray", "scalar"): core.multiarray.scalar,
                 ("numeric", "_frombuffer"): getattr(core.numeric, "_frombuffer", None)}
        return table.get((module.rsplit(".", 1)[-1], name))
    if module == "numpy.dtypes":
        cls = getattr(getattr(np, "dtypes", None), name, None)
        return cls if isinstance(cls, type) and issubclass(cls, np.dtype) else None
    if module.startswith("torch"):
        try:
            import torch
        except ImportError:  # e.g. a laptop install reading a pickle of tensors
            raise _NeedsTorch(f"{module}.{name}") from None

        table = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                 ("torch", "Size"): torch.Size,
                 ("torch.storage", "_load_from_bytes"): _load_storage_safely}
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return table.get((module, name))
    return None


class _Refused(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list (the message is its dotted name)."""


class _NeedsTorch(Exception):
    """A pickle holds torch tensors and torch is not installed (the message is the global's name)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj


def load_pickle_safely(path: str | Path, what: str = "pickle",
                       fix: str = "export the scores as arrays or as a CSV") -> Any:
    """Unpickle `path` rebuilding only builtins, numpy values and torch tensors (see module docstring).

    Raises UserError (one line naming the file and, for a refused object, `fix`) for a missing,
    damaged or refused file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except _Refused as e:
        raise UserError(f"{path} holds {e}, which is not plain data: unpickling it would run code from the "
                        f"file, so it was not read; {fix}") from None
    except _NeedsTorch as e:
        raise UserError(f"{path} holds torch tensors ({e}); reading them needs torch: install it (pip install torch), "
                        f"or save the arrays with numpy") from None
    except pickle.UnpicklingError as e:
        raise UserError(f"cannot read {what} {path} ({e}); is the file complete?") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError, MemoryError) as e:
        raise UserError(f"cannot read {what} {path} ({type(e).__name__}: {str(e)[:120]}); "
                        f"is the file complete?") from None
