"""Train a fusion head on cached tokens: one readable loop (nanoGPT-style), defaults at the top.

    migfuse fuse train --cache CACHE.zarr --data PREPARED --task mg --out runs/cmtf
    migfuse fuse train --cache CACHE.zarr --data PREPARED --task emotion --head interfusion --out runs/emo
    migfuse fuse train ... --config my.toml --set lr=3e-4 --set head_options.width=128 --epochs 30

Library use (what `migfuse demo` calls):

    from migfuse.fuse.train import train
    summary = train(cache, prepared, task="mg", out="runs/cmtf", config={"epochs": 5})

The loop, the run folder and its rules are migfuse.training's (docs/contracts.md "Training"): RUN/ gets
config.json, metrics.jsonl, metrics.csv, curves.png, best.pt, last.pt, train.log, plus splits.json
(ids per split) and summary.json. Rerunning the same command resumes from last.pt; a folder holding a
run of other settings is refused unless `overwrite`. Same seed + same data + same thread count -> same
metrics, also across an interruption (tests/test_fuse_train.py checks it).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from migfuse.atomic_write import write_text
from migfuse.data_cache.store import TokenCache
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.fuse import data as fdata
from migfuse.fuse.heads import FusionHead, head_class, make_head, resolve_options
from migfuse.fuse.metrics import task_metrics
from migfuse.runtime import Runtime
from migfuse.training.config import check_choice
from migfuse.training.config import resolve_config as resolve_settings
from migfuse.training.loop import FitResult, Selection, epoch_generator
from migfuse.training.loop import fit as run_epochs
from migfuse.training.recipe import check_balance, class_weights, training_runtime, warmup_cosine
from migfuse.training.run_folder import RunFolder

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "head": None,             # head name (`migfuse fuse heads`); None = cmtf for mg, interfusion for emotion
    "head_options": {},       # overrides of the head's own DEFAULTS (width, depth, ...)
    "inputs": {},             # modality -> cache group; missing ones: views/<modality>, else a small raw group
    "epochs": 15,             # maximum epochs (mg default: ~15 x 214 steps, a few minutes on 2 CPU cores)
    "batch_size": 64,         # samples per step
    "lr": 1e-3,               # peak AdamW learning rate (small heads from scratch tolerate 1e-3)
    "weight_decay": 0.05,     # AdamW weight decay
    "warmup_epochs": 1.0,     # linear warm-up, then cosine decay to 0 over the remaining steps
    "label_smoothing": 0.1,   # cross-entropy label smoothing (mmaction2's MViT default)
    "balance": "loss",        # long-tailed classes: "loss" (class-weighted CE), "sampler" (balanced sampling), "none"
    "balance_power": 0.5,     # class weight ~ count^-power (1 = inverse frequency, 0.5 = softened)
    "grad_clip": 1.0,         # max gradient norm (0 = off)
    "patience": 4,            # early stopping: epochs without a better validation score
    "select_metric": "top1",  # validation score that picks the best epoch ("loss" is minimised)
    "val_fraction": 0.1,      # share of training videos held out when the manifest has no validation split
    "split_scheme": "auto",   # mg: split_miga | split_cs | auto (split_miga when the manifest fills it)
    "seed": 0,                # seeds model init, dropout, shuffling and the held-out split
    "threads": 1,             # torch CPU threads while training (0 = torch's default); see torch_threads()
}

#: Per-task changes to DEFAULTS (applied before the user's config).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mg": {"head": "cmtf"},
    # ~100 training videos: smaller batches, more epochs, and the (less noisy) loss to select on.
    "emotion": {"head": "interfusion", "batch_size": 16, "epochs": 60, "patience": 15, "lr": 5e-4,
                "balance": "none", "select_metric": "loss", "val_fraction": 0.15},
}

#: Validation scores an epoch can be selected on, per task ("loss" is minimised, the rest maximised).
SELECT_METRICS = {"mg": ("top1", "top5", "mean_class_accuracy", "loss"),
                  "emotion": ("accuracy", "f1", "roc_auc", "loss")}
#: Settings a rerun may change and still resume its run folder (more epochs extend the run).
RESUMABLE = ("epochs", "patience", "threads")
#: Files of a fuse run besides the common ones (deleted by --overwrite).
EXTRA_FILES = ("splits.json", "summary.json")


def resolve_config(task: str, config: Mapping[str, Any] | str | Path | None = None,
                   head: str | None = None, sets: Iterable[str] = (),
                   flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS <- TASK_DEFAULTS[task] <- config (dict, or JSON/TOML file) <- `sets` (--set k=v) <- flags
    (--epochs ...) <- head; types checked against DEFAULTS; plus "task".

    UserError (one line, naming the file or option, the key and the expected type) on an unknown key
    or a bad value, e.g. `my.json: lr must be a number (like the default 0.001), not 'fast'`."""
    if task not in fdata.TASKS:
        raise UserError(f"unknown task {task!r}; choose mg or emotion")
    where = str(config) if isinstance(config, (str, Path)) else "the config"
    # "task" and the rest are written by a previous run's config.json (old layout): reusing one is fine
    ignore = ("task", "cache", "data", "split_source", "classes", "shapes", "input_provenance",
              "data_fingerprint")
    cfg = resolve_settings(DEFAULTS, base=TASK_DEFAULTS[task], config=config, sets=sets, flags=flags,
                           optional={"head": ""}, ignore=ignore)
    if head:
        cfg["head"] = head
    cfg["task"] = task
    check_balance(cfg["balance"], where)
    check_choice(cfg, "split_scheme", ("auto", "split_miga", "split_cs"), where)
    if cfg["select_metric"] not in SELECT_METRICS[task]:
        raise UserError(f"{where}: select_metric for task {task} must be one of {', '.join(SELECT_METRICS[task])}, "
                        f"not {cfg['select_metric']!r}")
    for k in ("epochs", "batch_size"):
        if cfg[k] < 1:
            raise UserError(f"{where}: {k} must be a positive integer, not {cfg[k]!r}")
    warmup, epochs = cfg["warmup_epochs"], cfg["epochs"]
    # a warm-up as long as the run never reaches the learning rate; a one-epoch run (quick tests) may
    # warm up through its only epoch, as with the default of 1
    if warmup > epochs or (warmup == epochs and epochs > 1):
        raise UserError(f"{where}: warmup_epochs ({warmup:g}) must be less than epochs ({epochs}), or the warm-up "
                        f"never finishes; lower warmup_epochs or raise epochs")
    cfg["head_options"] = resolve_options(cfg["head"], cfg["head_options"])
    return cfg


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (0 = leave as is), restoring the previous count afterwards.

    Why 1 by default: these heads do thousands of tiny ops per epoch, where intra-op threading costs
    more than it gains; on a busy 2-core machine 2 OpenMP threads made a CMTF step ~70x slower than
    1 thread (35 ms vs 2.4 s, benchmarks/RESULTS.md), and 1 thread is never much slower.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----- the loop ----------------------------------------------------------------------------------------
