"""`migfuse cache`: look at the token cache, derive pooled views, copy the views for a laptop, import
features computed elsewhere."""
from __future__ import annotations

from pathlib import Path
from enum import StrEnum
from typing import Annotated, Optional

import typer

from migfuse.commands.app import group
from migfuse.commands.options import CacheArg, DataOpt, parse_name, parse_positive, path_argument, path_option
from migfuse.data_cache.tracks import TRACKS
from migfuse.errors import UserError

app = group("Inspect the token cache and derive small pooled views for training.")


@app.command("info")
def cache_info_cmd(
    cache: CacheArg,
    failures: Annotated[int, typer.Option(min=0, help="How many failure records to list per group.")] = 5,
    verify: Annotated[bool, typer.Option("--verify", help="Decode every chunk of every row; exit 2 naming the first "
                                                          "corrupt chunk (group, row id, file).")] = False,
    mark_failed: Annotated[bool, typer.Option("--mark-failed", help="With --verify: record the rows of corrupt chunks "
                                                                    "as failed, so `extract --retry-failed` "
                                                                    "rewrites them.")] = False,
    consolidate: Annotated[bool, typer.Option("--consolidate", help="Rewrite the consolidated metadata (zarr/xarray "
                                                                    "open the cache without crawling it).")] = False,
) -> None:
    """Print a table of the cache: groups, arrays, shapes, dtype, clips done / failed / missing,
    size on disk, and the provenance of each group (backbone, checkpoint sha256, sampling, versions)."""
    from migfuse.data_cache.info import cache_info, consolidate_cache, verify_cache

    if mark_failed and not verify:
        raise UserError("--mark-failed needs --verify (it marks the rows of the corrupt chunks that --verify finds)")
    if consolidate:
        typer.echo(consolidate_cache(cache))
    verified = verify_cache(cache, mark_failed=mark_failed) if verify else None  # first: the table reads chunks too
    typer.echo(cache_info(cache, show_failures=failures))
    if verified:
        typer.echo(verified)


@app.command("export-views")
def cache_export_views_cmd(
    cache: Annotated[Path, path_argument(metavar="CACHE", help="The full token cache (CACHE.zarr) holding views "
                                                                "(`cache view --defaults`).")],
    out: Annotated[Path, path_argument(use="folder", metavar="OUT", help="The views-only copy to write, e.g. "
                                                                         "laptop.zarr (resumed if present).")],
) -> None:
    """Copy only the views of a cache (their finished rows) into a new, small cache: what `fuse train`,
    `fuse eval` and `fuse predict` read on a laptop. The full tokens stay behind."""
    from migfuse.data_cache.info import human_bytes
    from migfuse.data_cache.store import TokenCache
    from migfuse.data_cache.views import export_views

    copied = export_views(cache, out)
    dst = TokenCache(out)
    size = sum(dst.group(name).size_on_disk() for name in copied)
    for name, n in copied.items():
        typer.echo(f"{name:24s} {n} rows copied")
    typer.echo(f"wrote {out} ({human_bytes(size)}); train on it with `migfuse fuse train --cache {out} ...`")


