"""`migfuse demo`: the whole pipeline on a generated dataset."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from migfuse.commands.options import SEED_MAX, RuntimeOptions, path_option, with_options


@with_options(RuntimeOptions)
def demo(
    runtime: RuntimeOptions,
    out: Annotated[Path, path_option(use="folder", help="Folder for the generated dataset and every artifact "
                                                        "(reused by a rerun with the same --seed and --precision).")
                   ] = Path("demo_out"),
    seed: Annotated[int, typer.Option(max=SEED_MAX, help="Seed of the generated dataset (0 or more).")] = 0,
) -> None:
    """Run the whole pipeline on a generated dataset (5 videos, 40 clips; 74 s on 2 idle cores of an
    Intel Xeon with AMX, ~3.5 min on older 2-core CPUs, longer on a busy machine: see
    benchmarks/RESULTS.md "demo") and print where each artifact is: generate -> prepare -> extract video, context,
    skeleton, face -> views -> CMTF and InterFusion -> predict -> MiGA 2025 and emotion zips.
    The summary gives each trained model's held-out accuracy beside chance, with n, and the stage
    timings. Video and face backbones use random weights; the skeleton backbones are trained.
    --precision applies to the MViTv2-S and SwinFace forwards; the demo's small trainings run in fp32."""
    from migfuse.demo import run_demo
    from migfuse.errors import UserError

    if seed < 0:  # before the runtime is resolved: nothing is said or written for a bad seed
        raise UserError(f"--seed {seed}: the seed must be 0 or more")
    started = time.perf_counter()
    artifacts, summary = run_demo(out, seed=seed, runtime=runtime.resolve())
    width = max(len(k) for k in artifacts)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        typer.echo(f"  {name:<{width}}  {path}")
    typer.echo("\n".join(summary))
    typer.echo(f"next: migfuse cache info {out / 'cache.zarr'}   |   "
               f"migfuse fuse eval {out / 'runs' / 'cmtf'} --split validation")
