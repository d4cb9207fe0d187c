"""Failures at iMiGUE scale: `extract skeleton` / `extract video` over the real annotation's 18,498
clips when 1 of its 359 videos has its input (what ../shared/imigue gives: the labels and video
298's OpenPose skeleton), through the command line as a user runs it.

    .venv/bin/python benchmarks/extract_failures.py [--baseline-ref f37b99d] [--baseline-shard 0/20]

Each run is timed end to end (interpreter start included) and reports the rows recorded as failed
(`cache info`), the files in the cache and the console lines. The named baseline is the same command
on the code of `--baseline-ref` (one file per row and array, one write and one warning per failed
row), over the rows of `--baseline-shard` only (it takes about 10 minutes on all of them); the
ratio compares its rows/s with this version's on the same shard, measured in the same run.
Prints a Markdown table for benchmarks/RESULTS.md. Needs the shared folder (MIGFUSE_SHARED or
../shared) and git (for the baseline's code).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from safe_extract import extract_tar  # noqa: E402  (tests/: the tar reader the tests use)
from shared_paths import IMIGUE  # noqa: E402


def cli(code: Path, *args: str, cwd: Path) -> tuple[float, int, str]:
    """Run `python -m migfuse ARGS` on the code under `code`: (seconds, exit code, console output)."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "migfuse", *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stdout + res.stderr


def files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def failed_rows(cache: Path, group: str) -> int:
    """Rows recorded as failed, read from the cache itself (this version's reader reads both formats)."""
    from migfuse.data_cache.store import TokenCache

    return len(TokenCache(cache).group(group).failures())


def make_dataset(tmp: Path) -> Path:
    """The Oulu layout of the shared sample: labels of 359 videos, the skeleton of video 298 only."""
    root = tmp / "imigue"
    (root / "Label").mkdir(parents=True)
    (root / "Label" / "labels_20200831.csv").symlink_to(IMIGUE / "labels_20200831.csv")
    (root / "Label" / "raw").symlink_to(IMIGUE / "label_raw", target_is_directory=True)
    skeletons = root / "Data" / "skeleton" / "raw"
    skeletons.mkdir(parents=True)
    with tarfile.open(IMIGUE / "openpose_298.tar.gz") as tar:
        extract_tar(tar, skeletons)
    return root


def random_agcn(path: Path) -> Path:
    """A 2s-AGCN joint checkpoint of the published width (base 64, 64 frames) with seeded random weights."""
    import torch

    from migfuse.finetune.skeleton import TrainConfig, build_model

    cfg = TrainConfig(stream="joint", length=64, base_channels=64)
    torch.manual_seed(0)
    meta = {"migfuse": {"arch": "agcn", "stream": "joint", "layout": "imigue",
                        "preprocess": cfg.preprocess().to_dict()}}
    torch.save({"meta": meta, "state_dict": build_model(cfg).state_dict()}, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-ref", default="f37b99d", help="git commit of the baseline code")
    ap.add_argument("--baseline-shard", default="0/20", help="the rows the baseline and its comparison run on")
    args = ap.parse_args()
    if not IMIGUE.is_dir():
        sys.exit(f"{IMIGUE} is not here: set MIGFUSE_SHARED to the shared folder")

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        base_code = tmp / "baseline"
        base_code.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "migfuse"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_code)], input=archive, check=True)

        root = make_dataset(tmp)
        prepared = tmp / "prepared"
        secs, rc, out = cli(ROOT, "data", "prepare", "--root", str(root), "--out", str(prepared), cwd=tmp)
        assert rc == 0, out
        print(f"data prepare: {secs:.0f} s")
        ckpt = random_agcn(tmp / "agcn_joint.pt")
        skeleton = ["extract", "skeleton", "--data", str(prepared), "--checkpoint", str(ckpt), "--device", "cpu"]
        video = ["extract", "video", "--data", str(prepared), "--device", "cpu"]

        runs = [  # (name, code, args, group)
            (f"baseline {args.baseline_ref}: extract skeleton --shard {args.baseline_shard}", base_code,
             [*skeleton, "--shard", args.baseline_shard], "joint/agcn"),
            (f"this: extract skeleton --shard {args.baseline_shard}", ROOT,
             [*skeleton, "--shard", args.baseline_shard], "joint/agcn"),
            ("this: extract skeleton (all clips)", ROOT, skeleton, "joint/agcn"),
            ("this: extract skeleton --only-available", ROOT, [*skeleton, "--only-available"], "joint/agcn"),
            ("this: extract skeleton --split test", ROOT, [*skeleton, "--split", "test"], "joint/agcn"),
            ("this: extract video (no video file at all)", ROOT, video, "video/mvit_v2_s"),
        ]
        table = ["| run | rows done | rows failed (recorded) | s | rows/s | files in cache | console lines | exit |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        rates: dict[str, float] = {}
        outputs: dict[str, str] = {}
        for k, (name, code, cmd, group) in enumerate(runs):
            cache = tmp / f"cache{k}.zarr"
            secs, rc, out = cli(code, *cmd, "--cache", str(cache), cwd=tmp)
            failed = failed_rows(cache, group) if (cache / "zarr.json").exists() else 0
            head = out.splitlines()[0] if out.strip() else ""
            counts = re.search(r": (\d+) rows, (\d+) written now", out)
            rows, done = (int(counts[1]), int(counts[2])) if counts else (0, 0)
            rates[name] = rows / secs
            outputs[name] = out
            lines = len(out.strip().splitlines())
            table.append(f"| {name} | {done:,} | {failed:,} | {secs:.1f} | {rows / secs:,.0f} | {files_in(cache):,} "
                         f"| {lines:,} | {rc} |")
            if rc not in (0, 1):
                table.append(f"| ^ said: `{head[:150]}` | | | | | | | |")

        baseline, same = (rates[runs[0][0]], rates[runs[1][0]])
        print(f"\n{datetime.now(timezone.utc):%Y-%m-%d} {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
        print("\n".join(table))
        print(f"\nrows/s on shard {args.baseline_shard}: this / baseline {args.baseline_ref} = {same / baseline:.1f}x")
        for name in (runs[2][0], runs[5][0]):
            print(f"\nconsole of `{name}`:\n```\n{outputs[name].strip()}\n```")


if __name__ == "__main__":
    main()
