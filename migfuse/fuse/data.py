"""Token sets in RAM for training: which ids, which cache groups, labels, and the checks against
the manifest.

    groups = open_inputs(cache, needed=["video", "joint", "bone"])    # modality -> open TokenGroup
    split = task_splits(manifest, task, val_fraction=0.1, seed=0)      # SplitPlan
    ids = check_coverage(groups, split.train, "train", allow_missing=False)
    data = load_tokens(groups, ids, labels_of(manifest, task, ids))    # TokenSet
    batch = data.batch(index)        # {"video": (B, 9, 768) float32, "video_mask": (B, 9) bool, ...}

Groups travel as open handles (`TokenGroup`), not names: opening one reads its attributes and its
id array, so a command opens each group once and passes the handle on.
Micro-gestures are per clip (ids = clip ids), emotion is per video (ids = video ids).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from migfuse.datasets import classes
from migfuse.datasets.manifest import Manifest
from migfuse.data_cache.group import view_command
from migfuse.data_cache.store import DONE, TokenCache, TokenGroup
from migfuse.data_cache.tracks import TRACKS, extract_command, row_definition, same_row, track_of_group
from migfuse.data_cache.views import VIEW_PREFIX, as_tokens, is_view, source_arrays, track_of
from migfuse.errors import UserError

log = logging.getLogger(__name__)

TASKS = ("mg", "emotion")
#: A raw group is read directly only when its tokens fit comfortably in RAM.
RAW_GROUP_LIMIT_BYTES = 2 << 30


@dataclass
class TokenSet:
    """Samples in RAM: `ids` (S,), per input `tokens[name]` (S, [W,] N, D) fp16 and
    `masks[name]` (S, [W,] N) bool, and `labels` (S,) int64 (-1 = unknown)."""

    ids: list[str]
    tokens: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample token shape of each input, as the heads take it."""
        return {k: tuple(v.shape[1:]) for k, v in self.tokens.items()}

    def batch(self, index: torch.Tensor | np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Inputs of the samples at `index`, float32 tokens + bool masks (the heads' batch dict)."""
        index = torch.as_tensor(index, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        for k, v in self.tokens.items():
            out[k] = v[index].float()
            out[f"{k}_mask"] = self.masks[k][index]
        return out

    def subset(self, keep: list[int]) -> "TokenSet":
        idx = torch.as_tensor(keep, dtype=torch.long)
        return TokenSet([self.ids[i] for i in keep], {k: v[idx] for k, v in self.tokens.items()},
                        {k: v[idx] for k, v in self.masks.items()}, self.labels[idx])


# ----- which groups ----------------------------------------------------------------------------------
def open_inputs(cache: TokenCache, needed: list[str], configured: Mapping[str, str] | None = None
                ) -> dict[str, TokenGroup]:
    """The cache group of each needed modality, opened once: the configured one, else
    ``views/<modality>``, else the track's raw group when it is small enough to hold in RAM.

    Raises:
        UserError: no cache, a configured group that is absent, no tokens of a modality, a raw group
            too big for RAM, or a view derived from a source re-extracted since (names the fix).
    """
    configured = dict(configured or {})
    names = cache.group_names()
    if not names and not (cache.path / "zarr.json").is_file():
        raise UserError(f"no token cache at {cache.path}; check --cache (create one with `migfuse extract ...`)")
    opened: dict[str, TokenGroup] = {}  # by name: a group two modalities share is opened once
    out = {}
    for modality in needed:
        out[modality] = _open_one(cache, modality, configured, names, opened)
        check_view_is_current(out[modality], names, opened)
    return out


def resolve_inputs(cache: TokenCache, needed: list[str], configured: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
    """The name of each needed modality's cache group (`open_inputs`, keeping only the names)."""
    return {modality: g.name for modality, g in open_inputs(cache, needed, configured).items()}


def _open(cache: TokenCache, opened: dict[str, TokenGroup], name: str) -> TokenGroup:
    """Group `name`, opened on first use and kept in `opened`."""
    if name not in opened:
        opened[name] = cache.group(name)
    return opened[name]


def check_view_is_current(group: TokenGroup, names: list[str], opened: dict[str, TokenGroup] | None = None
                          ) -> None:
    """UserError when view `group` was derived from a source group that has since been re-extracted
    with other settings (its tokens would silently mix two extractions). `names`: the cache's groups;
    `opened`: groups already open by name (the source is opened there when absent)."""
    if not is_view(group):
        return
    prov = group.provenance
    source = prov.get("source")
    if source not in names or "source_provenance" not in prov:
        return
    source_now = _open(group.cache, {} if opened is None else opened, source)
    if source_now.provenance != prov["source_provenance"]:
        raise UserError(f"view '{group.name}' in {group.cache.path} was derived from an earlier '{source}' "
                        f"(its provenance changed since); pool it again: "
                        f"{view_command(group.cache.path, group.name, overwrite=True)}")


def _open_one(cache: TokenCache, modality: str, configured: dict[str, str], names: list[str],
              opened: dict[str, TokenGroup]) -> TokenGroup:
    if modality in configured:
        if configured[modality] not in names:
            raise UserError(f"config input {modality!r} -> '{configured[modality]}' is not in cache {cache.path} "
                            f"(groups: {', '.join(names) or 'none'}); fix \"inputs\" in the config")
        return _open(cache, opened, configured[modality])
    if VIEW_PREFIX + modality in names:
        return _open(cache, opened, VIEW_PREFIX + modality)
    track = TRACKS.get(modality)
    raw = sorted(n for n in names if track is not None and track_of_group(n) is track)
    if raw:
        g = _open(cache, opened, raw[0])
        if not g.done_ids():  # e.g. a track whose extraction failed for every row: no view can be made of it
            raise UserError(f"input {modality!r}: group '{raw[0]}' in {cache.path} has no finished rows "
                            f"(`migfuse cache info {cache.path}` says why); rerun its extract, or remove it with "
                            f"`migfuse cache drop {cache.path} {raw[0]}` and choose a head that does not need "
                            f"{modality} (`migfuse fuse heads`)")
        per_row = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in g.arrays.values())
        if per_row * len(g.ids) <= RAW_GROUP_LIMIT_BYTES:
            log.warning("input %s: reading raw group %s (no view %s%s; `migfuse cache view --defaults` makes it)",
                        modality, raw[0], VIEW_PREFIX, modality)
            return g
        raise UserError(f"input {modality!r}: raw group '{raw[0]}' in {cache.path} is too big to train on "
                        f"({per_row * len(g.ids) / 2**30:.1f} GB); run `migfuse cache view {cache.path} --defaults`")
    if track is None:
        raise UserError(f"unknown input {modality!r}: no track and no view {VIEW_PREFIX}{modality} in {cache.path}; "
                        f"the tracks are {', '.join(TRACKS)} (views: "
                        f"{', '.join(n[len(VIEW_PREFIX):] for n in names if n.startswith(VIEW_PREFIX)) or 'none'})")
    raise UserError(f"cache {cache.path} has no {modality!r} tokens (groups: {', '.join(names) or 'none'}); "
                    f"run `migfuse {track.command} --data PREPARED --cache {cache.path}` (its -h lists the rest), "
                    f"or choose a head that does not need {modality}")


# ----- which ids -------------------------------------------------------------------------------------
@dataclass
class SplitPlan:
    """Ids of the train / validation / test samples and how the validation part was chosen."""

    train: list[str]
    validation: list[str]
    test: list[str]
    source: str  # e.g. "split_miga validation" or "10% of train videos held out (seed 0)"

    def ids(self, split: str) -> list[str]:
        if split in ("train", "validation", "test"):
            return getattr(self, split)
        raise UserError(f"unknown split {split!r}; choose train, validation or test")


def _hold_out(ids_by_group: dict[str, list[str]], fraction: float, seed: int,
              strata: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """Hold out `fraction` of the groups (videos), stratified by `strata` (group -> class) when given.

    Whole videos are held out so validation clips never share a video with training clips."""
    rng = np.random.default_rng(seed)
    groups = sorted(ids_by_group)
    held: set[str] = set()
    by_stratum: dict[int, list[str]] = {}
    for g in groups:
        by_stratum.setdefault(strata.get(g, 0) if strata else 0, []).append(g)
    for members in by_stratum.values():
        # at least one video once any is asked for; none when fraction is 0 (no validation set)
        n = max(1, round(fraction * len(members))) if len(members) > 1 and fraction > 0 else 0
        held.update(rng.choice(members, size=n, replace=False).tolist())
    train = [i for g in groups if g not in held for i in ids_by_group[g]]
    val = [i for g in groups if g in held for i in ids_by_group[g]]
    return train, val


def task_splits(manifest: Manifest, task: str, val_fraction: float, seed: int, scheme: str = "auto") -> SplitPlan:
    """Train / validation / test ids of a task.

    mg: clips of `scheme` (auto = split_miga when the manifest fills it, else split_cs); validation
    = its "validation" clips, or `val_fraction` of the training videos held out when it has none.
    emotion: videos of split_emotion; validation = `val_fraction` of the training videos held out,
    stratified by win/lose.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose mg or emotion")
    where = f"manifest {manifest.root or ''}".strip()
    if task == "emotion":
        train_v = manifest.video_ids("train", "split_emotion")
        test_v = manifest.video_ids("test", "split_emotion")
        if not train_v:
            raise UserError(f"{where} has no split_emotion=train videos; prepare a dataset with the emotion protocol")
        strata = {v: classes.emotion_label(manifest.videos[v].win_lose) or 0 for v in train_v}
        train, val = _hold_out({v: [v] for v in train_v}, val_fraction, seed, strata)
        return SplitPlan(train, val, test_v, f"{val_fraction:.0%} of split_emotion train videos held out, "
                                             f"stratified by win/lose (seed {seed})")
    if scheme == "auto":
        scheme = "split_miga" if any(c.split_miga for c in manifest.clips) else "split_cs"
    train = manifest.ids("train", scheme)
    if not train:
        raise UserError(f"{where} has no {scheme}=train clips; choose another split scheme in the config")
    test = manifest.ids("test", scheme)
    val = manifest.ids("validation", scheme) if scheme == "split_miga" else []
    if val:
        return SplitPlan(train, val, test, f"{scheme} validation")
    by_video: dict[str, list[str]] = {}
    for cid in train:
        by_video.setdefault(manifest.clip(cid).video_id, []).append(cid)
    train, val = _hold_out(by_video, val_fraction, seed)
    return SplitPlan(train, val, test, f"{val_fraction:.0%} of {scheme} train videos held out (seed {seed}); "
                                       f"{scheme} of the manifest has no validation clips")


def labels_of(manifest: Manifest, task: str, ids: list[str]) -> list[int]:
    """Class index per id (-1 when unknown): clip labels for mg, Win=1/Lose=0 per video for emotion."""
    if task == "mg":
        return [-1 if manifest.clip(i).label is None else int(manifest.clip(i).label) for i in ids]
    out = []
    for v in ids:
        label = classes.emotion_label(manifest.videos[v].win_lose)
        out.append(-1 if label is None else label)
    return out


def class_names(task: str) -> list[str]:
    return list(classes.CLASS_NAMES) if task == "mg" else list(classes.EMOTION_CLASSES)


# ----- reading ---------------------------------------------------------------------------------------
#: the rows a task's samples are: micro-gestures per clip, emotion per video
TASK_ROWS = {"mg": "clip", "emotion": "video"}


def check_row_unit(inputs: Mapping[str, TokenGroup], task: str, head: str) -> None:
    """UserError when an input holds other rows than the task's samples (a per-video group for the
    per-clip mg task, or the reverse): the head was chosen for the other task."""
    want = TASK_ROWS[task]
    for modality, g in inputs.items():
        if g.row_dim != want:
            other = next(t for t, unit in TASK_ROWS.items() if unit == g.row_dim) if g.row_dim in TASK_ROWS.values() \
                else None
            hint = f"use --task {other}, or a head for {task}" if other else f"choose a head for {task}"
            raise UserError(f"head {head} reads '{modality}' from '{g.name}', which has one row per {g.row_dim}, "
                            f"but task {task} needs one per {want}: {hint} (`migfuse fuse heads`)")


def check_coverage(inputs: Mapping[str, TokenGroup], ids: list[str], what: str, allow_missing: bool,
                   quiet: bool = False) -> list[str]:
    """The ids finished in every input group (modality -> open group); UserError on a missing id
    unless `allow_missing` (then a warning names them, unless `quiet`)."""
    keep = set(ids)
    for g in inputs.values():
        track = track_of(g)
        known = set(g.ids)
        absent = [i for i in ids if i not in known]
        if len(absent) == len(ids) and ids:
            unit = TRACKS[track].unit if track in TRACKS else "row"
            raise UserError(f"cache group '{g.name}' in {g.cache.path} has none of the {len(ids)} {what} ids "
                            f"(e.g. {ids[0]}; it holds {unit} ids like {g.ids[0] if g.ids else '-'}); "
                            f"it was extracted for another manifest or task, point --cache/--data at matching ones")
        status = dict(zip(g.ids, g.status()))
        missing = [i for i in ids if status.get(i) != DONE]
        if missing:
            msg = (f"cache group '{g.name}' in {g.cache.path} lacks {len(missing)} of the {len(ids)} {what} ids "
                   f"(e.g. {', '.join(missing[:3])})")
            if not allow_missing:
                raise UserError(f"{msg}; finish `migfuse extract` / `migfuse cache view`, "
                                "or pass --allow-missing to skip them")
            if not quiet:
                log.warning("%s; skipped (--allow-missing)", msg)
            keep -= set(missing)
    return [i for i in ids if i in keep]


def check_rows(inputs: Mapping[str, TokenGroup], manifest: Manifest, ids: list[str], what: str,
               run: Path | None = None) -> None:
    """UserError unless the rows of `ids` (done in every input: `check_coverage`) hold what `manifest`
    defines now: each row's stored definition (video and frame range, `tracks.row_definition`) must be
    the manifest's. A view row that differs while its source group holds the manifest's row was pooled
    before that row was extracted again (the fix is `cache view`, not `extract`). Rows stored without a
    definition (earlier releases) are compared only through a view's source. Labels are not part of
    a row: tokens do not depend on them, and training takes the manifest's. With `run` (scoring a
    trained run), the fix for rows of other data is to score that data with `fuse predict` + `score`."""
    if not ids:
        return
    data = manifest.root or "the prepared data"
    for g in inputs.values():
        track = TRACKS.get(track_of(g))
        if track is None:
            continue
        want = [row_definition(track, manifest, i) for i in ids]
        stored = g.rowdefs(ids)
        differ = [k for k, (have, now) in enumerate(zip(stored, want)) if not same_row(have, now)]
        if not differ:
            continue
        cache = g.cache.path
        source = g.provenance.get("source") if is_view(g) else None
        copy = source is not None and source not in g.cache.group_names()  # a views-only copy (export-views)
        if source is not None and not copy:
            held = g.cache.group(source).rowdefs([ids[k] for k in differ])
            repool = [k for k, now in zip(differ, held) if now and same_row(now, want[k])]
            if repool:
                k = repool[0]
                raise UserError(f"view '{g.name}' in {cache} was pooled from other rows than '{source}' holds now "
                                f"({len(repool)} of the {len(ids)} {what} rows, e.g. {ids[k]}: pooled from "
                                f"'{stored[k] or 'a row of an earlier release'}', now '{want[k]}'); run "
                                f"`migfuse cache view {cache} --defaults` again (or the `cache view` command that "
                                f"made it) to pool them anew")
        differ = [k for k in differ if stored[k]]
        if differ:
            k = differ[0]
            made_by = g.provenance.get("source_provenance", g.provenance)  # a view's: its source group's
            other = (f"score that one with `migfuse fuse predict {run} --data OTHER --split {what} --out SCORES.npz` "
                     f"and `migfuse score SCORES.npz --data OTHER --split {what}`" if run is not None
                     else "point --data at that one")
            raise UserError(
                f"cache group '{g.name}' in {cache} holds {len(differ)} of the {len(ids)} {what} rows as other data "
                f"than {data} defines (e.g. {ids[k]}: cached '{stored[k]}', {data} has '{want[k]}'): it was "
                f"extracted from another prepared dataset; {other}, or extract again for this "
                f"one: {extract_command(track, data, 'FULL_CACHE' if copy else cache, made_by)}, "
                f"then `migfuse cache view {'FULL_CACHE' if copy else cache} --defaults`"
                + (f" and `migfuse cache export-views FULL_CACHE {cache}`" if copy else ""))


def split_fingerprint(manifest: Manifest, task: str, ids: list[str]) -> dict[str, object]:
    """What a split of `manifest` is, in short: sha256 of its rows (ids, videos, frame ranges) and of its
    labels, and how many are labelled. Recorded by `fuse train`, compared by `fuse eval --data`."""
    if task == "mg":
        rows = [f"{i} {row_definition(TRACKS['video'], manifest, i)}" for i in ids]
    else:
        rows = list(ids)
    labels = labels_of(manifest, task, ids)

    def sha(items: list) -> str:
        return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()

    return {"rows": sha(rows), "labels": sha(labels), "labelled": sum(y >= 0 for y in labels)}


def check_known_ids(manifest: Manifest, task: str, ids: list[str], where: str | Path) -> None:
    """UserError when `manifest` lacks ids a run recorded (its train/validation split, splits.json)."""
    known = set(manifest.videos) if task == "emotion" else {c.clip_id for c in manifest.clips}
    absent = [i for i in ids if i not in known]
    if absent:
        raise UserError(f"{manifest.root} lacks {len(absent)} of the {len(ids)} ids recorded in {where} "
                        f"(e.g. {absent[0]}): it is not the prepared data the run was trained on; "
                        f"pass that one as --data, or leave --data out")


def load_tokens(inputs: Mapping[str, TokenGroup], ids: list[str], labels: list[int], read_batch: int = 2048
                ) -> TokenSet:
    """Read `ids` (all finished in every group: see `check_coverage`) of each input (modality -> open
    group) into a TokenSet: tokens (S, [W,] N, D) fp16 and masks (S, [W,] N) bool per modality."""
    tokens: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for modality, g in inputs.items():
        names = None if is_view(g) else source_arrays(track_of(g))
        parts_t, parts_m = [], []
        for start in range(0, len(ids), read_batch):
            pooled = as_tokens(g, g.read_many(ids[start : start + read_batch], names))
            parts_t.append(torch.from_numpy(np.ascontiguousarray(pooled["tokens"], dtype=np.float16)))
            parts_m.append(torch.from_numpy(np.ascontiguousarray(pooled["mask"], dtype=bool)))
        tokens[modality] = torch.cat(parts_t) if parts_t else torch.zeros(0)
        masks[modality] = torch.cat(parts_m) if parts_m else torch.zeros(0, dtype=torch.bool)
    return TokenSet(list(ids), tokens, masks, torch.as_tensor(labels, dtype=torch.long))