@app.command("view")
def cache_view_cmd(
    cache: CacheArg,
    name: Annotated[Optional[str], typer.Option(parser=parse_name, metavar="<name>",
                                                help="View name; written as group views/NAME. "
                                                     "Omit with --defaults.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Source group, e.g. video/mvit_v2_s "
                                                      "(see `migfuse cache info`).")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Pooling: video_time, video_cls, pose_parts, pose_time, "
                                                     "pose_grid, face_keep, context_cls_mean, raw.",
                                                show_default="the track's; pose_grid for PoseC3D")] = None,
    time_steps: Annotated[Optional[int], typer.Option(min=1, max=1024, show_default="8", help="pose_parts/pose_time/"
                                                      "pose_grid: time tokens kept (adaptive mean).")] = None,
    parts: Annotated[Optional[int], typer.Option(min=1, max=137, help="pose_parts: number of body-part groups "
                                                      "(contiguous joint runs).")] = None,
    cells: Annotated[Optional[int], typer.Option(min=1, max=64, show_default="4", help="pose_grid: a PoseC3D "
                                                 "feature map is pooled to CELLS x CELLS spatial tokens.")] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="Make the default view of every track in the cache "
                                                              "(views/video, views/joint, ...), "
                                                              "what `fuse train` reads.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete and rebuild a view that exists with other "
                                                                "settings.")] = False,
) -> None:
    """Derive compact pooled token sets ("views") from full cache groups, once, for fast training.

    A view (group views/NAME in the same cache) pools each clip's tokens into a few tokens, e.g. video
    (393, 768) -> class token + one mean token per time step (9, 768); pose (256, T', V) -> 8 time
    tokens + 6 body-part tokens; PoseC3D maps (512, T', 8x8) -> 8 time tokens + 4x4 map cells. It
    stores many clips per chunk and records its source group, the source's provenance and the pooling.
    Re-running adds clips extracted since (resumable).
    """
    from migfuse.data_cache.views import default_views, make_view

    if not Path(cache).is_dir():  # a folder without root metadata is named by the cache itself (damage)
        raise UserError(f"no token cache at {cache} (create it with `migfuse extract ...`, or check the path)")
    if defaults:
        chosen = {"--name": name, "--group": group, "--pool": pool, "--time-steps": time_steps, "--parts": parts,
                  "--cells": cells}
        given = [option for option, value in chosen.items() if value is not None]
        if given:
            raise UserError(f"--defaults makes each track's default view with its default pooling, so "
                            f"{', '.join(given)} would be ignored: drop {'them' if len(given) > 1 else 'it'}, or "
                            "make a view of your own with --name NAME --group GROUP")
        made = default_views(cache, overwrite=overwrite)
        for modality, view in made.items():
            typer.echo(f"{modality:14s} -> {view}")
        if not made:
            from migfuse.data_cache.store import TokenCache
            from migfuse.data_cache.views import VIEW_PREFIX, track_groups

            tc = TokenCache(cache)
            views = [g for g in tc.group_names() if g.startswith(VIEW_PREFIX)]
            if views and not track_groups(tc):
                typer.echo(f"nothing to do: {cache} holds views only ({', '.join(views)}), e.g. a copy made by "
                           f"`migfuse cache export-views`; it is ready for `migfuse fuse train`")
                return
            raise UserError(f"cache {cache} has no finished track groups to derive views from; "
                            "run `migfuse extract` first")
        return
    if not name or not group:
        raise UserError("give --name NAME and --group GROUP (or --defaults); see `migfuse cache view -h`")
    params = {k: v for k, v in {"time_steps": time_steps, "parts": parts, "cells": cells}.items() if v is not None}
    view = make_view(cache, name, group, pooling=pool, overwrite=overwrite, **params)
    typer.echo(f"{view.name}: {len(view.done_ids())}/{len(view.ids)} rows, tokens {view.arrays['tokens'].shape}")


