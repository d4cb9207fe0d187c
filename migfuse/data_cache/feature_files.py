"""Feature files made by other tools, read as (id, array) rows plus what the file says about time.

    source = read_feature_file("i3d.h5")            # FeatureFile: rows, sha256, fps / stride if stated
    source.rows[0]                                 # ("0001_3", (T, D) or (D,) numeric array)

Formats (chosen by the path):
  folder of .npy  video_features' layout: `<id>.npy`, or `<id>_<feature_type>.npy` (0001_rgb.npy,
                  0001_flow.npy: one type is taken, `feature_type` picks among several); its sidecars
                  `<id>_fps.npy` and `<id>_timestamps_ms.npy` say when each feature row was taken
  .npz            one array per id, or one stacked (N, ...) array plus an id array (`ids`, `names`...)
  .h5 / .hdf5     the same two layouts as datasets (at the root or in its one group), or one group
                  per id holding one dataset; root attributes `fps` / `stride` state the time axis
  .pkl / .pickle  mmaction2's feature extraction output: a list of arrays (one per sample of the
                  annotation file it ran on: `ids` must be given) or a dict id -> array; a row may be a
                  dict holding its features (`feature`, `pred_score`, ...); a folder of `<id>.pkl`
                  files (one per video) too. Read with the restricted unpickler
                  (migfuse/safe_pickle.py): a pickle that names code is refused

A stacked array without ids takes `ids` (the annotation order) too. Arrays must be numeric: object,
string and compound arrays are refused in one line naming the file. No torch, no Zarr; h5py is
imported only for HDF5 files (the `import-hdf5` extra).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from migfuse.checkpoint_file import sha256_file
from migfuse.errors import UserError
from migfuse.progress_bar import progress_bar

#: Names of an id array beside one stacked feature array (npz, HDF5, pickle dict).
ID_KEYS = ("ids", "id", "names", "keys", "video_ids", "clip_ids", "video_id", "clip_id", "video_names")
#: Scalars that state the time axis of per-video features instead of being features.
TIME_KEYS = ("fps", "stride")
#: Where a pickled dict keeps its features (mmaction2 feature extraction; 1.0 rc: pred_scores.item).
FEATURE_KEYS = ("feature", "features", "feat", "pred_score", "pred_scores")
#: video_features' sidecar files beside each video's features.
SIDECARS = ("fps", "timestamps_ms")
SUFFIXES = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".pkl": "pickle", ".pickle": "pickle"}
_FEATURE_TYPE = re.compile(r"^(?P<id>.+)_(?P<type>[A-Za-z][A-Za-z0-9]*)$")  # 0001_rgb; never 0001_3


@dataclass
class FeatureFile:
    """What a feature file holds: `rows` (id, numeric array) in file order, duplicates kept (the
    importer refuses them with the list), the sha256 of the file (of a folder: of its files' names and
    sha256s), and the time axis as the file states it (`fps` features per second, `stride` frames
    between features, `timestamps_ms` per id)."""

    path: Path
    format: str
    rows: list[tuple[str, np.ndarray]]
    sha256: str
    files: int = 1
    feature_type: str | None = None
    fps: float | None = None
    stride: float | None = None
    timestamps_ms: dict[str, np.ndarray] = field(default_factory=dict)


def read_feature_file(path: str | Path, ids: Sequence[str] | None = None,
                      feature_type: str | None = None) -> FeatureFile:
    """Read a feature file or folder (module docstring) into a `FeatureFile`.

    `ids`: the row ids of a list of arrays (a pickle) or of one stacked array without an id array, in
    order. `feature_type`: which `<id>_<type>.npy` files of a folder to take.

    Raises:
        UserError: a missing path, an unknown format, a damaged file, a pickle naming code, an object /
            string / compound array, ids given to a file that has its own, or rows without ids.
    """
    path = Path(path)
    if (path / "zarr.json").is_file():
        raise UserError(f"{path} is a token cache, not a feature file: did you swap CACHE and SOURCE?")
    if path.is_dir():
        if not any(path.glob("*.npy")) and any(path.glob("*.pkl")):
            return _read_pkl_folder(path, ids)
        return _read_npy_folder(path, ids, feature_type)
    if not path.is_file():
        raise UserError(f"feature file not found: {path}")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown feature file type {path.suffix!r}; give a folder of .npy files, "
                        f"a .npz, .h5/.hdf5 or .pkl file")
    if feature_type is not None:
        raise UserError(f"--feature-type is for folders of <id>_<type>.npy files; {path} is one {fmt} file")
    digest = sha256_file(path)
    if fmt == "npz":
        arrays = _read_npz(path)
        out = FeatureFile(path, fmt, [], digest)
    elif fmt == "hdf5":
        arrays, attrs = _read_hdf5(path)
        out = FeatureFile(path, fmt, [], digest, fps=attrs.get("fps"), stride=attrs.get("stride"))
    else:
        data = _read_pickle(path, ids)
        if isinstance(data, list):  # a list of arrays in the order of `ids`
            return FeatureFile(path, fmt, [(i, numeric(v, path, i)) for i, v in data], digest)
        arrays, out = data, FeatureFile(path, fmt, [], digest)
    for key in TIME_KEYS:  # a scalar `fps` / `stride` entry of an npz or pickle dict
        value = arrays.get(key)
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            setattr(out, key, float(arrays.pop(key)))
    out.rows = _rows(arrays, path, ids)
    return out


# ----- checks ----------------------------------------------------------------------------------------
def numeric(value: Any, path: Path, key: str) -> np.ndarray:
    """`value` as a numeric numpy array (int, uint or float); UserError naming the file and the entry
    for an object, string, bool or compound array (or anything that is no array)."""
    if type(value).__module__.startswith("torch") and hasattr(value, "numpy"):  # a tensor in a pickle
        value = value.detach().cpu().numpy()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = np.asarray(value)  # an HDF5 string dataset that is not the id array
    if not isinstance(value, np.ndarray):
        raise UserError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array of features; "
                        f"store one numeric array per id")
    if value.dtype.kind not in "iuf":
        what = {"O": "an object array", "U": "a string array", "S": "a byte-string array", "V": "a compound array",
                "b": "a bool array"}.get(value.dtype.kind, f"a {value.dtype} array")
        raise UserError(f"{path}: entry {key!r} is {what}; features must be numbers (float or int): save them "
                        f"as a numeric array (e.g. float32)")
    return value


def _id_array(value: Any) -> list[str] | None:
    """An id array's ids as strings (a 1-D array of str or bytes, or a list of str), else None."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "USO":
        items = [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        if all(isinstance(v, str) for v in items):
            return items
    return None


def _rows(arrays: Mapping[str, Any], path: Path, ids: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """(id, array) rows of a mapping: one stacked array beside an id array (or `ids`), else one
    entry per id."""
    id_keys = [k for k in arrays if k in ID_KEYS and _id_array(arrays[k]) is not None]
    data = [k for k in arrays if k not in id_keys]
    if id_keys:
        if ids is not None:
            raise UserError(f"{path} holds its own ids ({id_keys[0]!r}); drop --ids")
        if len(id_keys) > 1 or len(data) != 1:
            raise UserError(f"{path} holds the id array {id_keys[0]!r} beside {len(data)} arrays "
                            f"({', '.join(data[:4]) or 'none'}); it must hold one stacked feature array "
                            f"(N, ...) beside one id array")
        return _stacked(_id_array(arrays[id_keys[0]]), numeric(arrays[data[0]], path, data[0]), path, data[0])
    if ids is not None:
        if len(data) != 1:
            raise UserError(f"{path} holds {len(data)} arrays ({', '.join(data[:4])}); --ids names the rows of "
                            f"one stacked array: drop --ids (each entry is then one id)")
        return _stacked(list(ids), numeric(arrays[data[0]], path, data[0]), path, data[0])
    return [(str(k), numeric(v, path, str(k))) for k, v in arrays.items()]


def _stacked(ids: list[str], x: np.ndarray, path: Path, key: str) -> list[tuple[str, np.ndarray]]:
    if x.ndim < 2 or x.shape[0] != len(ids):
        raise UserError(f"{path}: the stacked array {key!r} has shape {x.shape} for {len(ids)} ids; "
                        f"it must be (N, ...) with one row per id")
    return [(i, x[k]) for k, i in enumerate(ids)]


# ----- formats ---------------------------------------------------------------------------------------
def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: _load_member(z, k, path) for k in z.files}
    except UserError:
        raise
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError: a damaged or truncated file
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); is the file complete?") from None


