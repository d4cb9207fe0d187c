"""One checkpoint format for every migfuse trainer, saved atomically and loaded weights-only.

A checkpoint is a plain dict of tensors and plain values (so `torch.load(weights_only=True)` reads it
and nothing in it can run code):

    {"format": "migfuse-checkpoint/1", "trainer": "fuse" | "skeleton" | ...,
     "state_dict": model weights,          # the key every migfuse loader reads (extract, fuse predict)
     "optimizer": optimizer.state_dict(),  # {} in best.pt (only last.pt is resumed from)
     "scheduler": scheduler.state_dict(),  # {} in best.pt, or without a scheduler
     "epoch": int,                         # the last finished epoch the weights belong to
     "config": resolved settings (JSON values),
     "meta": {"migfuse": provenance},      # inputs, layout, split... (+ epoch and its metrics in best.pt)
     "versions": {"migfuse", "torch", "python"},
     "loop": {"best": record, "stale": int, "stopped": bool}}   # the loop's own state, for resuming
"""
from __future__ import annotations

import json
import pickle
import re
import platform
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from migfuse.atomic_write import open_atomic
from migfuse.errors import UserError

FORMAT = "migfuse-checkpoint/1"


def versions() -> dict[str, str]:
    """Versions recorded in config.json and every checkpoint."""
    import migfuse

    return {"migfuse": str(migfuse.__version__), "torch": str(torch.__version__), "python": platform.python_version()}


def plain(value: Any) -> Any:
    """`value` as JSON types (tuples -> lists, numpy/torch scalars -> numbers): safe for weights-only loading."""
    return json.loads(json.dumps(value, default=_to_json))


def _to_json(o: Any) -> Any:
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not a plain value")


def make_checkpoint(trainer: str, model: torch.nn.Module, epoch: int, config: Mapping[str, Any],
                    provenance: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, loop: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of the format above (weights on the CPU)."""
    return {
        "format": FORMAT, "trainer": trainer,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "epoch": int(epoch), "config": plain(dict(config)), "meta": {"migfuse": plain(dict(provenance))},
        "versions": versions(), "loop": plain(dict(loop or {})),
    }


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """torch.save `checkpoint` to `path` whole or not at all (`atomic_write`: a full disk or a file-size
    limit is a one-line UserError, and an earlier checkpoint at `path` stays intact)."""
    with open_atomic(path, "wb") as f:
        torch.save(dict(checkpoint), f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A migfuse checkpoint, loaded weights-only on the CPU (never unpickles code).

    UserError (one line, naming `path`) when it is missing, empty or truncated, holds objects other than
    tensors and plain values, or is not in the migfuse checkpoint format."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train first or check the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes; a save was interrupted?); delete it and retrain, "
                        f"or rerun the training with --overwrite")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the object its safe loader refused
        what = f"({named.group(1)})" if named else "(an object torch's safe loader refuses)"
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain values {what}; "
                        f"refused: loading it could run code. Delete it, or rerun the training with --overwrite"
                        ) from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is damaged ({first[:160]}); delete it and retrain, or rerun the "
                        f"training with --overwrite") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("state_dict"), dict):
        raise UserError(f"checkpoint {path} is not a migfuse training checkpoint ({FORMAT}); pass the best.pt "
                        f"of a run folder written by this migfuse version")
    return obj
