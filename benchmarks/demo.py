"""Wall time of `migfuse demo` as a new user runs it: median of N runs, each in a fresh --out folder.

    .venv/bin/python benchmarks/demo.py [--runs 3] [--baseline fp32|none] [--keep DIR]

Each run is `python -m migfuse.cli demo --out <fresh folder>` in a subprocess with OMP_NUM_THREADS
unset (as in a new user's shell, so torch uses every core). Records the machine's load average
(os.getloadavg) before and after each run, the CPU time of the demo processes, the per-stage timings
the demo prints, and its held-out accuracy lines; prints a Markdown table for benchmarks/RESULTS.md.

The baseline, measured in the same session with runs interleaved (so both meet the same load), is
the demo with `--precision fp32`: the demo before it chose bf16 on CPUs that compute it in hardware.
On a CPU without AMX / AVX512-BF16 both are fp32 and the ratio is about 1.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def run_once(out: Path, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "migfuse.cli", "demo", "--out", str(out), *extra], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the demo and its workers: on a shared machine wall time grows with the others'
    # load, CPU time much less; CPU time / cores is the floor of the wall time on an idle machine
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"demo failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    timings = next(line for line in lines if line.startswith("timings: "))
    stages = {k: float(v) for k, v in re.findall(r"([a-z+ ]+?) (\d+) s(?:, |$)", timings[len("timings: "):])}
    accuracy = [line for line in lines if "% (" in line and "chance" in line]
    accuracy += [line for line in lines if line.startswith("backbones: ")]
    return {"wall": wall, "cpu": cpu, "load_before": before, "load_after": os.getloadavg(), "stages": stages,
            "accuracy": accuracy}


def table(title: str, results: list[dict]) -> None:
    print(f"\n{title}\n\n| run | wall s | CPU s | load 1-min before / after | "
          + " | ".join(results[0]["stages"]) + " |")
    print("|---|---|---|---|" + "---|" * len(results[0]["stages"]))
    for k, r in enumerate(results):
        print(f"| {k + 1} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} | "
              + " | ".join(f"{v:.0f}" for v in r["stages"].values()) + " |")
    print(f"\nmedian wall time: {statistics.median(r['wall'] for r in results):.0f} s, median CPU time "
          f"{statistics.median(r['cpu'] for r in results):.0f} s, over {len(results)} runs")
    print("held-out accuracy (last run):\n" + "\n".join(results[-1]["accuracy"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", choices=("fp32", "none"), default="fp32",
                        help="also run the demo with --precision fp32, interleaved, and print the ratio")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="migfuse_demo_bench_"))
    variants = {"demo (default, --precision auto)": []}
    if args.baseline == "fp32":
        variants["baseline: demo --precision fp32"] = ["--precision", "fp32"]
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for k in range(args.runs):
        for v, (name, extra) in enumerate(variants.items()):
            r = run_once(base / f"run{k}_{v}", extra)
            results[name].append(r)
            print(f"{name} run {k + 1}/{args.runs}: {r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU, "
                  f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}", flush=True)
            print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items()), *r["accuracy"], sep="\n  ",
                  flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{stamp}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name, rs in results.items():
        table(name, rs)
    if len(results) == 2:
        medians = [statistics.median(r["wall"] for r in rs) for rs in results.values()]
        print(f"\nratio (baseline median / default median): {medians[1] / medians[0]:.2f}x")


if __name__ == "__main__":
    main()
