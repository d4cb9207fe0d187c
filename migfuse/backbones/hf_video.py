"""Self-supervised video ViTs through transformers: VideoMAE (`videomae`) and V-JEPA 2 (`vjepa2`).

Each reads a local Hugging Face model folder (--checkpoint FOLDER: config.json + model.safetensors,
checked by `hf_folder.check_folder`; nothing is downloaded: `local_files_only=True`) into
transformers' own `VideoMAEModel` / `VJEPA2Model`, so the tokens are that model's `last_hidden_state`
(the encoder's patch tokens, time-major over the (T/tubelet, H/patch, W/patch) grid, no class token).
Pre-training folders (VideoMAEForPreTraining: a pixel decoder) and fine-tuned ones (…ForVideoClassification:
a head) load too: the keys the encoder does not use are listed as ignored.

The recipe (frames, resize, crop, mean/std) comes from the folder: frames from config.json
(`num_frames` / `frames_per_clip`), the rest from its processor config, with transformers' defaults
for the fields it leaves out (`recipe`); the licence from config.json or the model card
(`hf_folder.licence`), shown by `backbone info` and kept in the cache provenance. Without a checkpoint
the model is transformers' default configuration (ViT-B VideoMAE; ViT-L V-JEPA 2 at 16 frames) with
seeded random weights, for tests.

transformers is the `vit` extra (`pip install -e .[vit]`), imported only here.
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from migfuse.backbones import fine_tuned, hf_folder
from migfuse.backbones.checkpoints import KeyReport
from migfuse.backbones.registry import RANDOM_WEIGHTS_SEED, Backbone, register_backbone
from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.errors import UserError

#: transformers' IMAGENET_DEFAULT_MEAN/STD and IMAGENET_STANDARD_MEAN/STD (transformers.utils.constants)
_IMAGENET_DEFAULT = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
_IMAGENET_STANDARD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def import_transformers() -> Any:
    """transformers, after making torchvision importable (transformers' image utilities import it)."""
    from migfuse.backbones._torchvision import import_torchvision

    import_torchvision()
    try:
        return importlib.import_module("transformers")
    except ModuleNotFoundError as e:
        if e.name != "transformers":
            raise
        raise UserError("transformers is not installed: the VideoMAE / V-JEPA 2 backbones need the vit extra "
                        "(`pip install -e .[vit]`)") from None


def _is_torch_file(path: Path) -> bool:
    """A .pt / .pth file: what `backbone train video` writes (best.pt); anything else is read as a folder."""
    return path.is_file() and path.suffix.lower() in (".pt", ".pth")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report and progress bars off while a folder loads (migfuse reports the keys)."""
    log = import_transformers().utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


class HFVideoBackbone(Backbone):
    """A transformers video encoder read from a local model folder; subclasses name the model."""

    tracks = ("video", "context")
    input_doc = "(N, T, 3, H, W) float32: transformers' pixel values (frames first, normalised by the recipe)"
    outputs_doc = {"tokens": "(N, T/tubelet, H/patch, W/patch, C) the last hidden state on its patch grid",
                   "pooled": "(N, C) the mean of the tokens"}
    tokens_doc = ("last hidden state of the encoder: (T/tubelet)*(H/patch)*(W/patch) patch tokens, time-major "
                  "(t, h, w), no class token")
    #: config.json's model_type this backbone reads, transformers' config and model classes
    model_type: ClassVar[str] = ""
    config_class: ClassVar[str] = ""
    model_class: ClassVar[str] = ""
    #: a published folder, named in the errors' fixes
    example: ClassVar[str] = ""
    #: the config without a checkpoint (transformers' defaults, with these changes)
    default_config: ClassVar[dict[str, Any]] = {}
    #: key prefixes a folder may lack: parts of the model the tokens do not use
    unused_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "cpu", **options: Any):
        super().__init__(device=device, **options)
        self.device = device
        self.folder: Path | None = None
        self.config = self.make_config(None)
        self.preprocessing = self.recipe(None)
        self.licence = hf_folder.licence(None)
        # the Hugging Face folder the weights come from (through any fine-tuning) and the licence it states,
        # as plain facts: a best.pt fine-tuned from a best.pt names the original folder once, not a chain
        self.model_folder: str | None = None
        self.folder_licence = dict(self.licence)
        self.fine_tune: dict[str, Any] | None = None  # meta of a `backbone train video` best.pt, once loaded

    # The model is built when first used: a checkpoint folder replaces the default one in `load`, so
    # building the default (up to ViT-L) first would only cost time and memory.
    @property
    def model(self) -> Any:
        if self._model is None:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = getattr(import_transformers(), self.model_class)(self.config)
            self._model = model.eval().to(self.device)
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    # -- the folder ---------------------------------------------------------------------------------
    @classmethod
    def make_config(cls, folder: Path | None) -> Any:
        """transformers' config of the folder (checked by `hf_folder.check_folder`), or the default one."""
        config_class = getattr(import_transformers(), cls.config_class)
        if folder is None:
            return config_class(**cls.default_config)
        hf_folder.check_folder(folder, cls.model_type, cls.name, cls.example)
        try:
            return config_class.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - a config transformers cannot read, in one line
            raise UserError(f"cannot read {folder}/config.json as a {cls.model_type} config ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:150]}): download the folder again") from None

    @classmethod
    def recipe(cls, checkpoint: CheckpointFile | str | Path | None) -> dict[str, Any]:
        if checkpoint is not None and _is_torch_file(as_checkpoint(checkpoint).path):  # a fine-tuned best.pt
            return dict(cls._fine_tuned_meta(as_checkpoint(checkpoint))["preprocessing"])
        folder = None if checkpoint is None else as_checkpoint(checkpoint).path
        config = cls.make_config(folder)
        processor, source = hf_folder.processor_config(folder)
        found = folder is not None and source in hf_folder.PROCESSOR_FILES
        where = f"{folder}/{source}" if found else f"{folder or cls.name}: processor config {source}"
        factor = processor.get("rescale_factor", 1 / 255)
        if processor.get("do_rescale", True) is not True or not isinstance(factor, (int, float)) \
                or abs(factor - 1 / 255) > 1e-9:
            raise UserError(f"{where}: rescale_factor {factor} (do_rescale {processor.get('do_rescale', True)}) is "
                            "not 1/255, the scale migfuse's video loaders use; use the model's published processor "
                            "config")
        clip_len, short_side, crop, (mean, std) = cls._sizes(config, processor, where)
        if processor.get("do_normalize", True):
            mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        else:
            mean, std = [0.0] * 3, [1.0] * 3
        return {
            "recipe": (f"processor config {where}, with transformers' defaults for what it omits" if found else
                       f"transformers' {cls.model_type} processor defaults (processor config {source})"),
            "clip_len": int(clip_len),
            "resize_short_side": int(short_side),
            "resize_interpolation": "bilinear",
            "resize_antialias": False,
            "crop": "center",
            "crop_size": [int(crop), int(crop)],
            "scale": "uint8 / 255 -> [0, 1]",
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "channels": "RGB",
            "layout": f"(N, 3, {clip_len}, {crop}, {crop}) float32 (clip_tokens; `backbone run` takes "
                      f"(N, {clip_len}, 3, {crop}, {crop}))",
            "differs_from_transformers": "transformers' processors resize with antialiasing, migfuse's loaders "
                                         "bilinear without it (as for MViTv2-S): a small difference on downscaled "
                                         "frames; where the margin around the centre crop is odd, transformers' "
                                         "crop starts one pixel earlier (floor, not torchvision's rounding)",
        }

    @classmethod
    def _sizes(cls, config: Any, processor: dict[str, Any], where: str) -> tuple[int, int, int, tuple]:
        """(frames, resize short side, crop side, (mean, std) defaults) of a config + processor config."""
        raise NotImplementedError

    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> KeyReport:
        """Read the model folder into transformers' model (`trusted` is not needed: safetensors only), or the
        best.pt of `backbone train video --backbone NAME` (`_load_fine_tuned`).

        Raises:
            UserError: not a model folder of this type, no safetensors weights, a file transformers
                cannot read, encoder weights missing from the folder (one line each).
        """
        import torch

        ckpt = as_checkpoint(checkpoint, trusted)
        if _is_torch_file(ckpt.path):
            return self._load_fine_tuned(ckpt)
        folder = ckpt.path
        config = self.make_config(folder)
        preprocessing = self.recipe(ckpt)
        model_class = getattr(import_transformers(), self.model_class)
        try:
            with _quiet_transformers():
                model, info = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                          dtype=torch.float32, output_loading_info=True)
        except Exception as e:  # noqa: BLE001 - damaged or foreign weights, in one line
            raise UserError(f"cannot load {folder} into transformers' {self.model_class} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:150]}): download the folder again") from None
        missing = sorted(info.get("missing_keys", ()))
        needed = [k for k in missing if not k.startswith(self.unused_prefixes)]
        report = KeyReport(matched=sorted(set(model.state_dict()) - set(missing)), missing=needed,
                           mismatched=sorted(str(k) for k in info.get("mismatched_keys", ())))
        report.raise_if_bad(folder, self.model_type)
        ignored = sorted(info.get("unexpected_keys", ()))
        if ignored:
            report.notes.append(f"ignored {len(ignored)} keys the encoder does not use (heads, decoder): "
                                f"{', '.join(ignored[:4])}{' ...' if len(ignored) > 4 else ''}")
        if missing:
            report.notes.append(f"{len(missing)} keys not in the folder are not used for tokens (kept random): "
                                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        self.licence = hf_folder.licence(folder)
        self.model_folder, self.folder_licence = str(folder), dict(self.licence)
        report.notes.append(f"licence: {self.licence['licence']} ({self.licence['licence_source']})")
        self.folder, self.config, self.preprocessing = folder, config, preprocessing
        self.model = model.eval().to(self.device)
        self._loaded(ckpt)
        return report

    @classmethod
    def _fine_tuned_meta(cls, ckpt: CheckpointFile) -> dict[str, Any]:
        """meta["migfuse"] of a best.pt fine-tuned as this backbone, with the config and recipe it needs."""
        meta = fine_tuned.read_meta(ckpt.contents)
        if meta is not None:  # another backbone's run: name it
            fine_tuned.check_backbone(meta, cls.name, ckpt.path)
        if meta is None or not isinstance(meta.get("hf_config"), dict) \
                or not isinstance(meta.get("preprocessing"), dict):
            raise UserError(f"{ckpt.path} is a file, not a Hugging Face model folder nor the best.pt of `migfuse "
                            f"backbone train video --backbone {cls.name}`: pass {cls.checkpoint_doc}")
        return meta

    def _load_fine_tuned(self, ckpt: CheckpointFile) -> KeyReport:
        """A best.pt of `backbone train video`: the encoder is rebuilt from the base folder's config.json
        kept in its meta (`hf_config`), its `model.*` weights loaded strictly; the 32-class head
        (`head.*`) is not part of the tokens and is left out (noted). The recipe and the licence are the
        base folder's, from the meta."""
        from migfuse.backbones.checkpoints import compare_state_dict

        meta = self._fine_tuned_meta(ckpt)
        transformers = import_transformers()
        config = getattr(transformers, self.config_class).from_dict(meta["hf_config"])
        sd = ckpt.contents.get("state_dict") if isinstance(ckpt.contents, dict) else None
        sd = {k[len("model."):]: v for k, v in (sd or {}).items() if k.startswith("model.")}
        with _quiet_transformers():
            model = getattr(transformers, self.model_class)(config)
        report = compare_state_dict(model.state_dict(), sd)
        report.raise_if_bad(ckpt.path, f"migfuse fine-tuned {self.name}")
        model.load_state_dict(sd, strict=True)
        report.notes.append("the fine-tuned 32-class head (head.*) is not used for tokens")
        # runs since the folder is recorded name it; an older run's base checkpoint was that folder
        base = meta.get("model_folder") or meta.get("base_checkpoint")  # None: trained from random weights
        self.model_folder = str(base) if base else None
        self.folder_licence = {"licence": meta.get("licence", "unknown"),
                               "licence_source": meta.get("licence_source", "not recorded")}
        self.licence = {"licence": self.folder_licence["licence"],
                        "licence_source": self.folder_licence["licence_source"]
                        + (f" of the base folder {self.model_folder}" if base else "")}
        report.notes.append(f"licence: {self.licence['licence']} ({self.licence['licence_source']})")
        self.folder, self.config, self.preprocessing = ckpt.path, config, dict(meta["preprocessing"])
        self.model, self.fine_tune = model.eval().to(self.device), meta
        self._loaded(ckpt)
        return report

    # -- shapes and forward --------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        """(T', H', W') of the tokens: frames / tubelet, crop / patch twice."""
        patch = self.config.patch_size if isinstance(self.config.patch_size, int) else self.config.patch_size[0]
        side = self.preprocessing["crop_size"][0] // patch
        return self.preprocessing["clip_len"] // self.config.tubelet_size, side, side

    @property
    def token_shape(self) -> tuple[int, int]:
        t, h, w = self.grid
        return t * h * w, int(self.config.hidden_size)

    def hidden_state(self, pixel_values: Any) -> Any:
        """(B, T, 3, H, W) float -> transformers' last_hidden_state (B, T'*H'*W', C)."""
        raise NotImplementedError

    def clip_tokens(self, x: Any) -> Any:
        return self.hidden_state(x.permute(0, 2, 1, 3, 4))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(N, T, 3, H, W) float32 -> tokens (N, T', H', W', C) and pooled (N, C), float32."""
        import torch

        expected = (self.preprocessing["clip_len"], 3, *self.preprocessing["crop_size"])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.name} with this checkpoint takes (N, {', '.join(map(str, expected))}), "
                             f"not {tuple(x.shape)}")
        with torch.no_grad():
            hidden = self.hidden_state(torch.from_numpy(x).to(self.device)).float()
        tokens = hidden.reshape(len(x), *self.grid, hidden.shape[-1])
        return {"tokens": tokens.cpu().numpy(), "pooled": hidden.mean(1).cpu().numpy()}

    def provenance(self) -> dict[str, Any]:
        """The folder, transformers' version, the licence, and the token layout the views pool by (patch
        tokens on the (T', H', W') grid, no class token; `data_cache.views.layout_params`)."""
        from importlib.metadata import version

        facts = fine_tuned.provenance(self.fine_tune)
        return {**({"fine_tuned": facts} if facts else {}),
                "token_layout": {"class_token": False, "grid": list(self.grid)},
                "model_folder": self.model_folder, "model_type": self.model_type,
                "architectures": list(getattr(self.config, "architectures", None) or []),
                "transformers": version("transformers"), **self.licence}


