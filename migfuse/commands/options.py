"""Options that several commands share, declared once so that their names and help never drift.

Two kinds:
* option groups: a frozen dataclass whose fields are typer options, added to a command with
  `@with_options(RuntimeOptions)`; the command receives one object (`runtime: RuntimeOptions`)
  instead of five parameters. Every command that runs a model takes `RuntimeOptions` (--device,
  --precision, --compile, --threads, --trust-checkpoint); the extract commands take
  `ExtractOptions` (--batch-size, --workers, --shard, --retry-failed, --only-available, --split,
  --scheme) too.
* single options (`DataOpt`, `CacheOpt`, `OutOpt`...) and the closed choices as `StrEnum`s, so
  `--help` lists the values.
* value rules: every path option is declared with `path_option` / `path_argument` (an empty path is
  refused, and an output folder that is a file or an output file that is a folder), numbers carry
  typer ranges whose bounds are the limits below, and `--lr` and names have their own parsers. A bad
  value is one usage line naming the option, before any work starts.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer

from migfuse.runtime import Precision
# the limits the trainers' settings have too (one definition, torch-free; reasons given there)
from migfuse.training.config import BATCH_MAX, EPOCHS_MAX, SEED_MAX, THREADS_MAX, WORKERS_MAX

# ---------------------------------------------------------------------------------------------
# value rules
# ---------------------------------------------------------------------------------------------

#: What a path option names: an input to read (its reader checks it), an existing folder to read, an
#: output folder, or an output file.
PathUse = Literal["read", "dir", "folder", "file"]


def parse_path(use: PathUse, text: str | Path) -> Path:
    """The typed path, checked for `use` (typer.BadParameter: one usage line naming the option).

    Refused for every use: an empty path ("" would be the current folder) and a NUL byte. An output
    folder ("folder") must not be an existing file; an output file ("file") not an existing folder; an
    input folder ("dir") must exist."""
    if isinstance(text, Path):  # a default, not typed
        return text
    if not text.strip():
        raise typer.BadParameter("the path is empty: name a file or folder (\".\" for the current folder)")
    if "\x00" in text:
        raise typer.BadParameter(f"{text!r} holds a NUL character, which no path can")
    path = Path(text)
    if use == "folder" and path.exists() and not path.is_dir():
        raise typer.BadParameter(f"cannot use {path}: a file is in the way: name a folder, or move that file")
    if use == "dir" and not path.is_dir():
        raise typer.BadParameter(f"{path} is not a folder" + (" (it is a file)" if path.exists() else
                                                              " (it does not exist): check the path"))
    if use == "file" and path.is_dir():
        raise typer.BadParameter(f"cannot use {path}: it is a folder, not a file: name a file")
    return path


def path_option(*decls: str, use: PathUse = "read", **kwargs: Any) -> Any:
    """`typer.Option` for a path, checked by `parse_path(use)`: the one rule of every path option."""
    return typer.Option(*decls, parser=functools.partial(parse_path, use), metavar=kwargs.pop("metavar", "<path>"),
                        **kwargs)


def path_argument(use: PathUse = "read", **kwargs: Any) -> Any:
    """`typer.Argument` for a path, checked by `parse_path(use)`."""
    return typer.Argument(parser=functools.partial(parse_path, use), **kwargs)


def parse_positive(text: str) -> float:
    """A float option that must be finite and > 0 (e.g. --lr): nan, inf, 0 and negatives are refused."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{text} must be a finite number greater than 0")
    return value


#: Shards of one extraction: more than 10,000 parts of a dataset of a few hundred videos is a typo.
SHARDS_MAX = 10_000


def parse_shard(text: str) -> str:
    """--shard I/N with 0 <= I < N <= SHARDS_MAX (digits only), kept as typed."""
    i, sep, n = text.partition("/")
    if not (sep and i.isascii() and i.isdigit() and n.isascii() and n.isdigit() and int(i) < int(n) <= SHARDS_MAX):
        raise typer.BadParameter(f"{text!r} is not I/N with 0 <= I < N <= {SHARDS_MAX} (e.g. --shard 0/4 for the "
                                 "first of four, --shard $SLURM_ARRAY_TASK_ID/N)")
    return text


