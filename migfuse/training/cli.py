"""The command-line options every `train` command shares, declared once (torch-free to import).

    from migfuse.training.cli import (BatchSizeOpt, ConfigOpt, DeviceOpt, EpochsOpt, LrOpt, OverwriteOpt,
                                      SeedOpt, SetOpt, common_flags)

    @app.command("video")
    def train_video(data: ..., out: ..., config: ConfigOpt = None, set_: SetOpt = None,
                    epochs: EpochsOpt = None, lr: LrOpt = None, seed: SeedOpt = None,
                    batch_size: BatchSizeOpt = None, device: DeviceOpt = None,
                    overwrite: OverwriteOpt = False) -> None:
        cfg = resolve_config(DEFAULTS, config=config, sets=set_ or (),
                             flags=common_flags(epochs=epochs, lr=lr, seed=seed, batch_size=batch_size,
                                                device=device))

Every value option defaults to None, "not given", so a --config file is not overridden by a default:
the order is DEFAULTS <- --config <- --set <- these options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Settings file, JSON or TOML (.toml): keys of the trainer's DEFAULTS (see the docs page); "
                     "a run folder's config.json works too.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override one setting (repeatable); VALUE is read as JSON when it parses: "
                                       "--set lr=3e-4 --set epochs=30 (the settings are listed in the trainer's docs page).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs in all (a resumed run goes on "
                                                  "to this). Default: the trainer's.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate. Default: the trainer's.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed of weights, shuffling and sampling "
                                                "(default 0).")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Samples per training step. "
                                                     "Default: the trainer's.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when torch has it, else CPU; the default), cpu, cuda or cuda:N.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Delete the run already in --out (of other settings) and train from scratch. Without it "
                        "such a folder is refused, and the same settings resume from OUT/last.pt.")]


def common_flags(**values: Any) -> dict[str, Any]:
    """The options that were given (not None), by setting name, for `resolve_config(flags=...)`."""
    return {k: v for k, v in values.items() if v is not None}
