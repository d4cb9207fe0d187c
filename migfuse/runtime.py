"""Where and how a command runs its models: one frozen `Runtime`, resolved once per command.

    from migfuse.runtime import Runtime
    runtime = Runtime.resolve(device="auto", precision="auto")     # UserError on a bad name, before any work
    x = runtime.to_device(batch)                                   # pinned, non-blocking on CUDA
    with torch.inference_mode(), runtime.autocast():
        y = model(x)
    provenance["compute"] = runtime.record()

Every command that runs a model (the extract commands, `backbone run`, both backbone trainers,
`fuse train`, `demo`) takes the same options for it (`--device --precision --compile --threads
--trust-checkpoint`, declared once in `migfuse.commands.options`) and resolves them here. The
rules, each written once:

* device: "auto" is CUDA when torch has it, else the CPU; under torchrun (LOCAL_RANK set) "auto"
  and "cuda" mean `cuda:LOCAL_RANK`, so each rank has its own GPU;
* precision: "auto" is bf16 where the device does bf16 matrix products in hardware (a CUDA device
  that supports bf16, or a CPU with Intel AMX), else fp32; fp32 means no autocast;
* ranks: RANK / WORLD_SIZE / LOCAL_RANK of a torchrun launch (rank 0 of 1 without one); `main`
  is rank 0, `process_group()` joins and leaves the launch's process group;
* checkpoint trust: `trust_checkpoint` travels with the runtime into every checkpoint reader
  (`read_checkpoint(path, trusted=runtime.trust_checkpoint)`), never through a global.

Importing this module does not import torch (the command line starts without it); resolving does.
"""
from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from migfuse.errors import UserError

log = logging.getLogger(__name__)


class Precision(StrEnum):
    """Forward precision: "auto" (resolved by `resolve_precision`), fp32 (no autocast), or autocast
    to bf16 / fp16."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def cpu_has_amx() -> bool:
    """True when this CPU has Intel AMX (Sapphire Rapids and later), which does bf16 matrix products
    in hardware: there bf16 autocast runs MViTv2-S 2.4x faster than fp32 (0.60 against 1.46 s per
    clip on 2 cores, benchmarks/RESULTS.md "demo"). Asked of torch's CPU feature probe, which is
    private: False if it is missing or fails."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # an older torch, or a probe that fails on an unusual CPU: the safe answer
        return False


