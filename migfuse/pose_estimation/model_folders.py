"""Which local Hugging Face folder is a pose model and which a person detector, checked before any model is built.

`data pose` reads two folders as `huggingface-cli download ID --local-dir DIR` leaves them (config.json,
model.safetensors, preprocessor_config.json): a ViTPose / ViTPose+ pose model (config `model_type`
"vitpose") and a person detector that transformers' `AutoModelForObjectDetection` loads (RT-DETR, DETR,
D-FINE, ...) whose classes include "person". Each wrong folder is one line naming it and the fix:
missing, no config.json, no safetensors weights (`hf_folder.check_folder`), a detector given as the
pose model and vice versa, an architecture migfuse does not run, a head migfuse cannot name.

transformers (the `pose` extra) is imported here, lazily (`import_transformers`): the fuse install has none.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from migfuse.backbones import hf_folder
from migfuse.errors import UserError

#: published folders named in the errors' fixes (docs/pose.md lists the others)
POSE_EXAMPLE = "usyd-community/vitpose-base-simple"
DETECTOR_EXAMPLE = "PekingU/rtdetr_r50vd_coco_o365"
#: config `model_type` of the pose models migfuse runs (transformers' VitPoseForPoseEstimation)
POSE_MODEL_TYPES = ("vitpose",)
#: keypoints of the pose head -> the layout name migfuse writes. transformers' ViTPose has one head per
#: folder; the published ViTPose and ViTPose+ folders carry the COCO-17 head only (no whole-body 133 head).
LAYOUT_OF_KEYPOINTS = {17: "coco-17"}
#: ViTPose+ (mixture of experts) expert of each layout, in the ViTPose+ training order (0 = COCO)
DATASET_INDEX = {"coco-17": 0}
#: the detector class migfuse keeps, as detectors' id2label spell it (compared lower-case)
PERSON = "person"
#: the image processor config both kinds of folder carry
PROCESSOR_FILE = "preprocessor_config.json"


def import_transformers() -> Any:
    """transformers, after making torchvision importable where it is installed (transformers' fast image
    processors import it; without it transformers uses its PIL processors).

    Raises:
        UserError: transformers or scipy (the ViTPose processor's warp and decoding) is not installed.
    """
    if importlib.util.find_spec("torchvision") is not None:
        from migfuse.backbones._torchvision import import_torchvision

        import_torchvision()
    for name in ("transformers", "scipy"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"{name} is not installed: the pose models need the pose extra "
                            "(`pip install -e .[pose]` or `bash scripts/install.sh extract,pose`)")
    return importlib.import_module("transformers")


def _config_of(folder: Path) -> dict[str, Any] | None:
    """config.json of the folder, or None where there is none (check_folder then names what is missing)."""
    if folder.is_dir() and (folder / "config.json").is_file():
        return hf_folder.read_json(folder / "config.json", folder)
    return None


def _detector_types() -> dict[str, str]:
    """model_type -> class of every detector transformers' AutoModelForObjectDetection builds."""
    import_transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return dict(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)


def _missing(folder: Path, role: str, example: str) -> None:
    if not folder.exists():
        raise UserError(f"{folder} does not exist: the {role} is a local Hugging Face model folder (config.json + "
                        f"model.safetensors); get one with `huggingface-cli download {example} --local-dir DIR` "
                        "(nothing is downloaded at run time)")


def check_pose_folder(folder: str | Path) -> tuple[dict[str, Any], str]:
    """The pose model folder's config.json and the layout its head gives ("coco-17").

    Raises:
        UserError (one line naming the folder and the fix): missing, not a folder, no config.json, no
            safetensors weights, a person detector, another architecture, a head of an unknown size.
    """
    folder = Path(folder)
    _missing(folder, "pose model", POSE_EXAMPLE)
    config = _config_of(folder)
    if config is not None:
        found = config.get("model_type")
        if found in _detector_types():
            raise UserError(f"{folder}/config.json is a {found} object detector, not a pose model: give it as the "
                            f"person detector, and as the pose model a ViTPose folder (e.g. {POSE_EXAMPLE})")
        if found not in POSE_MODEL_TYPES:
            raise UserError(f"{folder}/config.json is a {found or 'untyped'} model, which migfuse does not run as a "
                            f"pose model: pass a ViTPose / ViTPose+ folder (model_type vitpose, e.g. {POSE_EXAMPLE})")
    config = hf_folder.check_folder(folder, POSE_MODEL_TYPES[0], "the pose model", POSE_EXAMPLE)
    _check_processor(folder, POSE_EXAMPLE)
    keypoints = _num_labels(config)
    if keypoints not in LAYOUT_OF_KEYPOINTS:
        raise UserError(f"{folder}/config.json: the pose head gives {keypoints} keypoints; migfuse names only "
                        f"{', '.join(f'{k} ({v})' for k, v in LAYOUT_OF_KEYPOINTS.items())}: pass a COCO "
                        f"ViTPose / ViTPose+ folder (e.g. {POSE_EXAMPLE})")
    return config, LAYOUT_OF_KEYPOINTS[keypoints]


def check_detector_folder(folder: str | Path) -> dict[str, Any]:
    """The person detector folder's config.json.

    Raises:
        UserError (one line naming the folder and the fix): missing, not a folder, no config.json, no
            safetensors weights, a pose model, a model transformers cannot run as a detector, a
            detector without a "person" class.
    """
    folder = Path(folder)
    _missing(folder, "person detector", DETECTOR_EXAMPLE)
    config = _config_of(folder)
    found = (config or {}).get("model_type")
    if config is not None:
        if found in POSE_MODEL_TYPES:
            raise UserError(f"{folder}/config.json is a {found} pose model, not a person detector: give it as the "
                            f"pose model, and as the detector an object detection folder (e.g. {DETECTOR_EXAMPLE})")
        if found not in _detector_types():
            raise UserError(f"{folder}/config.json is a {found or 'untyped'} model, not an object detector "
                            f"transformers runs: pass a person detector folder (e.g. {DETECTOR_EXAMPLE}; "
                            "RT-DETR, DETR, D-FINE and the other AutoModelForObjectDetection models)")
    config = hf_folder.check_folder(folder, str(found), "the person detector", DETECTOR_EXAMPLE)
    _check_processor(folder, DETECTOR_EXAMPLE)
    if not person_labels(config):
        raise UserError(f"{folder}/config.json has no '{PERSON}' class in id2label: pass a detector trained on "
                        f"COCO or Objects365 (e.g. {DETECTOR_EXAMPLE})")
    return config


def _check_processor(folder: Path, example: str) -> None:
    """The folder must have its processor config: the model's input size, box padding and normalisation
    come from it (transformers' defaults may not be what the weights were trained with). Its weights and
    processor config must also be readable (`_check_readable`)."""
    if not (folder / PROCESSOR_FILE).is_file():
        raise UserError(f"{folder} has no {PROCESSOR_FILE} (the model's input size and normalisation): the "
                        f"download is incomplete; run `huggingface-cli download {example} --local-dir DIR` again")
    _check_readable(folder)


def _check_readable(folder: Path) -> None:
    """The processor config is a JSON object and every safetensors file's header reads and covers the
    file: an interrupted download (a truncated file) is one line here, not transformers' traceback.

    Raises:
        UserError: naming the damaged file and saying to download the folder again.
    """
    from safetensors import SafetensorError, safe_open

    hf_folder.read_json(folder / PROCESSOR_FILE, folder)
    weights = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    index = folder / "model.safetensors.index.json"
    if not weights and index.is_file():
        shards = hf_folder.read_json(index, folder).get("weight_map") or {}
        weights = [folder / name for name in sorted(set(shards.values()) if isinstance(shards, dict) else ())]
    for path in weights:
        try:
            with safe_open(str(path), framework="numpy"):  # reads the header and checks the file's size
                pass
        except (OSError, SafetensorError) as e:
            raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}): download "
                            f"the model folder {folder} again") from None


def person_labels(config: dict[str, Any]) -> list[int]:
    """The class ids whose id2label name is "person" (any case): by name, not by COCO's index 0, since
    detectors trained on other label sets number their classes otherwise."""
    id2label = config.get("id2label") or {}
    return sorted(int(i) for i, name in id2label.items() if str(name).strip().lower() == PERSON)


def _num_labels(config: dict[str, Any]) -> int:
    """The pose head's keypoint count, as transformers' config reads it (id2label, else num_labels)."""
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else int(config.get("num_labels", 2))
