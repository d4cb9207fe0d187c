"""Load a trained run and score a split: `Scores` per clip (mg) or per video (emotion).

    from migfuse.fuse.predict import predict
    scores = predict("runs/cmtf", split="test", out="runs/cmtf/test_scores.npz")
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from migfuse.datasets.manifest import Manifest
from migfuse.data_cache.store import TokenCache, TokenGroup
from migfuse.errors import UserError
from migfuse.fuse import data as fdata
from migfuse.fuse.heads import FusionHead, make_head
from migfuse.fuse.scores import Scores
from migfuse.fuse.train import predict_logits, torch_threads
from migfuse.runtime import Runtime
from migfuse.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A trained run folder: resolved config, the model with its best weights, and where its data is."""

    path: Path
    config: dict[str, Any]
    model: FusionHead
    cache: TokenCache
    manifest: Manifest

    @property
    def task(self) -> str:
        return self.config["task"]

    @cached_property
    def groups(self) -> dict[str, TokenGroup]:
        """The cache group of each input the run was trained on (modality -> open group), opened on
        first use and kept for every split this run scores."""
        return {modality: self.cache.group(name) for modality, name in self.config["inputs"].items()}

    def split_ids(self, split: str) -> list[str]:
        """Ids of `split`: train/validation as used in training (splits.json), test from the manifest."""
        if split in ("train", "validation"):
            ids = json.loads((self.path / "splits.json").read_text())[split]
            fdata.check_known_ids(self.manifest, self.task, ids, self.path / "splits.json")
            return ids
        return self.plan().ids(split)

    def plan(self, manifest: Manifest | None = None) -> fdata.SplitPlan:
        """The run's split plan over `manifest` (default: the run's data, or the --data given)."""
        c = self.config
        return fdata.task_splits(manifest or self.manifest, self.task, c["val_fraction"], c["seed"], c["split_scheme"])

    def data_differs(self, split: str) -> str | None:
        """How the data's `split` differs from the one the run was trained with ("other clips or frame
        ranges", "other labels"), None when it is the same: a re-prepared copy with identical clips
        passes, and so do labels added to a split that had none."""
        recorded = self.config.get("data_fingerprint", {}).get(split)
        if recorded is None:  # a run of an earlier release: its own data, when still there, tells
            try:
                trained = Manifest.load(self.config["data"])
            except (UserError, OSError, KeyError):
                return None
            recorded = fdata.split_fingerprint(trained, self.task, self.plan(trained).ids(split))
        now = fdata.split_fingerprint(self.manifest, self.task, self.plan().ids(split))
        if now["rows"] != recorded["rows"]:
            return "other clips or frame ranges"
        if recorded["labelled"] and now["labels"] != recorded["labels"]:
            return "other labels"
        return None