def _load_member(z: Any, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path}: entry {key!r} is an object array (a pickle inside the file, which could run "
                            f"code); save the features as numeric arrays") from None
        raise


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path} is an object array (a pickle, which could run code); save the features as "
                            f"a numeric array") from None
        raise UserError(f"cannot read {path} ({str(e)[:120]}); is the file complete?") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({str(e)[:120]}); is the file complete?") from None


def _read_npy_folder(folder: Path, ids: Sequence[str] | None, feature_type: str | None) -> FeatureFile:
    if ids is not None:
        raise UserError(f"--ids is for pickles and stacked arrays; the files of {folder} are named by id")
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise UserError(f"{folder} holds no .npy files; give a folder of <id>.npy or <id>_<type>.npy files")
    features = [p for p in files if not p.stem.endswith(tuple(f"_{s}" for s in SIDECARS))]
    typed = {p: _FEATURE_TYPE.match(p.stem) for p in features}
    types = sorted({m["type"] for m in typed.values() if m})
    if feature_type is None and types and all(typed[p] for p in features):
        if len(types) > 1:
            raise UserError(f"{folder} holds several feature types ({', '.join(types)}); pick one with "
                            f"--feature-type {types[0]}")
        feature_type = types[0]
    if feature_type is not None:
        features = [p for p in features if typed[p] and typed[p]["type"] == feature_type]
        if not features:
            raise UserError(f"{folder} holds no <id>_{feature_type}.npy files (types there: "
                            f"{', '.join(types) or 'none'}); fix --feature-type")
    id_of = {p: (typed[p]["id"] if feature_type is not None else p.stem) for p in features}
    rows, timestamps, rates, listing = [], {}, set(), []
    for p in progress_bar(features, desc=f"read {folder.name}", unit="file"):
        rows.append((id_of[p], numeric(_read_npy(p), p, id_of[p])))
        listing.append(f"{p.name} {sha256_file(p)}")
        ts, fps = folder / f"{id_of[p]}_timestamps_ms.npy", folder / f"{id_of[p]}_fps.npy"
        if ts.is_file():
            timestamps[id_of[p]] = numeric(_read_npy(ts), ts, "timestamps_ms").astype(np.float64).reshape(-1)
        if fps.is_file():
            rates.add(float(numeric(_read_npy(fps), fps, "fps").reshape(-1)[0]))
    if len(rates) > 1:
        raise UserError(f"{folder}: the <id>_fps.npy files state {len(rates)} different rates "
                        f"({', '.join(map(str, sorted(rates)[:4]))}); give the features' rate with --fps")
    digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    return FeatureFile(folder, "npy folder", rows, digest, files=len(features), feature_type=feature_type,
                       fps=rates.pop() if rates else None, timestamps_ms=timestamps)


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    try:
        import h5py
    except ImportError:
        raise UserError(f"reading {path} needs h5py, which is not installed here: install the import-hdf5 extra: "
                        f"bash scripts/install.sh fuse,import-hdf5 (or pip install 'migfuse[import-hdf5]')") from None
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: float(f.attrs[k]) for k in TIME_KEYS if k in f.attrs and np.ndim(f.attrs[k]) == 0}
            node = f
            members = list(node.values())
            if len(members) == 1 and isinstance(members[0], h5py.Group):
                node = members[0]  # everything under one group, e.g. /features/<id>
            arrays: dict[str, Any] = {}
            for key, item in progress_bar(node.items(), total=len(node), desc=f"read {path.name}", unit="entry"):
                if isinstance(item, h5py.Group):  # one group per id holding its one dataset
                    inner = [v for v in item.values() if isinstance(v, h5py.Dataset)]
                    if len(inner) != 1:
                        raise UserError(f"{path}: group {item.name!r} holds {len(inner)} datasets; an id's group "
                                        f"must hold one (or store one dataset per id)")
                    item = inner[0]
                arrays[key] = _read_dataset(item, path, h5py)
            return arrays, attrs
    except UserError:
        raise
    except Exception as e:  # OSError: not an HDF5 file / truncated
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); is it a complete HDF5 file?") \
            from None


