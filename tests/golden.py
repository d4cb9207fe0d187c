"""Rebuild the golden checkpoints of the shared folder's golden/ from their key lists and the parameter rule.

The folder is found by tests/shared_paths.py (../shared/golden, or $MIGFUSE_SHARED/golden); see its
README.md: every key gets its own torch generator seeded with
crc32(salt + key); the value depends on the key's `kind`. `derived` keys come from the npz.
"""
from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict

import numpy as np
import torch

from shared_paths import GOLDEN, require


def rule_tensor(key: str, shape, kind: str, salt: str, fanin: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32((salt + key).encode()))
    shape = tuple(shape)
    if kind == "running_var":
        return torch.rand(shape, generator=g) + 0.5
    if kind == "running_mean":
        return torch.randn(shape, generator=g) * 0.1
    if kind == "norm_weight":
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if kind == "param":
        if fanin and len(shape) >= 2:
            scale = 0.5 / math.sqrt(math.prod(shape[1:]))
            return torch.randn(shape, generator=g) * scale
        return 0.02 * torch.randn(shape, generator=g)
    raise ValueError(f"no rule for kind {kind!r} ({key})")


def load_golden(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(json meta, npz arrays) of golden set `name`, e.g. 'mvit_v2_s' or 'agcn_ntu_fanin'."""
    require(GOLDEN, "the golden files")
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    with np.load(GOLDEN / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def golden_state_dict(name: str) -> "OrderedDict[str, torch.Tensor]":
    """The ORIGINAL model's full state dict (original key names), rebuilt by the rule."""
    meta, arrays = load_golden(name)
    salt = meta["salt"]
    fanin = "fanin" in salt
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape, dtype, kind in meta["keys"]:
        if kind == "derived":
            if f"derived/{key}" in arrays:
                sd[key] = torch.from_numpy(np.array(arrays[f"derived/{key}"]))
            elif key.endswith("num_batches_tracked"):
                sd[key] = torch.tensor(0, dtype=torch.int64)
            else:
                sd[key] = None  # computed by the model itself; the caller decides
            continue
        t = rule_tensor(key, shape, kind, salt, fanin)
        sd[key] = t.to(getattr(torch, dtype.replace("torch.", ""))) if dtype else t
    return sd
