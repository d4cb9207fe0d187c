"""The training vocabulary every migfuse trainer shares: balance words, class weights, the lr schedule,
the words of earlier releases, and what a trainer takes from the `Runtime`.

    from migfuse.training.recipe import check_balance, class_weights, warmup_cosine
    check_balance(cfg["balance"])                               # loss | sampler | none, else UserError
    w = class_weights(labels, num_classes, power=0.5)            # (C,) float32, mean 1 over present classes
    LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))     # multiplier of the peak lr

Settings of earlier releases are read wherever settings are read (a --config file, --set, a run
folder's config.json read back as --config or resumed): `upgrade_settings` puts them in today's words
("balance": "weights" means "loss"; "device" and "precision" are the --device / --precision command
options now, so a value of theirs in a file is not used), and `training.config.resolve_config` says
so in one warning line.

Torch is imported only by `class_weights`: the command line imports this module for the balance words.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from migfuse.errors import UserError

#: How a trainer meets the long tail (iMiGUE's class 99 "non-MG" is about a quarter of the clips):
#: "loss" = class-weighted cross-entropy, "sampler" = class-balanced draws, "none".
BALANCE = ("loss", "sampler", "none")

#: Words of earlier releases, still read: setting -> {old word: today's word}. The skeleton and video
#: trainers called the class-weighted loss "weights".
OLD_WORDS: dict[str, dict[str, str]] = {"balance": {"weights": "loss"}}

#: Settings that are command options now (`--device`, `--precision`: the command's `Runtime`). A file
#: or --set naming one is read, said once and not used; a run folder that has them still resumes.
RUNTIME_SETTINGS = ("device", "precision")


def check_balance(value: Any, where: str = "the config") -> None:
    """UserError (one line, naming the choices) unless `value` is one of BALANCE. Old words are
    already today's words here (`upgrade_settings`, applied wherever settings are read)."""
    if value not in BALANCE:
        raise UserError(f"{where}: balance must be one of {', '.join(BALANCE)}, not {value!r}")


def upgrade_settings(layer: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`layer` (settings from one source) in today's words, and a note per change made.

    Drops the RUNTIME_SETTINGS the trainer's `defaults` do not have, and maps the OLD_WORDS of
    settings it has. Anything else passes unchanged (the caller checks keys and types).
    """
    out, notes = dict(layer), []
    dropped = [k for k in RUNTIME_SETTINGS if k in out and k not in defaults]
    for key in dropped:
        del out[key]
    if dropped:
        names = " and ".join(dropped)
        options = " / ".join(f"--{k}" for k in dropped)
        notes.append(f"{names} {'is a command option' if len(dropped) == 1 else 'are command options'} now "
                     f"({options}); the value there is not used")
    for key, renamed in OLD_WORDS.items():
        value = out.get(key)
        if key in defaults and isinstance(value, str) and value in renamed:
            out[key] = renamed[value]
            notes.append(f"{key} {value!r} is now called {renamed[value]!r}")
    return out, notes


def class_weights(labels: Any, num_classes: int, power: float) -> Any:
    """(num_classes,) float32 torch tensor of class weights ~ count^-power, mean 1 over the classes
    present in `labels` (absent classes get 0).

    power 0.5 = inverse square root of the frequency (the loss weights of every trainer), 1 = inverse
    frequency (every class equally likely when used as sampling weights). Computed in float64 as
    `fuse train` always did; torch's `count ** -0.5` equals `1 / sqrt(count)` exactly, so the skeleton
    and video trainers' earlier numpy weights are the same float32 numbers (tests/test_training.py).

    Args:
        labels: (N,) integer class indices, a numpy array or torch tensor.
    """
    import torch

    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=num_classes).double()
    w = torch.where(counts > 0, counts.clamp(min=1) ** -power, torch.zeros_like(counts))
    return (w / w[counts > 0].mean()).float()


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0,
                  cosine_from_start: bool = False) -> float:
    """Multiplier of the peak learning rate at `step` (0-based, per optimiser step or per epoch).

    Default: linear warm-up (step + 1) / warmup over the first `warmup` steps (none when 0), then a
    cosine from 1 down to `min_ratio` at `total` (`fuse train`, `backbone train video`).

    cosine_from_start: the cosine spans the whole run from step 0 (to `min_ratio` at `total`), and
    the warm-up ramp min(1, (step + 1) / warmup) scales its part above `min_ratio` (`backbone train
    skeleton`, per epoch with warmup 2: half the lr in the first epoch).

    The operations are those of each trainer's earlier formula, in their order, so every trainer's
    multipliers are unchanged to the last bit (tests/test_training.py compares them).
    """
    if cosine_from_start:
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return min_ratio + (1 - min_ratio) * ramp * 0.5 * (1 + math.cos(math.pi * step / total))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def training_runtime(runtime: Any = None) -> Any:
    """The `Runtime` a trainer runs on: the one given, or `Runtime()` (the CPU in fp32).

    Raises:
        UserError: fp16, which training would need loss scaling for (bf16 has fp32's range).
    """
    from migfuse.runtime import Precision, Runtime

    runtime = runtime if runtime is not None else Runtime()
    if runtime.precision is Precision.FP16:
        raise UserError("--precision fp16: the trainers run in fp32 or bf16 (fp16 gradients would need loss "
                        "scaling); use --precision bf16 or fp32")
    return runtime
