"""Output checks for benchmarks/gpu_check.sh: token shapes, no NaN, bf16 within tolerance of fp32.

    python benchmarks/gpu_check_verify.py tokens  CACHE GROUP [--dim D] [--array tokens]   every row done,
                                                                          shape, finite
    python benchmarks/gpu_check_verify.py compare CACHE_A CACHE_B GROUP [--tol 0.05] [--min-cos 0.99]
    python benchmarks/gpu_check_verify.py run     RUN_DIR                    a training run folder is whole

Prints one line per check and exits 1 on a failure (the message says what and where).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _group(cache: Path, name: str):
    from migfuse.data_cache.store import TokenCache

    c = TokenCache(cache)
    if not c.has_group(name):
        raise SystemExit(f"FAIL {cache}: no group {name} (groups: {', '.join(c.group_names())})")
    return c.group(name)


def _tokens(group, ids, array: str = "tokens") -> dict[str, np.ndarray]:
    return {i: group.read(i, [array])[array].astype(np.float32) for i in ids}


def check_tokens(cache: Path, name: str, dim: int | None, array: str = "tokens") -> None:
    g = _group(cache, name)
    done, pending = g.done_ids(), g.pending_ids(retry_failed=True)
    if not done:
        raise SystemExit(f"FAIL {cache}/{name}: no row was written")
    if pending:
        raise SystemExit(f"FAIL {cache}/{name}: {len(pending)} rows not done, e.g. {pending[0]} "
                         f"({g.failures()[:1]})")
    if array not in g.spec.arrays:
        raise SystemExit(f"FAIL {cache}/{name}: no array {array!r} (arrays: {', '.join(g.spec.arrays)})")
    for i, t in _tokens(g, done, array).items():
        if not np.isfinite(t).all():
            raise SystemExit(f"FAIL {cache}/{name}: row {i} holds NaN or inf")
        if dim is not None and t.shape[-1] != dim:
            raise SystemExit(f"FAIL {cache}/{name}: row {i} has tokens {t.shape}, expected (..., {dim})")
    shape = g.read(done[0], [array])[array].shape
    print(f"ok   {name} in {cache.name}: {len(done)} rows, {array} {shape}, all finite")


def compare(cache_a: Path, cache_b: Path, name: str, tol: float, min_cos: float) -> None:
    """Relative error |a - b| / rms(a) per row, and the mean cosine similarity of matching tokens."""
    a, b = _group(cache_a, name), _group(cache_b, name)
    ids = sorted(set(a.done_ids()) & set(b.done_ids()))
    if not ids:
        raise SystemExit(f"FAIL {name}: {cache_a.name} and {cache_b.name} share no finished row")
    worst_rel, worst_cos, worst = 0.0, 1.0, ids[0]
    ta, tb = _tokens(a, ids), _tokens(b, ids)
    for i in ids:
        x, y = ta[i].reshape(-1, ta[i].shape[-1]), tb[i].reshape(-1, tb[i].shape[-1])
        if x.shape != y.shape:
            raise SystemExit(f"FAIL {name} row {i}: shapes {x.shape} vs {y.shape}")
        rel = float(np.abs(x - y).mean() / max(np.sqrt((x ** 2).mean()), 1e-12))
        cos = float(((x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)).mean())
        if rel > worst_rel:
            worst_rel, worst = rel, i
        worst_cos = min(worst_cos, cos)
    line = (f"{name}: {cache_a.name} vs {cache_b.name} on {len(ids)} rows: worst mean |diff| / rms "
            f"{worst_rel:.4f} (row {worst}, tolerance {tol}), worst mean cosine {worst_cos:.5f} (min {min_cos})")
    if worst_rel > tol or worst_cos < min_cos:
        raise SystemExit("FAIL " + line)
    print("ok   " + line)


def check_run(run: Path) -> None:
    for f in ("config.json", "metrics.jsonl", "best.pt", "last.pt"):
        if not (run / f).is_file():
            raise SystemExit(f"FAIL {run}: no {f}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [r.get("train_loss") for r in rows]
    if not rows or any(v is None or not np.isfinite(v) for v in losses):
        raise SystemExit(f"FAIL {run}: train_loss missing or not finite in metrics.jsonl ({losses})")
    import torch

    sd = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["state_dict"]
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SystemExit(f"FAIL {run}/best.pt: non-finite weights in {bad[:3]}")
    print(f"ok   run {run.name}: {len(rows)} epoch(s), train_loss {losses[-1]:.4f}, weights finite")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("cache", type=Path)
    t.add_argument("group")
    t.add_argument("--dim", type=int, help="size of the last axis")
    t.add_argument("--array", default="tokens", help="the array to check (skeleton and face: features)")
    c = sub.add_parser("compare")
    c.add_argument("cache_a", type=Path)
    c.add_argument("cache_b", type=Path)
    c.add_argument("group")
    c.add_argument("--tol", type=float, default=0.05)
    c.add_argument("--min-cos", type=float, default=0.99)
    r = sub.add_parser("run")
    r.add_argument("run", type=Path)
    args = ap.parse_args()
    if args.cmd == "tokens":
        check_tokens(args.cache, args.group, args.dim, args.array)
    elif args.cmd == "compare":
        compare(args.cache_a, args.cache_b, args.group, args.tol, args.min_cos)
    else:
        check_run(args.run)


if __name__ == "__main__":
    sys.exit(main())
