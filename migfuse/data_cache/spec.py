"""What a cache group holds: `ArraySpec`, `GroupSpec`, the row status codes, the dimension names of
its arrays, and the provenance comparison that refuses to mix two runs in one group.

Provenance is normalised by a JSON round trip when a `GroupSpec` is made, so what is compared on
reopening is exactly what was stored. No torch, no Zarr: specs are plain data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from migfuse.data_cache.tracks import axis_names_of_group, track_of_group

#: Row status, written last for each row (store.py): never written / interrupted, done, failed.
MISSING, DONE, FAILED = 0, 1, 2
FORMAT_VERSION = 3
_RESERVED = {"ids", "status", "failure", "clip", "video", "rowdef"}


@dataclass(frozen=True)
class ArraySpec:
    """One named per-row array: its per-row `shape` and `dtype` (numpy name).

    With `ragged=True` the first axis is a maximum; each row stores its own length in `<name>_len`
    and is zero-padded on write (zarr v3 has no ragged arrays). `dims` names the per-row axes
    (len(dims) == len(shape)); None lets the group pick them from its track's `axis_names`
    (data_cache/tracks.py).
    """

    shape: tuple[int, ...]
    dtype: str
    ragged: bool = False
    dims: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.ragged and not self.shape:
            raise ValueError("a ragged array needs at least one axis")
        if self.dims is not None:
            object.__setattr__(self, "dims", tuple(str(d) for d in self.dims))
            if len(self.dims) != len(self.shape) or len(set(self.dims)) != len(self.dims):
                raise ValueError(f"dims {self.dims} do not name the {len(self.shape)} "
                                 f"axes of shape {self.shape} once each")

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "ragged": self.ragged,
                **({"dims": list(self.dims)} if self.dims is not None else {})}

    @classmethod
    def from_json(cls, d: Mapping) -> "ArraySpec":
        dims = d.get("dims")
        return cls(tuple(d["shape"]), d["dtype"], bool(d.get("ragged", False)),
                   tuple(dims) if dims is not None else None)


def default_row_dim(group_name: str) -> str:
    """"video" for groups of per-video tracks (context, face_context), else "clip"."""
    track = track_of_group(group_name)
    return "video" if track is not None and track.per_video else "clip"


def _default_dims(group_name: str, name: str, ndim: int) -> tuple[str, ...]:
    """Per-row axis names of array `name` from the track table: its trailing axes, after one leading
    "window" axis when the array has one more axis than listed; "<name>_axis<k>" when not listed."""
    trailing = axis_names_of_group(group_name).get(name)
    if trailing is not None and ndim == len(trailing):
        return trailing
    if trailing is not None and ndim == len(trailing) + 1:
        return ("window", *trailing)
    return tuple(f"{name}_axis{k + 1}" for k in range(ndim))


def name_dims(group_name: str, row_dim: str, arrays: Mapping[str, ArraySpec]) -> dict[str, ArraySpec]:
    """`arrays` with every `dims` filled in, renamed where needed so that one dimension name has
    one size in the whole group (xarray requires it): a clash becomes "<array>_<dim>"."""
    sizes: dict[str, int] = {}
    named: dict[str, ArraySpec] = {}
    for name in sorted(arrays):  # sorted: the same names whatever order a producer lists its arrays in
        a = arrays[name]
        dims = []
        for d, n in zip(a.dims if a.dims is not None else _default_dims(group_name, name, len(a.shape)), a.shape):
            if d == row_dim or sizes.get(d, n) != n:
                d = f"{name}_{d}"
            sizes[d] = n
            dims.append(d)
        named[name] = ArraySpec(a.shape, a.dtype, a.ragged, tuple(dims))
    return {name: named[name] for name in arrays}


@dataclass(frozen=True)
class GroupSpec:
    """What a group holds: its name, row ids, arrays, and the provenance that produced them.

    `provenance` (JSON-able) identifies the producer: backbone, checkpoint sha256, preprocessing,
    frame sampling. Reopening a group with a different one is refused, never mixed. `environment`
    (JSON-able) is recorded in `info` when the group is created and not compared. `row_dim` names
    the row dimension and the id array ("" = `default_row_dim(name)`).
    """

    name: str
    ids: Sequence[str]
    arrays: Mapping[str, ArraySpec]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    clips_per_chunk: int = 1
    row_dim: str = ""
    #: facts about where the group was made that do not change its rows (e.g. a library patched to run
    #: here): recorded in the group's `info` at creation, never compared on reopen
    environment: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or ".." in self.name.split("/"):
            raise ValueError(f"bad group name {self.name!r}")
        ids = [str(i) for i in self.ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"group {self.name}: duplicate ids")
        object.__setattr__(self, "ids", ids)
        for n in self.arrays:
            if n in _RESERVED or n.endswith("_len"):
                raise ValueError(f"group {self.name}: array name {n!r} is reserved")
        row_dim = self.row_dim or default_row_dim(self.name)
        object.__setattr__(self, "row_dim", row_dim)
        object.__setattr__(self, "arrays", name_dims(self.name, row_dim, self.arrays))
        # JSON round trip now, so what is compared later is exactly what was stored.
        object.__setattr__(self, "provenance", json.loads(json.dumps(dict(self.provenance), sort_keys=True)))


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """Dotted key of the first place where two JSON values differ (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{prefix}{k}"
            d = first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".") or "(value)"


def value_at(d: Any, dotted: str) -> Any:
    """The value at a dotted key of nested dicts ("(absent)" where a key is missing)."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "(absent)"
        d = d[part]
    return d


def format_arrays(arrays: Mapping[str, ArraySpec]) -> str:
    """Arrays as one short line, e.g. '{tokens: (9, 768) float16}' (for error messages)."""
    return "{" + ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in sorted(arrays.items())) + "}"