@register_backbone("videomae")
class VideoMAE(HFVideoBackbone):
    """VideoMAE (MCG-NJU) through transformers' VideoMAEModel."""

    checkpoint_doc = ("a local Hugging Face VideoMAE folder (config.json + model.safetensors), e.g. "
                      "`huggingface-cli download MCG-NJU/videomae-base --local-dir videomae-base`")
    model_type, config_class, model_class = "videomae", "VideoMAEConfig", "VideoMAEModel"
    example = "MCG-NJU/videomae-base"

    @classmethod
    def _sizes(cls, config: Any, processor: dict[str, Any], where: str) -> tuple[int, int, int, tuple]:
        # VideoMAEImageProcessor's defaults: shortest edge 224, centre crop 224 (the config's image size, which
        # is 224 in the published models), IMAGENET_STANDARD mean/std
        image = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        short = hf_folder.side(processor.get("size", {"shortest_edge": image}), "size", where)
        crop = hf_folder.side(processor.get("crop_size", image), "crop_size", where)
        if crop != image:  # its position embeddings are fixed to the config's image size
            raise UserError(f"{where}: crop {crop} does not fit the model's image_size {image} in config.json: "
                            "use the processor config published with the weights")
        return config.num_frames, short, crop, _IMAGENET_STANDARD

    def hidden_state(self, pixel_values: Any) -> Any:
        return self.model(pixel_values=pixel_values).last_hidden_state


