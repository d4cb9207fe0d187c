"""The registry of frozen backbones, for `migfuse backbone info|run` and the extract tracks.

Each backbone module defines a `Backbone` subclass and registers it with `@register_backbone("name")`.
`BACKBONES` maps a built-in name to the module that registers it, so asking for one backbone imports
only that module (the skeleton backbones never pull timm or torchvision); a backbone registered from
anywhere else (a plug-in, a test file) is found the same way.

A `Backbone` wraps an `nn.Module` in eval mode and knows:
  * how to build it with random weights (`__init__(**options)`),
  * how to read its checkpoint files in their official formats (`load`, returning a `KeyReport`),
  * how to run it on an array in the original model's input layout (`run`, named float32 outputs),
  * which cache tracks it can extract (`tracks`), and for those the hooks the track calls
    (video tracks: `preprocessing`, `token_shape`, `clip_tokens`; see docs/contracts.md, "Backbones").

Add a backbone: one module in migfuse/backbones/ with a registered subclass, its name in `BACKBONES`'
module map (or import it before use), and tests against the original implementation's outputs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from migfuse.checkpoint_file import CheckpointFile, as_checkpoint
from migfuse.errors import UserError
from migfuse.registry import Registry

if TYPE_CHECKING:
    import torch

    from migfuse.backbones.checkpoints import KeyReport

log = logging.getLogger(__name__)

#: Seed of the random weights a backbone gets without a checkpoint (extraction, `backbone run`): the
#: same weights every run, so a resumed random-weight extraction writes the same values.
RANDOM_WEIGHTS_SEED = 0

#: name -> Backbone subclass; the built-in ones are imported on first use.
BACKBONES: Registry[type["Backbone"]] = Registry("backbone", modules={
    "mvit_v2_s": "migfuse.backbones.mvit",
    "agcn": "migfuse.backbones.agcn",
    "aagcn": "migfuse.backbones.aagcn",
    "swinface": "migfuse.backbones.swinface",
    "videomae": "migfuse.backbones.hf_video",
    "vjepa2": "migfuse.backbones.hf_video",
    "posec3d": "migfuse.backbones.posec3d",
    **{f"{family}_{size}": "migfuse.backbones.swin3d" for family in ("swin3d", "mmaction_swin3d") for size in "tsb"},
})


class Backbone:
    """Base class of a registered backbone. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    #: the input layout `run` takes, as in the original code, e.g. "(N, 3, 16, 224, 224) float32"
    input_doc: ClassVar[str] = ""
    #: the named outputs `run` returns, with shapes, e.g. {"tokens": "(N, 393, 768)"}
    outputs_doc: ClassVar[dict[str, str]] = {}
    #: the cache tracks it extracts ("video", "context", "face", "joint", ...); () = info / run only
    tracks: ClassVar[tuple[str, ...]] = ()
    #: what --checkpoint takes, in a few words (the extract commands' help and errors name it)
    checkpoint_doc: ClassVar[str] = "a local checkpoint file in the backbone's official format"
    #: options the extract tracks build it with (e.g. a faster attention with the same maths)
    extract_options: ClassVar[dict[str, Any]] = {}
    #: video tracks: the checkpoint's input recipe, recorded in the cache provenance. Keys read by the
    #: video loaders: clip_len, resize_short_side, crop_size [h, w], mean, std (RGB, on [0, 1]).
    preprocessing: ClassVar[dict[str, Any]] = {}
    #: video tracks: what the tokens of `clip_tokens` are, in words (recorded in the cache provenance)
    tokens_doc: ClassVar[str] = ""
    #: input files `backbone run --input` takes besides one .npy array (read by `run_file`), e.g. (".npz",)
    input_suffixes: ClassVar[tuple[str, ...]] = ()
    #: the `backbone run` flags it takes beyond the common ones (e.g. ("limb",)), passed as options
    run_flags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options
        self.model = None  # an nn.Module, built by the subclass
        self.checkpoint: Path | None = None
        self.checkpoint_sha256: str | None = None
        self.key_report: KeyReport | None = None  # set by create_backbone when a checkpoint is loaded

    def load(self, checkpoint: CheckpointFile | str | Path, trusted: bool = False) -> "KeyReport":
        """Load a checkpoint file in one of the official formats; raise UserError when it does not fit.

        `trusted`: the user vouched for the file (`--trust-checkpoint`), used when `checkpoint` is a
        path; a `CheckpointFile` carries its own."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run on an input in the original layout; return named float32 outputs."""
        raise NotImplementedError

    @classmethod
    def recipe(cls, checkpoint: CheckpointFile | str | Path | None) -> dict[str, Any]:
        """video tracks: the `preprocessing` a model with this checkpoint will have, known before it is
        built (the extractor checks the frames per window first). The recipe of most backbones is fixed;
        one whose checkpoint carries its own (a Hugging Face folder) reads it here."""
        return cls.preprocessing

    def run_file(self, path: Path) -> dict[str, np.ndarray]:
        """Run on an input file of one of `input_suffixes` (e.g. keypoints the backbone turns into its input);
        the outputs may include the input it built."""
        raise NotImplementedError(f"backbone {self.name} takes only .npy arrays")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _loaded(self, checkpoint: CheckpointFile) -> None:
        """Record which file the weights came from (subclasses call this at the end of `load`) and let
        the file's unpickled contents go: the model holds the weights now."""
        self.checkpoint, self.checkpoint_sha256 = checkpoint.path, checkpoint.sha256
        checkpoint.release()

    # -- hooks of the video tracks (video: per clip, context: per window of a video) ----------------
    @property
    def token_shape(self) -> tuple[int, int]:
        """(tokens, channels) per clip of `clip_tokens`, e.g. (393, 768)."""
        raise NotImplementedError(f"backbone {self.name} does not extract video tokens")

    def clip_tokens(self, x: "torch.Tensor") -> "torch.Tensor":
        """(B, 3, clip_len, crop_h, crop_w) float, normalised by `preprocessing` -> (B, *token_shape)."""
        raise NotImplementedError(f"backbone {self.name} does not extract video tokens")

    def provenance(self) -> dict[str, Any]:
        """What the cache records of the weights beyond their sha256 (e.g. the fine-tuning run)."""
        return {}


