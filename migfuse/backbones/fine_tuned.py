"""What a `migfuse backbone train video` best.pt says about itself, read by the video backbones' loaders.

best.pt is a migfuse training checkpoint (`migfuse.training.checkpoint`): `state_dict` plus
`meta["migfuse"]`, whose `kind` is "<backbone> fine-tuned" (e.g. "swin3d_t fine-tuned";
MViTv2-S keeps its own "mvit_v2_s fine-tuned", read by `mvit.fine_tune_meta`). Its `preprocessing`
is the recipe the model was trained on, which is why a run is extracted with the backbone it was
trained as (`check_backbone`): `swin3d_t` and `mmaction_swin3d_t` hold the same weights but
resize frames differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from migfuse.errors import UserError

SUFFIX = " fine-tuned"


def kind_of(backbone: str) -> str:
    """`meta["migfuse"]["kind"]` of a best.pt fine-tuned as `backbone`: "swin3d_t fine-tuned"."""
    return backbone + SUFFIX


def read_meta(obj: Any) -> dict[str, Any] | None:
    """`meta["migfuse"]` of a checkpoint object written by `backbone train video`, else None."""
    if isinstance(obj, Mapping):
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("migfuse"), Mapping):
            kind = meta["migfuse"].get("kind")
            if isinstance(kind, str) and kind.endswith(SUFFIX):
                return dict(meta["migfuse"])
    return None


def trained_as(meta: Mapping[str, Any]) -> str:
    """The backbone a fine-tuned run trained: "swin3d_t" of "swin3d_t fine-tuned"."""
    return str(meta.get("kind", "")).removesuffix(SUFFIX)


def check_backbone(meta: Mapping[str, Any], backbone: str, path: Path) -> None:
    """UserError (one line) when `path` was fine-tuned as another backbone than `backbone`: its input
    recipe (resize, frames, mean/std) is that backbone's, so extraction must use the same one."""
    trained = trained_as(meta)
    if trained != backbone:
        raise UserError(f"{path} was fine-tuned as {trained} (with its input recipe), not {backbone}: use "
                        f"--backbone {trained}")


def provenance(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a fine-tuned run's meta the cache provenance records (`fine_tuned`)."""
    if not meta:
        return None
    facts = {k: meta.get(k) for k in ("backbone", "run_id", "run_dir", "epoch", "base_checkpoint",
                                       "base_checkpoint_sha256", "num_classes", "split")}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), Mapping) else {}
    facts["val_top1"] = metrics.get("val_top1")
    return facts