@app.command("drop")
def cache_drop_cmd(
    cache: CacheArg,
    group: Annotated[str, typer.Argument(metavar="GROUP", help="The group to remove, e.g. video/mvit_v2_s or "
                                                               "views/video (see `migfuse cache info`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove one group (a track's tokens or a view) from the cache, e.g. after its extraction failed
    entirely, or when it is damaged. The group is renamed out of the store first and the consolidated
    metadata rewritten, so an interrupted drop never leaves half a group listed; views derived from
    it are kept (`fuse train` refuses them once the group is extracted again with other settings)."""
    from migfuse.data_cache.info import human_bytes
    from migfuse.data_cache.store import TokenCache

    tc = TokenCache(cache)
    if group.strip("/") not in tc.droppable():
        tc.drop_group(group)  # raises the one-line error listing the groups
    target = tc.path / group.strip("/")
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if not yes and not typer.confirm(f"drop group '{group}' ({human_bytes(size)}) from {cache}?", default=False):
        typer.echo("nothing dropped")
        raise typer.Exit(1)
    tc.drop_group(group)
    typer.echo(f"dropped {group} from {cache} ({human_bytes(size)} freed)")


#: `cache import --as`: the track an imported group acts as (face tracks are refused with the reason).
AsTrack = StrEnum("AsTrack", {name: name for name in TRACKS})


@app.command("import")
def cache_import_cmd(
    cache: CacheArg,
    source: Annotated[Path, path_argument(metavar="SOURCE", help="The features: a folder of <id>.npy or "
                                                                 "<id>_<type>.npy files (video_features), an .npz, "
                                                                 "an .h5/.hdf5 or an mmaction2 feature .pkl.")],
    data: DataOpt,
    as_track: Annotated[AsTrack, typer.Option("--as", help="The track the features act as: video (clip rows, "
                                                           "CMTF's video side), joint / bone (clip rows, the pose "
                                                           "side) or context (video rows, emotion).")],
    name: Annotated[str, typer.Option(parser=parse_name, metavar="<name>",
                                      help="The group is TRACK/NAME, e.g. video/i3d.")],
    description: Annotated[str, typer.Option(help="What the features are (model, weights, sampling); kept in "
                                                  "the group's provenance.")] = "",
    feature_type: Annotated[Optional[str], typer.Option(
        help="For a folder holding several <id>_<type>.npy types (rgb, flow): the one to import.")] = None,
    ids: Annotated[Optional[Path], path_option(
        "--ids", help="For a .pkl list (or a stacked array without ids): the annotation file the extraction ran "
                      "on, whose samples the rows follow (mmaction2 list file or skeleton .pkl).")] = None,
    ann_split: Annotated[Optional[str], typer.Option(
        help="With --ids of a skeleton .pkl: the split the extraction ran on.")] = None,
    stride: Annotated[Optional[float], typer.Option(
        parser=parse_positive, metavar="FRAMES", help="Per-video features: frames of the video between feature "
                                                      "rows; cuts them into the manifest's clips.")] = None,
    fps: Annotated[Optional[float], typer.Option(
        parser=parse_positive, metavar="RATE", help="Per-video features: feature rows per second (instead of "
                                                    "--stride).")] = None,
    time_steps: Annotated[Optional[int], typer.Option(
        min=1, max=1024, show_default="8 when rows differ in length, else kept",
        help="Tokens per row: each row's time axis averaged to this many.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Leave rows the file lacks unwritten "
                                                                        "instead of refusing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a group of this name made from other "
                                                                "features.")] = False,
) -> None:
    """Write features computed elsewhere into the cache as group TRACK/NAME, used by `cache view`, the
    heads and late fusion like that track's tokens.

    Ids are checked against --data (missing, extra and duplicated ids are refused with the list),
    shapes and values too, before anything is written. Per-video features for a clip track are cut
    into clips by the manifest's frame ranges with --stride or --fps (or the rate the file states).
    Provenance records the file's sha256 and --description. See docs/cache.md, "Importing features".
    """
    from migfuse.data_cache.feature_files import read_feature_file
    from migfuse.data_cache.importing import plan_import, write_import
    from migfuse.datasets.manifest import Manifest

    if ann_split is not None and ids is None:
        raise UserError("--ann-split goes with --ids (the skeleton .pkl annotation the extraction ran on)")
    row_ids = None
    if ids is not None:
        from migfuse.fuse.importers import read_annotation_ids

        row_ids = read_annotation_ids(ids, ann_split)
    manifest = Manifest.load(data)
    features = read_feature_file(source, ids=row_ids, feature_type=feature_type)
    plan = plan_import(features, manifest, as_track.value, name, description=description, stride=stride, fps=fps,
                       time_steps=time_steps, allow_missing=allow_missing)
    group = write_import(cache, plan, overwrite=overwrite)
    missing = f", {len(plan.missing)} missing" if plan.missing else ""
    typer.echo(f"{group.name}: {len(group.done_ids())}/{len(group.ids)} rows{missing}, "
               f"{next(iter(plan.spec.arrays))} {plan.shape} per row, from "
               f"{source} ({features.format}); next: `migfuse cache view {cache} --defaults` "
               f"(or --name NAME --group {group.name})")