def register_backbone(name: str):
    """Class decorator: register a `Backbone` subclass under `name` (which becomes its `name`).

    Raises:
        ValueError: `name` is registered already.
    """
    def wrap(cls: type[Backbone]) -> type[Backbone]:
        cls.name = name
        BACKBONES.register(name, cls)
        return cls

    return wrap


def backbone_class(name: str) -> type[Backbone]:
    """The class registered as `name` (UserError naming the known ones)."""
    return BACKBONES.get(name)


def list_backbones(track: str | None = None) -> list[str]:
    """Registered backbone names; with `track`, those that extract it (imports every module)."""
    if track is None:
        return BACKBONES.names()
    return [n for n, cls in BACKBONES.load_all().items() if track in cls.tracks]


def create_backbone(name: str, checkpoint: CheckpointFile | str | Path | None = None, trusted: bool = False,
                    **options: Any) -> Backbone:
    """Build a registered backbone with random weights, then load `checkpoint` if given.

    `trusted` applies to a `checkpoint` given as a path (`--trust-checkpoint`)."""
    bb = backbone_class(name)(**options)
    if checkpoint is not None:
        bb.key_report = bb.load(as_checkpoint(checkpoint, trusted))
    return bb


def create_seeded(name: str, checkpoint: CheckpointFile | str | Path | None = None, trusted: bool = False,
                  warn: bool = True, option: str = "--checkpoint", **options: Any) -> Backbone:
    """`create_backbone`, with the random weights seeded by RANDOM_WEIGHTS_SEED when there is no
    checkpoint, and (`warn`) a log warning that says so, naming `option` as the way to give weights:
    such outputs are for testing only."""
    if checkpoint is None:
        import torch

        if warn:
            log.warning("NO CHECKPOINT: %s has RANDOM weights (seed %d); its outputs are meaningless except for "
                        "testing. Pass %s: %s.", name, RANDOM_WEIGHTS_SEED, option,
                        backbone_class(name).checkpoint_doc)
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
    return create_backbone(name, checkpoint, trusted, **options)


def create_for_track(track: str, name: str, checkpoint: CheckpointFile | str | Path | None = None,
                     checkpoint_option: str | None = "--checkpoint") -> Backbone:
    """The registered backbone `name` built to extract `track` (its `extract_options`, on the CPU), with
    `checkpoint`'s weights or seeded random ones (`create_seeded`), warned about naming
    `checkpoint_option` (None: not warned, e.g. said already for another track of the same run).

    Raises:
        UserError: an unknown backbone, or one that does not extract `track` (names those that do).
    """
    cls = track_backbone_class(track, name)
    return create_seeded(name, checkpoint, warn=checkpoint_option is not None,
                         option=checkpoint_option or "--checkpoint", **cls.extract_options)


def track_backbone_class(track: str, name: str) -> type[Backbone]:
    """The class registered as `name`, checked to extract `track` (before its recipe is asked for).

    Raises:
        UserError: an unknown backbone, or one that does not extract `track` (names those that do).
    """
    cls = backbone_class(name)
    if track not in cls.tracks:
        raise UserError(f"backbone {name} does not extract the {track} track; choose one of "
                        f"{', '.join(list_backbones(track)) or 'none'} (`migfuse backbone info NAME`)")
    return cls