def on_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """A head's batch dict on `device` (the same tensors on the CPU)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: fdata.TokenSet, batch_size: int = 256,
                   runtime: Runtime | None = None) -> torch.Tensor:
    """(S, C) float32 logits of every sample on the CPU, in `data.ids` order (eval mode, no gradient);
    the model runs on `runtime`'s device under its autocast (None: as it is, in fp32)."""
    runtime = runtime or Runtime()
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(data), batch_size):
        batch = on_device(data.batch(torch.arange(s, min(s + batch_size, len(data)))), device)
        with runtime.autocast():
            out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)


def validate(model: FusionHead, data: fdata.TokenSet, task: str, class_names: list[str],
             runtime: Runtime | None = None) -> dict[str, float]:
    """Loss (plain CE) and the task's scalar metrics on `data` (samples with a known label)."""
    logits = predict_logits(model, data, runtime=runtime)
    known = data.labels >= 0
    logits, labels = logits[known], data.labels[known]
    m = task_metrics(task, torch.softmax(logits, 1).numpy(), labels.numpy(), class_names)
    scalars = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
    return {"loss": float(F.cross_entropy(logits, labels)), **scalars}


def fit(run: RunFolder, model: FusionHead, train_set: fdata.TokenSet, val_set: fdata.TokenSet | None,
        cfg: Mapping[str, Any], class_names: list[str], runtime: Runtime | None = None) -> FitResult:
    """Train `model` in `run` (migfuse.training.loop.fit); the best validation epoch goes to best.pt.

    AdamW, linear warm-up then cosine per step, label-smoothed (class-weighted) cross-entropy, gradient
    clipping, early stopping on cfg["select_metric"] (ties go to the lower validation loss). Without a
    validation set the last epoch is kept. Deterministic for a given cfg["seed"]: shuffling comes from a
    per-epoch generator, so a resumed run draws what an uninterrupted one would. The model and each batch
    go to `runtime`'s device (None: the CPU), the forward under its autocast (none in fp32); the token
    sets stay in RAM."""
    runtime = runtime or Runtime()
    device = runtime.device
    model.to(device)
    task, C, bs = cfg["task"], model.num_classes, cfg["batch_size"]
    labels = train_set.labels
    weights = class_weights(labels, C, cfg["balance_power"]).to(device) if cfg["balance"] == "loss" else None
    sample_p = class_weights(labels, C, 1.0)[labels] if cfg["balance"] == "sampler" else None
    steps_per_epoch = math.ceil(len(train_set) / bs)
    total = steps_per_epoch * cfg["epochs"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warmup = max(1, round(cfg["warmup_epochs"] * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))

    def train_epoch(epoch: int, bar) -> dict[str, float]:
        gen = epoch_generator(cfg["seed"], epoch)
        if sample_p is not None:
            order = torch.multinomial(sample_p, len(train_set), replacement=True, generator=gen)
        else:
            order = torch.randperm(len(train_set), generator=gen)
        total_loss = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * bs: (s + 1) * bs]
            with runtime.autocast():
                logits = model(on_device(train_set.batch(idx), device))
            loss = F.cross_entropy(logits.float(), labels[idx].to(device), weight=weights,
                                   label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            bar.step(loss=loss.item())
        return {"train_loss": total_loss / len(train_set)}

    def val_epoch(epoch: int) -> dict[str, float]:
        return {f"val_{k}": v for k, v in validate(model, val_set, task, class_names, runtime).items()}

    metric = cfg["select_metric"]
    has_val = val_set is not None and len(val_set) > 0
    return run_epochs(run, model, opt, scheduler=sched, epochs=cfg["epochs"], train_epoch=train_epoch,
                      validate=val_epoch if has_val else None,
                      select=Selection(f"val_{metric}", "min" if metric == "loss" else "max", tie_break="val_loss"),
                      patience=cfg["patience"], seed=cfg["seed"], steps_per_epoch=steps_per_epoch,
                      desc=f"fuse {task} {cfg['head']}")


# ----- the command ------------------------------------------------------------------------------------
def train(cache: str | Path, prepared: str | Path, task: str, out: str | Path, head: str | None = None,
          config: Mapping[str, Any] | str | Path | None = None, allow_missing: bool = False, *,
          sets: Iterable[str] = (), flags: Mapping[str, Any] | None = None, overwrite: bool = False,
          runtime: Runtime | None = None) -> dict[str, Any]:
    """Train a head for `task` ("mg" per clip, "emotion" per video) on the tokens in `cache`, into `out`.

    `config` (dict or JSON/TOML file), `sets` ("key=value") and `flags` ({"epochs": 3}) override
    DEFAULTS in that order (resolve_config). `runtime`: where the head trains (device, and bf16
    autocast or fp32; its `threads`, when given, override the "threads" setting); None = `Runtime()`,
    the CPU in fp32. Rerunning into the same `out` resumes from out/last.pt (on any device);
    `overwrite` replaces a run of other settings there. Returns the summary (also out/summary.json):
    the best epoch's record, sample counts, split source. UserError (one line) when the cache lacks
    clips of the manifest (unless `allow_missing`), a group or view is absent, the config is bad,
    the precision is fp16, or `out` is in use or holds a run of other settings or inputs.
    """
    runtime = training_runtime(runtime)
    if runtime.threads is not None:
        flags = {**(flags or {}), "threads": runtime.threads}
    cfg = resolve_config(task, config, head, sets=sets, flags=flags)
    with torch_threads(cfg["threads"]):
        return _train(cfg, TokenCache(cache), Path(prepared), Path(out), allow_missing, overwrite, runtime)


def _train(cfg: dict, cache: TokenCache, prepared: Path, out: Path, allow_missing: bool, overwrite: bool,
           runtime: Runtime) -> dict[str, Any]:
    task = cfg["task"]
    manifest = Manifest.load(prepared)
    names = fdata.class_names(task)
    needed = head_class(cfg["head"]).required_inputs(cfg["head_options"])
    groups = fdata.open_inputs(cache, needed, cfg["inputs"])  # opened once, used by every split below
    fdata.check_row_unit(groups, task, cfg["head"])
    inputs = {m: g.name for m, g in groups.items()}
    # What decides whether a rerun may resume: the same cache groups, built the same way.
    inputs_id = {"cache": str(cache.path.resolve()), "data": str(prepared.resolve()), "inputs": inputs,
                 "input_provenance": {m: g.provenance for m, g in groups.items()}}
    plan = fdata.task_splits(manifest, task, cfg["val_fraction"], cfg["seed"], cfg["split_scheme"])
    labelled: dict[str, list[str]] = {}
    ids_of: dict[str, list[str]] = {}
    for split in ("train", "validation"):  # checked before the run folder is touched
        ids = plan.ids(split)
        labels = fdata.labels_of(manifest, task, ids)
        labelled[split] = [i for i, y in zip(ids, labels) if y >= 0]  # unlabelled samples cannot be trained or scored
        ids_of[split] = fdata.check_coverage(groups, labelled[split], split, allow_missing, quiet=True)
        fdata.check_rows(groups, manifest, ids_of[split], split)
    with RunFolder.open(out, "fuse", cfg, inputs_id, overwrite=overwrite, resumable=RESUMABLE,
                        extra_files=EXTRA_FILES) as run:
        log.info("task %s, head %s, inputs %s; validation = %s", task, cfg["head"], inputs, plan.source)
        for split, ids in labelled.items():
            if len(ids_of[split]) < len(ids):  # said here, so that train.log has it too
                fdata.check_coverage(groups, ids, split, allow_missing)
        sets = {split: fdata.load_tokens(groups, ids, fdata.labels_of(manifest, task, ids))
                for split, ids in ids_of.items()}
        if not len(sets["train"]):
            raise UserError(f"no labelled training samples for task {task} in {prepared} with cache {cache.path}")

        torch.manual_seed(int(cfg["seed"]))
        model = make_head(cfg["head"], sets["train"].shapes, len(names), **cfg["head_options"])
        n_params = sum(p.numel() for p in model.parameters())
        run.update_provenance({"split_source": plan.source, "classes": names, "shapes": sets["train"].shapes,
                               "n_train": len(sets["train"]), "n_validation": len(sets["validation"]),
                               "compute": runtime.record(),
                               "data_fingerprint": {split: fdata.split_fingerprint(manifest, task, plan.ids(split))
                                                    for split in ("train", "validation", "test")}})
        write_text(out / "splits.json", json.dumps({k: v.ids for k, v in sets.items()}))
        log.info("%d train / %d validation samples, %d parameters", len(sets["train"]), len(sets["validation"]),
                 n_params)

        t0 = time.perf_counter()
        result = fit(run, model, sets["train"], sets["validation"], cfg, names, runtime)
        summary = {"best": result.best, "n_train": len(sets["train"]), "n_validation": len(sets["validation"]),
                   "validation_source": plan.source, "parameters": n_params, "epochs_run": result.epochs_run,
                   "stopped_early": result.stopped_early, "train_seconds": round(time.perf_counter() - t0, 2)}
        write_text(out / "summary.json", json.dumps(summary, indent=2))
        if len(sets["validation"]):
            log.info("best epoch %d (%s); run in %s", result.best_epoch, plan.source, out)
        else:  # the plan may name a validation split the cache held none of
            log.info("no validation set, so no best epoch: best.pt holds the last one, epoch %d; run in %s",
                     result.best_epoch, out)
    return summary
