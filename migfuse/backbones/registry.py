"""A small registry of frozen backbones, for `migfuse backbone info|run` and the extractors.

Each backbone module defines a `Backbone` subclass and registers a factory with
`@register_backbone("name")`. `_MODULES` maps a name to the module that registers it, so asking for
one backbone imports only that module (the skeleton backbones never pull timm or torchvision).

A `Backbone` wraps an `nn.Module` in eval mode and knows:
  * how to build it with random weights (`__init__(**options)`),
  * how to read its checkpoint files in their official formats (`load`, returning a `KeyReport`),
  * how to run it on an array in the original model's input layout (`run`, named float32 outputs).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from migfuse.errors import UserError

if TYPE_CHECKING:
    from migfuse.backbones.checkpoints import KeyReport

# name -> module that registers it (imported on first use).
_MODULES: dict[str, str] = {
    "mvit_v2_s": "migfuse.backbones.mvit",
    "agcn": "migfuse.backbones.agcn",
    "aagcn": "migfuse.backbones.aagcn",
    "swinface": "migfuse.backbones.swinface",
}
_FACTORIES: dict[str, Callable[..., "Backbone"]] = {}


class Backbone:
    """Base class of a registered backbone. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    #: the input layout `run` takes, as in the original code, e.g. "(N, 3, 16, 224, 224) float32"
    input_doc: ClassVar[str] = ""
    #: the named outputs `run` returns, with shapes, e.g. {"tokens": "(N, 393, 768)"}
    outputs_doc: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any):
        self.options = options
        self.model = None  # an nn.Module, built by the subclass
        self.checkpoint: Path | None = None
        self.checkpoint_sha256: str | None = None
        self.key_report: KeyReport | None = None  # set by create_backbone when a checkpoint is loaded

    def load(self, path: str | Path) -> "KeyReport":
        """Load a checkpoint file in one of the official formats; raise UserError when it does not fit."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run on an input in the original layout; return named float32 outputs."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def register_backbone(name: str) -> Callable:
    """Decorator registering a factory `fn(**options) -> Backbone` under `name`."""

    def wrap(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _FACTORIES[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_MODULES)


def create_backbone(name: str, checkpoint: str | Path | None = None, **options: Any) -> Backbone:
    """Build a registered backbone with random weights, then load `checkpoint` if given."""
    if name not in _FACTORIES:
        if name not in _MODULES:
            raise UserError(f"unknown backbone '{name}': choose one of {', '.join(list_backbones())}")
        importlib.import_module(_MODULES[name])
    bb = _FACTORIES[name](**options)
    if checkpoint is not None:
        bb.key_report = bb.load(checkpoint)
    return bb
