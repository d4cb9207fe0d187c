"""Train a fusion head on cached tokens: one readable loop (nanoGPT-style), defaults at the top.

    migfuse fuse train --cache CACHE.zarr --data PREPARED --task mg --out runs/cmtf
    migfuse fuse train --cache CACHE.zarr --data PREPARED --task emotion --head interfusion --out runs/emo
    migfuse fuse train ... --config my.json      # JSON overriding any key of DEFAULTS / TASK_DEFAULTS

Library use (what `migfuse demo` calls):

    from migfuse.fuse.train import train
    summary = train(cache, prepared, task="mg", out="runs/cmtf", config={"epochs": 5})

RUN/ gets: config.json (resolved config, inputs, split choice), splits.json (ids per split),
metrics.jsonl (one line per epoch), best.pt (best validation checkpoint), train.log, summary.json.
Same seed + same data + same thread count -> same metrics (tests/test_fuse_train.py checks it).
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm

from migfuse.data_cache.manifest import Manifest
from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError
from migfuse.fuse import data as fdata
from migfuse.fuse.heads import FusionHead, head_class, make_head, resolve_options
from migfuse.fuse.metrics import task_metrics

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

BALANCE_CHOICES = ("loss", "sampler", "none")
#: Validation scores an epoch can be selected on, per task ("loss" is minimised, the rest maximised).
SELECT_METRICS = {"mg": ("top1", "top5", "mean_class_accuracy", "loss"), "emotion": ("accuracy", "f1", "roc_auc", "loss")}


def resolve_config(task: str, config: Mapping[str, Any] | str | Path | None = None,
                   head: str | None = None) -> dict[str, Any]:
    """DEFAULTS <- TASK_DEFAULTS[task] <- config (dict or JSON file) <- head; checked.

    UserError (naming the file) on an unknown key or a bad value."""
    if task not in fdata.TASKS:
        raise UserError(f"unknown task {task!r}; choose mg or emotion")
    where = "the config"
    if isinstance(config, (str, Path)):
        where = str(config)
        try:
            config = json.loads(Path(config).read_text())
        except FileNotFoundError:
            raise UserError(f"config file {config} does not exist; check the --config path") from None
        except ValueError as e:
            raise UserError(f"config file {config} is not valid JSON ({e}); fix it") from None
        if not isinstance(config, dict):
            raise UserError(f"config file {where} must hold a JSON object of settings")
    user = dict(config or {})
    for k in ("task", "cache", "data", "split_source", "classes", "shapes", "input_provenance"):
        user.pop(k, None)  # written by a previous run's config.json: reusing one is fine
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown setting {unknown[0]!r}; known settings are {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **TASK_DEFAULTS[task], **user}
    if head:
        cfg["head"] = head
    cfg["task"] = task
    if cfg["balance"] not in BALANCE_CHOICES:
        raise UserError(f"{where}: balance must be one of {', '.join(BALANCE_CHOICES)}, not {cfg['balance']!r}")
    if cfg["select_metric"] not in SELECT_METRICS[task]:
        raise UserError(f"{where}: select_metric for task {task} must be one of {', '.join(SELECT_METRICS[task])}, "
                        f"not {cfg['select_metric']!r}")
    for k in ("epochs", "batch_size"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise UserError(f"{where}: {k} must be a positive integer, not {cfg[k]!r}")
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
def class_weights(labels: torch.Tensor, num_classes: int, power: float) -> torch.Tensor:
    """(C,) weights ~ count^-power, mean 1 over the classes present (absent classes get 0)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    w = torch.where(counts > 0, counts.clamp(min=1) ** -power, torch.zeros_like(counts))
    return (w / w[counts > 0].mean()).float()


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: fdata.TokenSet, batch_size: int = 256) -> torch.Tensor:
    """(S, C) logits of every sample, in `data.ids` order (eval mode, no gradient)."""
    model.eval()
    out = [model(data.batch(torch.arange(s, min(s + batch_size, len(data))))) for s in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)


def validate(model: FusionHead, data: fdata.TokenSet, task: str, class_names: list[str]) -> dict[str, float]:
    """Loss (plain CE) and the task's scalar metrics on `data` (samples with a known label)."""
    logits = predict_logits(model, data)
    known = data.labels >= 0
    logits, labels = logits[known], data.labels[known]
    m = task_metrics(task, torch.softmax(logits, 1).numpy(), labels.numpy(), class_names)
    scalars = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
    return {"loss": float(F.cross_entropy(logits, labels)), **scalars}


def _better(metric: str, record: Mapping[str, float], best: Mapping[str, float] | None) -> bool:
    """Is `record` a better validation epoch than `best`? Ties on the metric go to the lower loss."""
    if best is None:
        return True
    new, old = record[f"val_{metric}"], best[f"val_{metric}"]
    if math.isnan(old):
        return not math.isnan(new)
    if new == old:
        return record["val_loss"] < best["val_loss"]
    return new < old if metric == "loss" else new > old


