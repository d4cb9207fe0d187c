"""`migfuse cache info`: a plain-text table of what a token cache holds."""
from __future__ import annotations

import json

from migfuse.data_cache.store import TokenCache
from migfuse.errors import UserError


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cache_info(path, show_failures: int = 5) -> str:
    """A report of every group: arrays (shape, dtype), clips done/failed/missing, size, provenance."""
    cache = TokenCache(path)
    names = cache.group_names()
    if not names:
        if not (cache.path / "zarr.json").is_file():
            raise UserError(f"no token cache at {cache.path} (create it with `migfuse extract ...`, or check the path)")
        return f"{cache.path}: empty cache (no complete groups)"
    summaries = [cache.group(n).summary() for n in names]
    rows = [["group", "array", "per-clip shape", "dtype", "clips", "done", "failed", "missing", "size"]]
    for s in summaries:
        for j, (arr, desc) in enumerate(s["arrays"].items()):
            shape, dtype = desc.rsplit(" ", 1)
            first = j == 0
            rows.append([
                s["group"] if first else "", arr, shape, dtype,
                str(s["n"]) if first else "", str(s["done"]) if first else "",
                str(s["failed"]) if first else "", str(s["missing"]) if first else "",
                human_bytes(s["bytes"]) if first else "",
            ])
    out = [f"cache {cache.path}", _table(rows), ""]
    for s in summaries:
        info = s["info"]
        out.append(f"[{s['group']}] created {info.get('created', '?')} by migfuse {info.get('code_version', '?')}")
        for key, value in s["provenance"].items():
            text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
            out.append(f"  {key}: {text}")
        failures = cache.group(s["group"]).failures() if s["failed"] else []
        for rec in failures[:show_failures]:
            out.append(f"  FAILED {rec['clip_id']} [{rec.get('stage', '?')}] {rec.get('message', '')}")
        if len(failures) > show_failures:
            out.append(f"  ... and {len(failures) - show_failures} more failures")
    total = sum(s["bytes"] for s in summaries)
    out.append(f"total size on disk: {human_bytes(total)}")
    return "\n".join(out)
