"""`migfuse cache info`: a plain-text table of what a token cache holds; `--verify`, `--consolidate`."""
from __future__ import annotations

import json
import logging

from migfuse.data_cache.group import DamagedGroup
from migfuse.data_cache.group_check import mark_rows_failed, verify_group
from migfuse.data_cache.store import FORMAT_VERSION, CorruptChunk, TokenCache
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
    groups, damaged = [], []
    for n in names:
        try:
            groups.append(cache.group(n))
        except DamagedGroup as e:  # listed below with its fix; the other groups are still worth a table
            damaged.append(str(e))
    if not groups:
        raise UserError(damaged[0] + (f" (and {len(damaged) - 1} more damaged groups)" if len(damaged) > 1 else ""))
    summaries = [{**g.summary(), "format": g.format} for g in groups]
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
        if s["format"] < 2:
            out.append(f"  format {s['format']}: read by migfuse, but without dimension names (xarray cannot open it) "
                       f"and chunk checksums; rebuild it to get them")
        elif s["format"] < FORMAT_VERSION:
            out.append(f"  format {s['format']}: read and resumed by migfuse, with one file per row and array; "
                       f"rebuild it (another --cache) to get format {FORMAT_VERSION}'s few files")
        for key, value in s["provenance"].items():
            text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
            out.append(f"  {key}: {text}")
        failures = cache.group(s["group"]).failures() if s["failed"] else []
        for rec in failures[:show_failures]:
            out.append(f"  FAILED {rec['clip_id']} [{rec.get('stage', '?')}] {rec.get('message', '')}")
        if len(failures) > show_failures:
            out.append(f"  ... and {len(failures) - show_failures} more failures")
    out += [f"DAMAGED: {d}" for d in damaged]
    out += [f"INCOMPLETE: {n} has no group metadata (its creator stopped, or its zarr.json was deleted): nothing reads "
            f"it; its extract rebuilds it, or `migfuse cache drop {cache.path} {n}` removes it"
            for n in cache.droppable() if n not in names]
    total = sum(s["bytes"] for s in summaries)
    out.append(f"total size on disk: {human_bytes(total)}")
    return "\n".join(out)


def verify_cache(path, mark_failed: bool = False) -> str:
    """Decode every chunk of every group; a one-line report when all are sound.

    Raises UserError naming the first corrupt chunk (group, row id, file) and how many there are;
    with `mark_failed` their rows are first recorded as failed, so a rerun with --retry-failed
    (or `cache view`) rewrites them.
    """
    cache = TokenCache(path)
    names = cache.group_names()
    if not names and not (cache.path / "zarr.json").is_file():
        raise UserError(f"no token cache at {cache.path} (create it with `migfuse extract ...`, or check the path)")
    bad: list[CorruptChunk] = []
    rows = 0
    for name in names:
        g = cache.group(name)
        found = verify_group(g)
        if found and mark_failed:
            rows += mark_rows_failed(g, found)
        bad += found
    if not bad:
        return f"verified: every chunk of the {len(names)} groups in {cache.path} decodes"
    for c in bad[1:]:
        logging.getLogger(__name__).warning("%s", c)
    more = f" (and {len(bad) - 1} more corrupt chunks, listed above)" if len(bad) > 1 else ""
    if mark_failed:
        raise UserError(f"{bad[0].what}{more}; marked {rows} rows failed: rerun the same "
                        f"`migfuse extract` with --retry-failed (or `migfuse cache view`) to rewrite them")
    raise UserError(f"{bad[0]}{more}")


def consolidate_cache(path) -> str:
    """Rewrite the cache's consolidated metadata (zarr / xarray then open it without a crawl)."""
    cache = TokenCache(path)
    if not (cache.path / "zarr.json").exists() and not (
            cache.path.is_dir() and any((p / "zarr.json").is_file() for p in cache.path.iterdir() if p.is_dir())):
        raise UserError(f"no token cache at {cache.path} (create it with `migfuse extract ...`, or check the path)")
    cache.consolidate()
    return f"consolidated the metadata of {len(cache.group_names())} groups in {cache.path / 'zarr.json'}"