def resolve_device(requested: str | None = "auto", env: Mapping[str, str] | None = None) -> str:
    """The torch device of this process's models, said in one log line when something was decided.

    "auto": CUDA when torch has it, else CPU. "cuda" (or auto on a CUDA machine) under torchrun
    (LOCAL_RANK set): `cuda:LOCAL_RANK`, so each rank has its own GPU. "cuda:N" is taken as given.

    Raises:
        UserError: CUDA asked for on a torch without it, a LOCAL_RANK beyond the visible GPUs, or an
            unknown device name.
    """
    import torch

    env = os.environ if env is None else env
    req = "auto" if requested is None else str(requested).strip().lower()
    if req not in ("auto", "cpu", "cuda") and not (req.startswith("cuda:") and req[5:].isdigit()):
        raise UserError(f"--device {requested!r} is not auto, cpu, cuda or cuda:N")
    has_cuda = torch.cuda.is_available()
    if req == "cpu" or (req == "auto" and not has_cuda):
        device = "cpu"
    elif not has_cuda:
        raise UserError(f"--device {requested} but this torch ({torch.__version__}) has no CUDA device; "
                        "use --device cpu (or auto), or install a CUDA build of torch")
    elif req.startswith("cuda:"):
        if int(req[5:]) >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: only {torch.cuda.device_count()} CUDA devices are visible")
        device = req
    elif "LOCAL_RANK" in env:
        local = int(env["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                            "start torchrun with --nproc_per_node at most the number of GPUs")
        device = f"cuda:{local}"
    else:
        device = "cuda"
    # a debug line: the commands say where they run in their own first line, after their cheap checks,
    # so that an error a user caused stays the only line
    log.debug("device: %s (asked for %s%s)", device, req,
              f", LOCAL_RANK {env['LOCAL_RANK']}" if "LOCAL_RANK" in env else "")
    return device


def resolve_precision(precision: str | Precision | None, device: str) -> Precision:
    """The one "auto" rule: bf16 where `device` does bf16 in hardware (a CUDA device with bf16
    support, or a CPU with AMX), else fp32. A named precision is taken as given.

    Raises:
        UserError: an unknown name.
    """
    try:
        chosen = Precision(str(precision or "auto").lower())
    except ValueError:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(p.value for p in Precision)}") from None
    if chosen is not Precision.AUTO:
        return chosen
    return Precision.BF16 if bf16_in_hardware(device) else Precision.FP32


def bf16_in_hardware(device: str) -> bool:
    """Does `device` ("cpu", "cuda", "cuda:N") run bf16 matrix products in hardware?"""
    import torch

    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_has_amx()


def launch_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) of a torchrun launch; (0, 1, 0) without one.

    Raises:
        UserError: RANK / WORLD_SIZE that are not integers, or a RANK outside 0..WORLD_SIZE-1.
    """
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
        local = int(env.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        raise UserError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} / "
                        f"LOCAL_RANK={env.get('LOCAL_RANK')!r} in the environment are not integers; "
                        "check the launcher") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world}) in the environment; "
                        "check the launcher (torchrun sets both)")
    return rank, world, local


@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs its models; make one with `Runtime.resolve`.

    device: a resolved torch device ("cpu", "cuda", "cuda:N"); precision: fp32, bf16 or fp16 (never
    auto); compile: `torch.compile` the model (`maybe_compile`); threads: torch CPU threads while a
    model runs (`cpu_threads`; None = torch's default); trust_checkpoint: the user vouched for the
    command's checkpoint files (`--trust-checkpoint`: unpickled fully); rank / world / local_rank:
    this process's place in a torchrun launch.
    """

    device: str = "cpu"
    precision: Precision = Precision.FP32
    compile: bool = False
    threads: int | None = None
    trust_checkpoint: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def resolve(cls, device: str | None = "auto", precision: str | Precision | None = "auto",
                compile: bool = False, threads: int | None = None, trust_checkpoint: bool = False,
                env: Mapping[str, str] | None = None) -> "Runtime":
        """Resolve the command's options (one line logged for each decision).

        Raises:
            UserError: a bad device, precision, thread count or torchrun environment; raised before
                the command writes anything.
        """
        if threads is not None and int(threads) < 1:
            raise UserError(f"--threads {threads} must be 1 or more (leave it out for torch's default)")
        rank, world, local = launch_ranks(env)
        resolved = resolve_device(device, env)
        chosen = resolve_precision(precision, resolved)
        if str(precision or "auto").lower() == "auto":
            log.debug("precision: %s (auto: %s)", chosen,
                      "bf16 in hardware" if chosen is Precision.BF16 else "no bf16 in hardware")
        return cls(device=resolved, precision=chosen, compile=bool(compile),
                   threads=int(threads) if threads is not None else None, trust_checkpoint=bool(trust_checkpoint),
                   rank=rank, world=world, local_rank=local)

    # -- where --------------------------------------------------------------------------------------
    @property
    def device_type(self) -> str:
        """"cpu" or "cuda" (the device without its index)."""
        return str(self.device).split(":")[0]

    @property
    def on_gpu(self) -> bool:
        return self.device_type == "cuda"

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints reports and writes shared files."""
        return self.rank == 0

    def to_device(self, x: np.ndarray) -> Any:
        """A CPU array as a tensor on the runtime's device; on CUDA through pinned memory with a
        non-blocking copy, so the copy overlaps the kernels queued before it."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.on_gpu:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    # -- how ----------------------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        """The autocast context of a forward (none for fp32)."""
        if self.precision in (Precision.FP32, Precision.AUTO):
            return nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision is Precision.BF16 else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def maybe_compile(self, fn: Callable) -> Callable:
        """`fn` through `torch.compile` when `compile` is set (static shapes: callers fix the batch)."""
        if not self.compile:
            return fn
        import torch

        log.info("torch.compile: the first batch compiles the model (tens of seconds); later ones run fused")
        return torch.compile(fn, dynamic=False)

    @contextmanager
    def cpu_threads(self) -> Iterator[None]:
        """Run with `threads` torch CPU threads (unchanged when None), restored afterwards."""
        if self.threads is None:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def record(self) -> dict[str, Any]:
        """What of the runtime goes into provenance: the outputs depend on it (compile and threads
        give the same maths, so they are not part of it)."""
        return {"device": self.device_type, "precision": str(self.precision)}

    # -- ranks --------------------------------------------------------------------------------------
    @contextmanager
    def process_group(self, backend: str | None = None) -> Iterator[bool]:
        """Join the torchrun launch's process group for the block (no-op without one).

        backend: None = NCCL on a GPU, gloo on the CPU; "gloo" for a CPU-side barrier only.
        Yields True when a group is active. A group this call created is closed on the way out, after
        a last barrier, so no rank is torn down while another is still writing its report.
        """
        if self.world <= 1:
            yield False
            return
        import datetime

        import torch
        import torch.distributed as dist

        owns = not dist.is_initialized()
        if owns:
            chosen = backend or ("nccl" if self.on_gpu else "gloo")
            if chosen == "nccl":
                torch.cuda.set_device(torch.device(self.device))
            # ranks wait for each other as long as the slowest takes (the default 30 min would fail a
            # rank that finished its share early)
            dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=_RANKS_TIMEOUT_S))
        ok = False
        try:
            yield True
            ok = True
        finally:
            if owns and dist.is_initialized():
                if ok:
                    dist.barrier()
                dist.destroy_process_group()

    def all_sum(self, values: list[float]) -> list[float]:
        """`values` summed over all ranks (the values themselves without a launch or group)."""
        import sys

        dist = getattr(sys.modules.get("torch"), "distributed", None)
        if self.world <= 1 or dist is None or not dist.is_initialized():
            return list(values)
        import torch

        on = self.device if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=on)
        dist.all_reduce(t)
        return t.tolist()


# Ranks wait at the end for as long as the slowest takes: two weeks.
_RANKS_TIMEOUT_S = 14 * 24 * 3600