def parse_word(text: str) -> str:
    """A free-text value that must not be empty (e.g. a backbone's --layout): "" is refused, not a default."""
    if not text.strip():
        raise typer.BadParameter("the value is empty")
    return text


def parse_name(text: str) -> str:
    """A name that becomes one folder (a view, a run): letters, digits, '_', '-', '.'; no path, no '..'."""
    if not text or text in (".", "..") or not all(c.isalnum() or c in "_-." for c in text) or len(text) > 100:
        raise typer.BadParameter(f"{text!r} is not a name: use up to 100 letters, digits, '_', '-' or '.', "
                                 "without '/' or '..'")
    return text


# ---------------------------------------------------------------------------------------------
# closed choices (the values a user types; `--help` lists them)
# ---------------------------------------------------------------------------------------------
class Task(StrEnum):
    """mg: 32 micro-gesture classes, per clip; emotion: Win/Lose, per video."""

    mg = "mg"
    emotion = "emotion"


class Split(StrEnum):
    train = "train"
    validation = "validation"
    test = "test"


class Scheme(StrEnum):
    """Manifest columns that hold a split."""

    split_miga = "split_miga"
    split_cs = "split_cs"
    split_emotion = "split_emotion"


class DatasetLayout(StrEnum):
    """How a dataset download is laid out (`data prepare` detects it with auto)."""

    auto = "auto"
    oulu = "oulu"
    miga2025 = "miga2025"
    miga2023 = "miga2023"


class SynthLayout(StrEnum):
    miga2025 = "miga2025"
    oulu = "oulu"
    miga2023 = "miga2023"


class SkeletonLayout(StrEnum):
    """Skeleton graphs (joints kept and their edges); see docs/skeleton.md."""

    imigue = "imigue"
    openpose22 = "openpose22"
    openpose_18 = "openpose-18"
    coco_17 = "coco-17"
    ntu_25 = "ntu-25"
    nturgb_d = "nturgb+d"


class PysklLayout(StrEnum):
    """The 2-D skeleton graphs `data export-pyskl` writes (pyskl's 'coco' and 'openpose', and migfuse's)."""

    coco_17 = "coco-17"
    openpose_18 = "openpose-18"
    openpose22 = "openpose22"
    imigue = "imigue"


class PoseScope(StrEnum):
    """Which frames `data pose` estimates: those of the clips, or every frame of each video."""

    clips = "clips"
    videos = "videos"


class Stream(StrEnum):
    joint = "joint"
    bone = "bone"


class Arch(StrEnum):
    agcn = "agcn"
    aagcn = "aagcn"


class Decoder(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class FaceScope(StrEnum):
    clip = "clip"
    context = "context"


class LateMode(StrEnum):
    prob = "prob"
    log = "log"


def choice(values: list[str] | tuple[str, ...], renamed: dict[str, str] | None = None,
           option: str = "") -> dict[str, Any]:
    """typer.Option keywords for a closed choice that also accepts old spellings (`renamed`: old ->
    new) with one deprecation line, e.g. `typer.Option("--balance", **choice(BALANCE, {"weights": "loss"}))`.
    `--help` lists only the current values."""
    renamed = renamed or {}

    def parse(text: str) -> str:
        if text in renamed:
            from migfuse.commands.app import deprecated

            deprecated(f"{option} {text}".strip(), f"{option} {renamed[text]}".strip())
            return renamed[text]
        if text not in values:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(values)}")
        return text

    return {"parser": parse, "metavar": "<" + "|".join(values) + ">"}