def fit(model: FusionHead, train_set: fdata.TokenSet, val_set: fdata.TokenSet | None, cfg: Mapping[str, Any],
        out: Path, class_names: list[str]) -> dict[str, Any]:
    """Train `model` in place; keep the best validation epoch in out/best.pt; return its record.

    Writes one JSON line per epoch to out/metrics.jsonl. Without a validation set the last epoch is
    kept. Deterministic for a given cfg["seed"] (torch RNG seeded, shuffling from a seeded generator).
    """
    task, C = cfg["task"], model.num_classes
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    labels = train_set.labels
    weights = class_weights(labels, C, cfg["balance_power"]) if cfg["balance"] == "loss" else None
    sample_p = None
    if cfg["balance"] == "sampler":
        per_class = class_weights(labels, C, 1.0)
        sample_p = per_class[labels]
    steps_per_epoch = math.ceil(len(train_set) / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, max(1, warmup)))
    metric = cfg["select_metric"]
    best: dict[str, Any] | None = None
    stale = 0
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    epochs = tqdm(range(1, cfg["epochs"] + 1), desc="epochs", unit="epoch", disable=None)
    for epoch in epochs:
        t0 = time.perf_counter()
        model.train()
        if sample_p is not None:
            order = torch.multinomial(sample_p, len(train_set), replacement=True, generator=gen)
        else:
            order = torch.randperm(len(train_set), generator=gen)
        total_loss = 0.0
        for s in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", unit="step", leave=False, disable=None):
            idx = order[s * cfg["batch_size"] : (s + 1) * cfg["batch_size"]]
            logits = model(train_set.batch(idx))
            loss = F.cross_entropy(logits, labels[idx], weight=weights, label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": total_loss / len(train_set),
                                  "lr": opt.param_groups[0]["lr"]}
        if val_set is not None and len(val_set):
            record.update({f"val_{k}": v for k, v in validate(model, val_set, task, class_names).items()})
        record["seconds"] = round(time.perf_counter() - t0, 3)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        improved = f"val_{metric}" not in record or _better(metric, record, best)  # no validation: keep last
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                   if isinstance(v, float) and k != "seconds"))
        epochs.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train_loss", f"val_{metric}")})
        if improved:
            best, stale = record, 0
            torch.save({"state_dict": model.state_dict(), "epoch": epoch}, out / "best.pt")
        else:
            stale += 1
            if stale >= cfg["patience"]:
                log.info("early stop at epoch %d: no better val_%s for %d epochs", epoch, metric, stale)
                break
    assert best is not None
    return best


# ----- the command ------------------------------------------------------------------------------------
def train(cache: str | Path, prepared: str | Path, task: str, out: str | Path, head: str | None = None,
          config: Mapping[str, Any] | str | Path | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Train a head for `task` ("mg" per clip, "emotion" per video) on the tokens in `cache`.

    Returns the summary (also in out/summary.json): best epoch record, sample counts, split source.
    UserError (one line) when the cache lacks clips of the manifest (unless `allow_missing`), a group
    or view is absent, or the config is bad.
    """
    cfg = resolve_config(task, config, head)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # train.log gets INFO records even when the caller configured no logging; restored afterwards.
    pkg_log = logging.getLogger("migfuse")
    level_before = pkg_log.level
    pkg_log.addHandler(handler)
    if level_before == logging.NOTSET or level_before > logging.INFO:
        pkg_log.setLevel(logging.INFO)
    try:
        with torch_threads(cfg["threads"]):
            return _train(cfg, TokenCache(cache), Path(prepared), out, allow_missing)
    finally:
        pkg_log.removeHandler(handler)
        pkg_log.setLevel(level_before)
        handler.close()


def _train(cfg: dict, cache: TokenCache, prepared: Path, out: Path, allow_missing: bool) -> dict[str, Any]:
    task = cfg["task"]
    manifest = Manifest.load(prepared)
    names = fdata.class_names(task)
    needed = head_class(cfg["head"]).required_inputs(cfg["head_options"])
    inputs = fdata.resolve_inputs(cache, needed, cfg["inputs"])
    plan = fdata.task_splits(manifest, task, cfg["val_fraction"], cfg["seed"], cfg["split_scheme"])
    log.info("task %s, head %s, inputs %s; validation = %s", task, cfg["head"], inputs, plan.source)

    sets: dict[str, fdata.TokenSet] = {}
    for split in ("train", "validation"):
        ids = plan.ids(split)
        labels = fdata.labels_of(manifest, task, ids)
        ids = [i for i, y in zip(ids, labels) if y >= 0]  # unlabelled samples cannot be trained or scored
        ids = fdata.check_coverage(cache, inputs, ids, f"{split}", allow_missing)
        sets[split] = fdata.load_tokens(cache, inputs, ids, fdata.labels_of(manifest, task, ids))
    if not len(sets["train"]):
        raise UserError(f"no labelled training samples for task {task} in {prepared} with cache {cache.path}")

    torch.manual_seed(int(cfg["seed"]))
    model = make_head(cfg["head"], sets["train"].shapes, len(names), **cfg["head_options"])
    n_params = sum(p.numel() for p in model.parameters())
    resolved = {**cfg, "inputs": inputs, "cache": str(cache.path.resolve()), "data": str(prepared.resolve()),
                "split_source": plan.source, "classes": names, "shapes": sets["train"].shapes,
                "input_provenance": {m: cache.group(g).provenance for m, g in inputs.items()}}
    (out / "config.json").write_text(json.dumps(resolved, indent=2))
    (out / "splits.json").write_text(json.dumps({k: v.ids for k, v in sets.items()}))
    log.info("%d train / %d validation samples, %d parameters", len(sets["train"]), len(sets["validation"]), n_params)

    t0 = time.perf_counter()
    best = fit(model, sets["train"], sets["validation"], cfg, out, names)
    summary = {"best": best, "n_train": len(sets["train"]), "n_validation": len(sets["validation"]),
               "validation_source": plan.source, "parameters": n_params,
               "train_seconds": round(time.perf_counter() - t0, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("best epoch %d (%s); run in %s", best["epoch"], plan.source, out)
    return summary