@register_backbone("vjepa2")
class VJEPA2(HFVideoBackbone):
    """V-JEPA 2 (Meta FAIR) through transformers' VJEPA2Model: the encoder only (the predictor is skipped)."""

    checkpoint_doc = ("a local Hugging Face V-JEPA 2 folder (config.json + model.safetensors), e.g. "
                      "`huggingface-cli download facebook/vjepa2-vitl-fpc16-256-ssv2 --local-dir vjepa2-vitl`")
    model_type, config_class, model_class = "vjepa2", "VJEPA2Config", "VJEPA2Model"
    example = "facebook/vjepa2-vitl-fpc64-256"
    default_config = {"frames_per_clip": 16}
    # fine-tuned classification folders hold the encoder and an attentive pooler, not the predictor
    unused_prefixes = ("predictor.",)

    @classmethod
    def _sizes(cls, config: Any, processor: dict[str, Any], where: str) -> tuple[int, int, int, tuple]:
        # VJEPA2VideoProcessor: crop_size (default 256, the config's crop_size in the published models), resized
        # short side int(crop * 256 / 224) whatever the file's `size` says, IMAGENET_DEFAULT mean/std
        crop = hf_folder.side(processor.get("crop_size", config.crop_size), "crop_size", where)
        return config.frames_per_clip, int(crop * 256 / 224), crop, _IMAGENET_DEFAULT

    def hidden_state(self, pixel_values: Any) -> Any:
        return self.model(pixel_values_videos=pixel_values, skip_predictor=True).last_hidden_state