def load_run(run: str | Path, cache: str | Path | None = None, data: str | Path | None = None) -> Run:
    """Open RUN/ written by `train`; `cache`/`data` override the paths recorded in its config.

    Run.config is the run's settings with its provenance (resolved inputs, shapes, classes, paths).
    UserError (one line, naming the file) when the folder is not a finished fuse run, or its
    config.json or best.pt is damaged (best.pt is read weights-only: migfuse.training.checkpoint)."""
    run = Path(run)
    cfg_path, ckpt = run / "config.json", run / "best.pt"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise UserError(f"{run} is not a finished training run (needs config.json and best.pt); "
                        f"run `migfuse fuse train ... --out {run}` first")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
        trainer = doc["run"].get("trainer") if isinstance(doc, dict) and isinstance(doc.get("run"), dict) else None
    except (ValueError, UnicodeDecodeError):
        trainer = None
    # another trainer's run (e.g. `backbone train`) is valid on its own: say so before reading fuse keys
    if trainer not in (None, "fuse"):
        raise UserError(f"{run} holds a {trainer!r} training run, not a fusion head; pass a run "
                        f"folder of `migfuse fuse train`")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = {**{k: v for k, v in doc.items() if k != "run"}, **doc["run"]["provenance"]}
        shapes = {k: tuple(v) for k, v in cfg["shapes"].items()}
        head, classes = cfg["head"], cfg["classes"]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise UserError(f"{cfg_path} is damaged or not the config.json of a `migfuse fuse train` run; "
                        f"train the run again (`migfuse fuse train ... --out {run} --overwrite`)") from None
    state = load_checkpoint(ckpt)
    model = make_head(head, shapes, len(classes), **cfg["head_options"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError:
        raise UserError(f"checkpoint {ckpt} does not match the head in {cfg_path} (another run's weights?); "
                        f"train the run again with --overwrite") from None
    model.eval()
    return Run(run, cfg, model, TokenCache(cache or cfg["cache"]), Manifest.load(data or cfg["data"]))


def _samples(run: Run) -> str:
    return "clips" if run.task == "mg" else "videos"


def _check_trained_split(run: Run, split: str, ids: list[str], labelled_only: bool) -> None:
    """Train/validation are the ids the run was trained with (splits.json), which are those the cache
    held: an empty one is the cache's doing, not the labels'; a smaller one is said (warning)."""
    planned = run.plan().ids(split)
    if labelled_only:
        planned = [i for i, y in zip(planned, fdata.labels_of(run.manifest, run.task, planned)) if y >= 0]
    if not planned or len(ids) >= len(planned):
        return
    what = _samples(run)
    if not ids:
        raise UserError(f"run {run.path} was trained with no {split} {what}: its cache held none of the "
                        f"{len(planned):,} {split} {what} of {run.manifest.root} (see {run.path / 'splits.json'}); "
                        f"extract them into the cache and train again")
    log.warning("scoring %s of the %s %s %s of %s: the run was trained on those its cache held (%s)",
                f"{len(ids):,}", f"{len(planned):,}", split, what, run.manifest.root, run.path / "splits.json")


def predict_split(run: Run, split: str, allow_missing: bool = False, labelled_only: bool = False,
                  runtime: Runtime | None = None) -> tuple[fdata.TokenSet, torch.Tensor]:
    """Token set of `split` and its (S, C) probabilities, the head run on `runtime` (None: the CPU
    in fp32, with the run's `threads`)."""
    ids = run.split_ids(split)
    if labelled_only:
        ids = [i for i, y in zip(ids, fdata.labels_of(run.manifest, run.task, ids)) if y >= 0]
    if split in ("train", "validation"):
        _check_trained_split(run, split, ids, labelled_only)
    if not ids:
        raise UserError(f"split {split!r} of {run.manifest.root} has no {'labelled ' if labelled_only else ''}"
                        f"{'clips' if run.task == 'mg' else 'videos'} for task {run.task}; choose another --split")
    for modality, group in run.groups.items():
        trained_on = run.config.get("input_provenance", {}).get(modality)
        if trained_on is not None and group.provenance != trained_on:
            raise UserError(f"cache group '{group.name}' in {run.cache.path} was rebuilt with other settings than run "
                            f"{run.path} was trained on; retrain, or point --cache at the cache it was trained with")
    ids = fdata.check_coverage(run.groups, ids, split, allow_missing)
    fdata.check_rows(run.groups, run.manifest, ids, split, run=run.path)
    tokens = fdata.load_tokens(run.groups, ids, fdata.labels_of(run.manifest, run.task, ids))
    shapes = {k: tuple(v) for k, v in run.config["shapes"].items()}
    if tokens.shapes != shapes:
        raise UserError(f"cache {run.cache.path} gives token shapes {tokens.shapes} but run {run.path} was "
                        f"trained on {shapes}; use the cache/views the run was trained with")
    runtime = runtime or Runtime()
    run.model.to(runtime.device)
    threads = runtime.threads if runtime.threads is not None else run.config.get("threads", 1)
    with torch_threads(threads):
        return tokens, torch.softmax(predict_logits(run.model, tokens, runtime=runtime), dim=1)


def predict(run: str | Path, split: str, out: str | Path | None = None, cache: str | Path | None = None,
            data: str | Path | None = None, allow_missing: bool = False, runtime: Runtime | None = None) -> Scores:
    """Scores of the run's best checkpoint on `split`, saved to `out` (.npz) when given."""
    r = load_run(run, cache, data)
    tokens, probs = predict_split(r, split, allow_missing, runtime=runtime)
    scores = Scores(ids=tokens.ids, scores=probs.numpy(), task=r.task, split=split, classes=r.config["classes"])
    if out is not None:
        scores.save(out)
        log.debug("wrote %d %s scores of split %s to %s", len(scores), r.task, split, out)
    return scores