# ---------------------------------------------------------------------------------------------
# option groups
# ---------------------------------------------------------------------------------------------
def with_options(group: type, name: str | None = None) -> Callable[[Callable], Callable]:
    """Add the fields of the option-group dataclass `group` to a command's options.

    The command declares one parameter `<name>: <group>` (default: the group's name in snake case,
    e.g. `runtime: RuntimeOptions`) and receives the group filled from the command line. Typer reads
    the command's signature, so the wrapper shows it the command's own parameters with the group's
    fields in place of that one.
    """
    fields = dataclasses.fields(group)
    hints = typing.get_type_hints(group, include_extras=True)

    def wrap(fn: Callable) -> Callable:
        param = name or _snake(group.__name__).removesuffix("_options") or "options"
        sig = inspect.signature(fn, eval_str=True)
        if param not in sig.parameters:
            raise TypeError(f"{fn.__name__} must take a parameter {param!r} for {group.__name__}")
        own = [p for n, p in sig.parameters.items() if n != param]
        clash = {f.name for f in fields} & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} clash with {group.__name__}")
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
                 for f in fields]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
            return fn(*args, **kwargs, **{param: group(**values)})

        hints_fn = typing.get_type_hints(fn, include_extras=True)
        command.__signature__ = sig.replace(parameters=own + added)  # type: ignore[attr-defined]
        command.__annotations__ = {**{k: v for k, v in hints_fn.items() if k != param},
                                   **{f.name: hints[f.name] for f in fields}}
        del command.__wrapped__  # typer must read the new signature, not fn's
        return command

    return wrap


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when torch has it, else the CPU), cpu, cuda or cuda:N. Under torchrun, auto and "
                     "cuda give each rank cuda:LOCAL_RANK.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", case_sensitive=False,
    help="Autocast precision of the models: auto = bf16 where the device does bf16 in hardware (a CUDA GPU with "
         "bf16, or a CPU with Intel AMX), else fp32. Recorded in the outputs' provenance. The trainers take auto, "
         "fp32 or bf16 (fp16 would need loss scaling).")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model: fused kernels for long GPU runs (the first batch compiles, about "
                      "a minute for MViTv2-S). Same outputs to float rounding; not recorded.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, max=THREADS_MAX, show_default="torch's, one per core (fuse train: 1)",
    help="Torch CPU threads while the models run.")]
TrustCheckpointOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Unpickle the command's checkpoint files fully, objects included. This runs any code "
                               "a file names: give it only for files you trust that the safe loader refuses (a "
                               "whole pickled model, a full training checkpoint).")]


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """Where and how a command runs its models (resolved by `migfuse.runtime.Runtime.resolve`)."""

    device: DeviceOpt = "auto"
    precision: PrecisionOpt = Precision.AUTO
    compile: CompileOpt = False
    threads: ThreadsOpt = None
    trust_checkpoint: TrustCheckpointOpt = False

    def resolve(self, precision: Precision | str | None = None) -> Any:
        """The `migfuse.runtime.Runtime` of these options (imports torch; UserError on a bad value).

        `precision` replaces the option's value (a config file's setting the option did not override)."""
        from migfuse.runtime import Runtime

        return Runtime.resolve(device=self.device, precision=precision or self.precision, compile=self.compile,
                               threads=self.threads, trust_checkpoint=self.trust_checkpoint)


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """How the rows of an extraction are scheduled (`migfuse.extract.interface.RunOptions`)."""

    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, max=4096,
        show_default="the track's: on a CPU 4 video clips, 8 context windows, 32 faces, 64 skeleton clips (posec3d "
                     "4); on a GPU 32, 256 for faces and agcn/aagcn skeletons",
        help="Model inputs per forward pass (windows, clips or faces). The model always runs on exactly this many "
             "(padded), so it is recorded in the provenance: resume with the same value.")] = None
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, max=WORKERS_MAX, show_default="the track's CPU value; on a GPU one per CPU core but one",
        help="Loader processes (decoding) running alongside the model; 0 = load in the main process. FFmpeg "
             "threads are shared out among them.")] = None
    shard: Annotated[Optional[str], typer.Option(
        "--shard", parser=parse_shard, metavar="<I/N>",
        help="I/N: process the I-th of N parts (whole videos), e.g. $SLURM_ARRAY_TASK_ID/N. Under "
             "torchrun RANK/WORLD_SIZE are used instead.")] = None
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Also redo rows that failed in an earlier run.")] = False
    only_available: Annotated[bool, typer.Option(
        "--only-available", help="Leave out rows whose input file (video, skeleton) is missing: they are not "
                                 "extracted and not recorded as failed (they stay 'missing' in `cache info`). "
                                 "Without it, each such row is recorded as failed.")] = False
    split: Annotated[Optional[Split], typer.Option(
        "--split", case_sensitive=False, help="Extract only the rows of this split (the manifest column --scheme). "
                                              "The group still holds every row: other splits can follow.")] = None
    scheme: Annotated[Optional[Scheme], typer.Option(
        "--scheme", case_sensitive=False, show_default="split_miga for clips, split_emotion for videos",
        help="The manifest column --split reads.")] = None

    def run_options(self) -> Any:
        from migfuse.errors import UserError
        from migfuse.extract.interface import RunOptions

        if self.scheme and not self.split:
            raise UserError(f"--scheme {self.scheme.value} needs --split (e.g. --split test)")
        return RunOptions(batch_size=self.batch_size, workers=self.workers, shard=self.shard,
                          retry_failed=self.retry_failed, only_available=self.only_available,
                          split=self.split.value if self.split else None,
                          scheme=self.scheme.value if self.scheme else None)