def _read_dataset(ds: Any, path: Path, h5py: Any) -> Any:
    """A dataset's values: ids (strings) as a list of str, numbers as an array; anything else refused."""
    if h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind == "S":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()].reshape(-1).tolist()]
    if ds.dtype.kind not in "iuf":
        raise UserError(f"{path}: dataset {ds.name!r} has dtype {ds.dtype} (objects or compound records); "
                        f"features must be numbers: store them as float32")
    return ds[()]


def _read_pickle(path: Path, ids: Sequence[str] | None) -> dict[str, Any] | list[tuple[str, Any]]:
    """A pickle dict (id -> array, or a stacked array + ids), or a list's (id, array) rows by `ids`."""
    from migfuse.safe_pickle import load_pickle_safely

    data = load_pickle_safely(path, "feature pickle", fix="save the features as a list or dict of numpy arrays, "
                                                          "an .npz or an .h5 file")
    if isinstance(data, dict):
        return {str(k): _pickled_row(v, path, str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        if ids is None:
            raise UserError(f"{path} holds a list of {len(data)} feature arrays without ids: give the annotation "
                            f"file the extraction ran on with --ids (mmaction2 list file or skeleton pickle)")
        if len(ids) != len(data):
            raise UserError(f"{path} holds {len(data)} feature arrays but --ids names {len(ids)} samples; give the "
                            f"annotation file (and --ann-split) the extraction ran on")
        return [(i, _pickled_row(v, path, i)) for i, v in zip(ids, data)]
    raise UserError(f"{path} holds a {type(data).__name__}; a feature pickle holds a list or dict of arrays")


def _pickled_row(value: Any, path: Path, row: str) -> Any:
    """A pickled row's features: the value itself, or the features entry of a dict (`FEATURE_KEYS`)."""
    if not isinstance(value, dict):
        return value
    key = next((k for k in FEATURE_KEYS if k in value), None)
    if key is None:
        raise UserError(f"{path}: row {row} is a dict without features (keys {', '.join(map(str, value))[:120]}); "
                        f"expected one of {', '.join(FEATURE_KEYS)}")
    found = value[key]
    return found.get("item") if isinstance(found, dict) else found


def _read_pkl_folder(folder: Path, ids: Sequence[str] | None) -> FeatureFile:
    """One pickle per id (`<id>.pkl`, e.g. mmaction2's long-video mode): an array, or a dict of features."""
    from migfuse.safe_pickle import load_pickle_safely

    if ids is not None:
        raise UserError(f"--ids is for pickles and stacked arrays; the files of {folder} are named by id")
    rows, listing = [], []
    for p in progress_bar(sorted(folder.glob("*.pkl")), desc=f"read {folder.name}", unit="file"):
        data = load_pickle_safely(p, "feature pickle", fix="save the features as numpy arrays")
        rows.append((p.stem, numeric(_pickled_row(data, p, p.stem), p, p.stem)))
        listing.append(f"{p.name} {sha256_file(p)}")
    return FeatureFile(folder, "pkl folder", rows, hashlib.sha256("\n".join(listing).encode()).hexdigest(),
                       files=len(rows))
