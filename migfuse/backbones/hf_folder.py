"""What a local Hugging Face model folder says, read without transformers: config, weights, recipe, licence.

A folder as `huggingface-cli download MCG-NJU/videomae-base --local-dir videomae-base` leaves it:
config.json (the architecture, `model_type`), model.safetensors (or shards with
model.safetensors.index.json), a processor config (video_preprocessor_config.json or
preprocessor_config.json: resize, crop, mean/std) and README.md (the model card, whose front matter
names the licence). `migfuse.backbones.hf_video` builds the transformers model from it; everything
here is plain JSON and text, so errors come before any model is built, each one line naming the
folder and the fix.

Only safetensors weights are read: a pytorch_model.bin is a pickle, which can run code when loaded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from migfuse.errors import UserError

#: the weight files transformers reads, safetensors only (one file, or shards listed in the index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
#: processor configs, in the order transformers' video processors look for them
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def read_json(path: Path, folder: Path) -> dict[str, Any]:
    """A JSON object from the folder (UserError naming the file when it is not one)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}): download the "
                        f"model folder {folder} again") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a {type(value).__name__}, not a JSON object: download {folder} again")
    return value


def check_folder(folder: Path, model_type: str, backbone: str, example: str) -> dict[str, Any]:
    """The folder's config.json, after checking it is a `model_type` model folder with safetensors weights.

    Args:
        folder: the path the user gave as --checkpoint.
        model_type: the config's `model_type` this backbone reads ("videomae", "vjepa2").
        backbone: the backbone's name (named in the errors).
        example: a published model id, for the fix ("MCG-NJU/videomae-base").
    Raises:
        UserError: not a folder, no config.json, a config of another model type, no safetensors
            weights (a pickled pytorch_model.bin only is named as such): one line each.
    """
    get = f"`huggingface-cli download {example} --local-dir DIR`"
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: {backbone} takes a local Hugging Face model folder (config.json "
                        f"+ model.safetensors), e.g. from {get}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder: pass the folder "
                        f"{get} makes")
    config = read_json(folder / "config.json", folder)
    found = config.get("model_type")
    if found != model_type:
        raise UserError(f"{folder}/config.json is a {found or 'untyped'} model, not {model_type}: {backbone} reads "
                        f"{model_type} folders only (e.g. {example}); choose the backbone for {found or 'it'}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        pickled = [name for name in _PICKLED if (folder / name).is_file()]
        if pickled:
            raise UserError(f"{folder} holds {pickled[0]} but no model.safetensors: migfuse reads safetensors only "
                            "(a .bin is a pickle that can run code); download the folder's safetensors files")
        raise UserError(f"{folder} has config.json but no weights (model.safetensors): the download is "
                        f"incomplete; run {get} again")
    return config


def processor_config(folder: Path | None) -> tuple[dict[str, Any], str]:
    """The folder's processor config and its file name; ({}, reason) where there is none."""
    if folder is None:
        return {}, "none (random weights): transformers' defaults"
    for name in PROCESSOR_FILES:
        if (folder / name).is_file():
            return read_json(folder / name, folder), name
    return {}, f"none in {folder}: transformers' defaults for this model"


def side(value: Any, what: str, where: str) -> int:
    """One side of a square size as processor configs write it: 224, {"height": 224, "width": 224},
    {"shortest_edge": 224}. Raises UserError for a non-square or unreadable size."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if value.get("height") == value.get("width") and isinstance(value.get("height"), int):
            return int(value["height"])
    raise UserError(f"{where}: {what} {value!r} is not a square size migfuse's video loaders take (an int, "
                    "{'height': S, 'width': S} or {'shortest_edge': S})")


def licence(folder: Path | None) -> dict[str, str]:
    """The licence the folder states: config.json `license`, else the model card's `license:` front matter.

    Returns:
        {"licence": "cc-by-nc-4.0", "licence_source": "README.md model card"}; "unknown" with the reason
        where the folder states none (the model card on the hub is then the place to look).
    """
    if folder is None:
        return {"licence": "none (random weights)", "licence_source": "no checkpoint"}
    config = folder / "config.json"
    if config.is_file():
        stated = read_json(config, folder).get("license")
        if isinstance(stated, str) and stated.strip():
            return {"licence": stated.strip(), "licence_source": "config.json"}
    card = folder / "README.md"
    if card.is_file():
        match = _FRONT_MATTER.match(card.read_text(encoding="utf-8", errors="replace"))
        front = match.group(1) if match else ""
        fields = dict(re.findall(r"^(license(?:_name|_link)?):[ \t]*(.*?)[ \t]*$", front, re.M))
        listed = re.search(r"^license:[ \t]*\n[ \t]*-[ \t]*(.+?)[ \t]*$", front, re.M)  # a YAML list: the first
        name = (fields.get("license") or (listed.group(1) if listed else "")).strip("'\"")
        if name:
            if name == "other" and fields.get("license_name"):
                name = f"other: {fields['license_name'].strip(chr(39) + chr(34))}"
            return {"licence": name, "licence_source": "README.md model card"}
    return {"licence": "unknown", "licence_source": f"{folder} states none (no config.json `license`, no README.md "
                                                    "`license:`): check the model card where you got it"}