# ---------------------------------------------------------------------------------------------
# single options
# ---------------------------------------------------------------------------------------------
DataOpt = Annotated[Path, path_option("--data", help="PREPARED folder written by `migfuse data prepare`.")]
CacheOpt = Annotated[Path, path_option("--cache", use="folder", help="Token cache CACHE.zarr (created if absent, "
                                                                     "resumed if present).")]
VideoRootOpt = Annotated[Optional[Path], path_option(
    "--video-root", use="dir", envvar="MIGFUSE_VIDEO_ROOT",
    help="Folder the videos are in now, if moved since `data prepare` (env MIGFUSE_VIDEO_ROOT).")]
CacheArg = Annotated[Path, path_argument(metavar="CACHE", help="The token cache folder (CACHE.zarr).")]
RunArg = Annotated[Path, path_argument(metavar="RUN", help="Run folder written by `migfuse fuse train`.")]

# training: every value option defaults to None ("not given"), so a --config file is not overridden by
# a default: the order is DEFAULTS <- --config <- --set <- these options.
ConfigOpt = Annotated[Optional[Path], path_option(
    "--config", help="Settings file, JSON or TOML (.toml): keys of the trainer's DEFAULTS (see the docs page); "
                     "a run folder's config.json works too.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override one setting (repeatable); VALUE is read as JSON when it parses: "
                                       "--set lr=3e-4 --set epochs=30 (the settings are listed in the trainer's "
                                       "docs page).")]
EpochsOpt = Annotated[Optional[int], typer.Option(
    "--epochs", min=1, max=EPOCHS_MAX, show_default="the trainer's",
    help="Epochs in all; the learning-rate schedule spans them. A resumed run goes on to this: more extends "
         "it, fewer than the run was started with is refused (use --overwrite to start again).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", parser=parse_positive, metavar="<float>",
                                                show_default="the trainer's", help="Peak learning rate (> 0).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, max=SEED_MAX, show_default="0",
                                                help="Seed of weights, shuffling and sampling.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, max=BATCH_MAX,
                                                     show_default="the trainer's", help="Samples per training step.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Delete the run already in --out (of other settings) and train from scratch. Without it "
                        "such a folder is refused, and the same settings resume from OUT/last.pt.")]


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """What every trainer takes: its settings (DEFAULTS <- --config <- --set <- the options) and
    --overwrite. Value options default to None, "not given", so a --config file is not overridden."""

    config: ConfigOpt = None
    set_: SetOpt = None
    epochs: EpochsOpt = None
    lr: LrOpt = None
    seed: SeedOpt = None
    batch_size: BatchSizeOpt = None
    overwrite: OverwriteOpt = False

    @property
    def sets(self) -> list[str]:
        """The --set KEY=VALUE strings."""
        return list(self.set_ or ())

    def flags(self, **more: Any) -> dict[str, Any]:
        """The options given (these and a trainer's own `more`), by setting name, for `flags=`."""
        return given(epochs=self.epochs, lr=self.lr, seed=self.seed, batch_size=self.batch_size, **more)


def given(**values: Any) -> dict[str, Any]:
    """The options that were given (not None), by setting name, for `resolve_config(flags=...)`."""
    return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in values.items() if v is not None}
