"""Reading checkpoint files in their official formats, with one-line errors a user can act on.

Shared by every backbone: open a file safely (`read_checkpoint`, from `migfuse.checkpoint_file`,
re-exported here), hash it, compare a state dict with a model's and report missing / unexpected /
mis-shaped keys in one line.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from migfuse.checkpoint_file import (  # noqa: F401 - re-exported
    TRUST_FLAG, CheckpointFile, as_checkpoint, read_checkpoint, sha256_file,
)
from migfuse.errors import UserError

log = logging.getLogger(__name__)


def weights_provenance(checkpoint: CheckpointFile | str | Path | None, random_seed: int) -> dict[str, str]:
    """How a model's weights were obtained, for cache provenance: a checkpoint's sha256, or the seed
    of the random weights used when no checkpoint was given (said plainly, so nobody mistakes them)."""
    if checkpoint is None:
        return {"weights": f"RANDOM (torch.manual_seed({random_seed})): no --checkpoint given"}
    return {"weights": "checkpoint", "checkpoint_sha256": as_checkpoint(checkpoint).sha256}


def _short(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


@dataclass
class KeyReport:
    """How a state dict fits a model."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (a, b) vs model (c, d)"
    notes: list[str] = field(default_factory=list)  # e.g. "remapped 11 mmaction2 keys"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [f"{len(self.matched)} keys matched"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_short(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} wrong shape: {_short(self.mismatched, 3)}")
        return "; ".join(parts)

    def raise_if_bad(self, path: str | Path, what: str) -> None:
        """Raise a one-line UserError naming the file, the key problems and what file was expected."""
        if not self.ok:
            raise UserError(f"{path} is not a {what} checkpoint: {self.summary()}")


def compare_state_dict(model_sd: Mapping[str, Any], file_sd: Mapping[str, Any]) -> KeyReport:
    """Compare a file's state dict with a model's (keys and shapes)."""
    rep = KeyReport()
    for k, v in file_sd.items():
        if k not in model_sd:
            rep.unexpected.append(k)
        elif not hasattr(v, "shape"):
            rep.mismatched.append(f"{k}: file holds a {type(v).__name__}, not a tensor")
        elif tuple(model_sd[k].shape) != tuple(v.shape):
            rep.mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}")
        else:
            rep.matched.append(k)
    rep.missing = [k for k in model_sd if k not in file_sd]
    return rep


def load_state_dict_checked(module, state_dict: Mapping[str, Any], path: str | Path, what: str) -> KeyReport:
    """Load `state_dict` into `module` strictly; on any misfit raise one line naming the keys."""
    rep = compare_state_dict(module.state_dict(), state_dict)
    rep.raise_if_bad(path, what)
    module.load_state_dict(state_dict, strict=True)
    return rep


def fill_batchnorm_counters(model_sd: Mapping[str, Any], file_sd: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Add the BatchNorm `num_batches_tracked` counters a file lacks (PyTorch before 0.4.1 did not save
    them; the published 2s-AGCN weights are such files). A counter is not a weight: it plays no part
    in an eval forward, and torch's own strict `load_state_dict` of those days accepted such files.
    Only counters of BatchNorm layers whose statistics the file has are filled.

    Returns (the state dict with the counters, how many were filled)."""
    import torch

    out = dict(file_sd)
    filled = 0
    for key in model_sd:
        if key.endswith(".num_batches_tracked") and key not in out:
            layer = key[: -len("num_batches_tracked")]
            if f"{layer}running_mean" in out:
                out[key] = torch.tensor(0, dtype=torch.long)
                filled += 1
    return out, filled


def apply_renames(model_sd: Mapping[str, Any], file_sd: Mapping[str, Any],
                  renames: Sequence[tuple[str, str]]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Rename keys of an older release of the same model (`renames`: regex -> replacement) where the
    model has the new name and the file has only the old one; shapes are checked afterwards by
    `compare_state_dict`, so a wrong guess is reported, never loaded.

    Returns (the state dict, the (old, new) pairs renamed)."""
    out: dict[str, Any] = {}
    done: list[tuple[str, str]] = []
    for key, value in file_sd.items():
        new = key
        if key not in model_sd:
            for pattern, repl in renames:
                candidate = re.sub(pattern, repl, new)
                if candidate != new and candidate in model_sd and candidate not in file_sd:
                    new = candidate
        if new != key:
            done.append((key, new))
        out[new] = value
    return out, done
